"""The API key → tenant lookup is remembered per process for a few seconds: what a caller
notices is fewer queries, and a revoked key (or a deactivated tenant) that stops working
at once when revoked here and within CACHE_SECONDS (≤ 5 s) when revoked elsewhere."""

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.conf import settings
from django.contrib.admin import helpers
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.actor import Actor
from teams import api_key_cache
from teams.models import ApiKey, Tenant
from teams.services import create_api_key, revoke_api_key
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

WHOAMI = "/api/v1/whoami"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    api_key_cache.clear()
    fake = FakeClock()
    monkeypatch.setattr(api_key_cache, "clock", fake)
    yield fake
    api_key_cache.clear()


def get(client, key):
    return client.get(WHOAMI, HTTP_X_API_KEY=key)


def key_selects(captured) -> int:
    return sum(
        1
        for q in captured.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT") and "teams_apikey" in q["sql"]
    )


def revoked_elsewhere(key: ApiKey) -> None:
    """What another process's revocation looks like from here: the row changes, and
    nothing in this process hears of it."""
    ApiKey.all_tenants.filter(pk=key.pk).update(is_active=False)


def test_the_bound_is_at_most_five_seconds():
    assert 0 < api_key_cache.CACHE_SECONDS <= 5


def test_repeated_requests_look_the_key_up_once_per_period(api_client, api_key, clock):
    _, plaintext = api_key

    with CaptureQueriesContext(connection) as captured:
        for _ in range(20):
            assert get(api_client, plaintext).status_code == 200
            clock.advance(0.1)
    assert key_selects(captured) == 1

    clock.advance(api_key_cache.CACHE_SECONDS)
    with CaptureQueriesContext(connection) as captured:
        assert get(api_client, plaintext).status_code == 200
    assert key_selects(captured) == 1


def test_a_key_revoked_by_another_process_stops_working_within_the_period(
    api_client, api_key, clock
):
    key, plaintext = api_key
    assert get(api_client, plaintext).status_code == 200

    revoked_elsewhere(key)
    clock.advance(api_key_cache.CACHE_SECONDS - 0.01)
    still_remembered = get(api_client, plaintext).status_code
    clock.advance(0.01)
    response = get(api_client, plaintext)

    assert still_remembered == 200  # the documented window, not a promise to keep
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_inactive"


def test_the_period_starts_before_the_lookup_not_after(api_client, api_key, clock, monkeypatch):
    """A lookup that takes a while must not stretch the window: it is counted from
    before the SELECT, whose snapshot can predate a revocation committed meanwhile."""
    key, plaintext = api_key
    real_first = ApiKey.all_tenants.select_related("tenant").filter(prefix=key.prefix).first

    class SlowQuerySet:
        def filter(self, **kwargs):
            return self

        def first(self):
            row = real_first()
            clock.advance(3)  # the SELECT took 3 s
            return row

    monkeypatch.setattr(ApiKey.all_tenants, "select_related", lambda *a: SlowQuerySet())
    assert get(api_client, plaintext).status_code == 200
    monkeypatch.undo()
    monkeypatch.setattr(api_key_cache, "clock", clock)

    revoked_elsewhere(key)
    clock.advance(api_key_cache.CACHE_SECONDS - 3)

    assert get(api_client, plaintext).status_code == 401


def test_a_key_revoked_by_the_service_here_stops_at_once(api_client, api_key):
    key, plaintext = api_key
    assert get(api_client, plaintext).status_code == 200

    revoke_api_key(api_key=key, actor=Actor.system())

    assert get(api_client, plaintext).status_code == 401


def test_a_key_revoked_by_the_command_here_stops_at_once(api_client, api_key):
    key, plaintext = api_key
    assert get(api_client, plaintext).status_code == 200

    call_command("revoke_api_key", key.prefix, stdout=StringIO())

    assert get(api_client, plaintext).status_code == 401


def test_a_key_revoked_in_the_admin_stops_at_once(client, api_client, api_key):
    key, plaintext = api_key
    assert get(api_client, plaintext).status_code == 200
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    response = client.post(
        "/admin/teams/apikey/",
        {"action": "revoke_selected", helpers.ACTION_CHECKBOX_NAME: [str(key.pk)]},
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.is_active is False
    assert get(api_client, plaintext).status_code == 401


def test_a_tenant_deactivated_elsewhere_is_refused_within_the_period(api_client, api_key, clock):
    key, plaintext = api_key
    assert get(api_client, plaintext).status_code == 200

    Tenant.objects.filter(pk=key.tenant_id).update(is_active=False)
    clock.advance(api_key_cache.CACHE_SECONDS)
    response = get(api_client, plaintext)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "tenant_inactive"


def test_a_tenant_edited_here_is_seen_at_once(api_client, api_key):
    key, plaintext = api_key
    assert get(api_client, plaintext).json()["tenant"]["name"] == "Acme"

    tenant = Tenant.objects.get(pk=key.tenant_id)
    tenant.name = "Acme Renamed"
    tenant.save(update_fields=["name"])

    assert get(api_client, plaintext).json()["tenant"]["name"] == "Acme Renamed"


def test_revoking_one_key_leaves_the_other_tenants_remembered(api_client, api_key, other_api_key):
    get(api_client, api_key[1])
    get(api_client, other_api_key[1])

    revoke_api_key(api_key=api_key[0], actor=Actor.system())
    with CaptureQueriesContext(connection) as captured:
        assert get(api_client, other_api_key[1]).status_code == 200

    assert key_selects(captured) == 0


def test_a_wrong_secret_is_refused_from_the_remembered_row(api_client, api_key):
    key, plaintext = api_key
    assert get(api_client, plaintext).status_code == 200

    response = get(api_client, f"{key.prefix}_{'A' * 43}")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_invalid"


def test_unknown_prefixes_are_not_remembered(api_client, api_key):
    for n in range(5):
        assert get(api_client, f"wk_Zz{n:06d}_{'A' * 43}").status_code == 401

    assert api_key_cache._entries == {}


def test_the_plaintext_is_not_what_is_remembered(api_client, api_key):
    key, plaintext = api_key
    get(api_client, plaintext)
    secret = plaintext[len(key.prefix) + 1 :]

    remembered = repr(api_key_cache._entries)
    assert key.prefix in remembered
    assert secret not in remembered
    assert plaintext not in remembered


def test_each_request_gets_its_own_instances(api_key):
    key, _ = api_key
    first = api_key_cache.lookup(key.prefix)
    first.tenant.name = "changed by a request"
    first.name = "changed too"

    second = api_key_cache.lookup(key.prefix)

    assert second is not first and second.tenant is not first.tenant
    assert second.tenant.name == "Acme"
    assert second.name == "Test key"
    assert second.tenant.pk == key.tenant_id
    assert second._state.adding is False


def test_entries_are_bounded(api_key, monkeypatch):
    monkeypatch.setattr(api_key_cache, "MAX_ENTRIES", 1)
    key, _ = api_key
    api_key_cache.lookup(key.prefix)
    assert len(api_key_cache._entries) == 1

    other, _ = create_api_key(tenant=key.tenant, name="second", actor=Actor.system())
    api_key_cache.lookup(other.prefix)

    assert len(api_key_cache._entries) == 1


def test_last_used_at_is_written_once_per_window_across_expiries(api_client, api_key, clock):
    """A key used all day: one UPDATE per resolution window, however often the entry
    expires in between."""
    _, plaintext = api_key
    resolution = settings.API_KEY_LAST_USED_RESOLUTION_SECONDS
    start = datetime(2031, 3, 4, 10, 0, tzinfo=UTC)
    updates = 0
    with time_machine.travel(start, tick=False) as traveller:
        for _ in range(3 * resolution):  # a request a second for three windows
            with CaptureQueriesContext(connection) as captured:
                assert get(api_client, plaintext).status_code == 200
            updates += sum(1 for q in captured.captured_queries if "UPDATE" in q["sql"])
            traveller.shift(timedelta(seconds=1))
            clock.advance(1)

    assert updates == 3
