"""API throttling: failed API-key attempts per address, and a tenant's optional per-key
request rate (teams.throttling), through real API requests.

The clock is frozen 5 s into a minute, so a refusal's Retry-After is the 55 s left of it.
"""

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.cache.backends.locmem import LocMemCache
from rest_framework.test import APIClient

from core.actor import Actor
from teams.services import create_api_key, revoke_api_key
from tests.e2e.processes import free_port
from tests.factories import TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

WHOAMI = "/api/v1/whoami"
START = datetime(2026, 3, 2, 9, 0, 5, tzinfo=UTC)
SECONDS_LEFT_IN_MINUTE = 55
LIMIT = 20  # settings.API_KEY_FAILURES_PER_MINUTE


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def get(path=WHOAMI, *, key=None, address="192.0.2.10", **extra):
    headers = {"REMOTE_ADDR": address, **extra}
    if key is not None:
        headers["HTTP_X_API_KEY"] = key
    return APIClient().get(path, **headers)


def bad_key() -> str:
    """A well-formed key nobody has."""
    return f"wk_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}{uuid.uuid4().hex[:10]}"


def fail(times: int, *, address="192.0.2.10", **extra) -> None:
    for attempt in range(times):
        response = get(key=bad_key(), address=address, **extra)
        assert response.status_code == 401, f"attempt {attempt + 1}: {response.content}"


def assert_throttled(response, code: str, retry_after: int = SECONDS_LEFT_IN_MINUTE) -> None:
    assert response.status_code == 429, response.content
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert response["Retry-After"] == str(retry_after)


# --- Failed attempts per address ----------------------------------------------------------


def test_the_21st_failed_attempt_from_an_address_is_refused_with_retry_after(clock, api_key):
    fail(LIMIT)

    assert_throttled(get(key=bad_key()), "too_many_attempts")


def test_a_blocked_address_is_refused_even_with_a_valid_key(clock, api_key):
    _key, plaintext = api_key
    assert get(key=plaintext).status_code == 200
    fail(LIMIT)

    response = get(key=plaintext)

    assert_throttled(response, "too_many_attempts")
    assert plaintext not in response.content.decode()


def test_another_address_is_not_blocked(clock, api_key):
    fail(LIMIT, address="192.0.2.10")

    assert get(key=api_key[1], address="198.51.100.7").status_code == 200
    assert get(key=bad_key(), address="198.51.100.7").status_code == 401


def test_the_address_is_free_again_in_the_next_minute(clock, api_key):
    fail(LIMIT)
    clock.shift(timedelta(seconds=SECONDS_LEFT_IN_MINUTE - 1))
    assert_throttled(get(key=api_key[1]), "too_many_attempts", retry_after=1)

    clock.shift(timedelta(seconds=1))

    assert get(key=api_key[1]).status_code == 200
    fail(LIMIT)  # a fresh allowance, not one attempt more
    assert_throttled(get(key=bad_key()), "too_many_attempts", retry_after=60)


def test_malformed_wrong_and_revoked_keys_all_count(clock, api_key, other_api_key):
    key, plaintext = api_key
    other_key, _ = other_api_key
    revoke_api_key(api_key=key, actor=Actor.system())
    refusals = [
        ("hello", "api_key_malformed"),
        (f"{other_key.prefix}_{'A' * 43}", "api_key_invalid"),  # a real prefix, wrong secret
        (plaintext, "api_key_inactive"),
    ]

    for attempt in range(LIMIT):
        value, code = refusals[attempt % len(refusals)]
        response = get(key=value)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == code

    assert_throttled(get(key=plaintext), "too_many_attempts")


def test_only_revoked_key_attempts_reach_the_limit_too(clock, api_key):
    key, plaintext = api_key
    revoke_api_key(api_key=key, actor=Actor.system())
    for _ in range(LIMIT):
        assert get(key=plaintext).json()["error"]["code"] == "api_key_inactive"

    assert_throttled(get(key=plaintext), "too_many_attempts")


def test_successful_requests_do_not_count(clock, api_key):
    fail(LIMIT - 1)
    for _ in range(50):
        assert get(key=api_key[1]).status_code == 200

    assert get(key=bad_key()).status_code == 401  # the 20th failure
    assert_throttled(get(key=api_key[1]), "too_many_attempts")


def test_requests_without_a_key_do_not_count(clock, api_key):
    for _ in range(LIMIT + 5):
        assert get().json()["error"]["code"] == "api_key_missing"

    assert get(key=api_key[1]).status_code == 200


def test_keys_in_the_query_string_count_and_are_refused_alike(clock, api_key):
    client = APIClient(REMOTE_ADDR="192.0.2.10")
    for _ in range(LIMIT):
        assert client.get(WHOAMI, {"apiKey": bad_key()}).status_code == 401

    assert_throttled(client.get(WHOAMI, {"apiKey": api_key[1]}), "too_many_attempts")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/handover"),  # inbox
        ("post", "/api/v1/reassign-lead"),  # leads, not a TenantApiView
        ("get", "/api/v1/webhooks"),  # webhooks
    ],
)
def test_every_api_key_endpoint_counts_and_refuses(clock, api_key, method, path):
    client = APIClient(REMOTE_ADDR="192.0.2.10")
    call = getattr(client, method)
    answered = call(path, {}, format="json", HTTP_X_API_KEY=api_key[1])
    assert answered.status_code not in (401, 429), answered.content  # the key is accepted
    for _ in range(LIMIT):
        assert call(path, {}, format="json", HTTP_X_API_KEY=bad_key()).status_code == 401

    assert_throttled(call(path, {}, format="json", HTTP_X_API_KEY=api_key[1]), "too_many_attempts")
    assert_throttled(get(key=api_key[1]), "too_many_attempts")  # and the other endpoints


# --- The client's address behind proxies --------------------------------------------------


def test_without_trusted_proxies_x_forwarded_for_is_ignored(clock, settings, api_key):
    settings.TRUSTED_PROXY_COUNT = 0
    for attempt in range(LIMIT):
        forwarded = f"203.0.113.{attempt}"
        assert get(key=bad_key(), HTTP_X_FORWARDED_FOR=forwarded).status_code == 401

    response = get(key=api_key[1], HTTP_X_FORWARDED_FOR="203.0.113.200")

    assert_throttled(response, "too_many_attempts")


def test_behind_a_trusted_proxy_the_address_it_appended_counts(clock, settings, api_key):
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    for attempt in range(LIMIT):
        # The client forges a fresh address on the left each time; the proxy appends the
        # one it saw.
        forwarded = f"198.18.0.{attempt}, 203.0.113.9"
        response = get(key=bad_key(), address=proxy, HTTP_X_FORWARDED_FOR=forwarded)
        assert response.status_code == 401

    blocked = get(key=api_key[1], address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.9")
    other = get(key=api_key[1], address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.10")

    assert_throttled(blocked, "too_many_attempts")
    assert other.status_code == 200, "another client behind the same proxy is not blocked"


# --- A tenant's per-key rate --------------------------------------------------------------


@pytest.fixture
def limited_tenant(db):
    return TenantFactory(api_rate_limit_per_minute=5)


def test_a_key_of_a_tenant_with_a_rate_gets_that_many_requests_a_minute(clock, limited_tenant):
    _key, plaintext = create_api_key(tenant=limited_tenant, name="CRM", actor=Actor.system())
    for _ in range(5):
        assert get(key=plaintext).status_code == 200

    assert_throttled(get(key=plaintext), "rate_limited")
    assert_throttled(get(key=plaintext, address="198.51.100.7"), "rate_limited")

    clock.shift(timedelta(seconds=SECONDS_LEFT_IN_MINUTE))
    assert get(key=plaintext).status_code == 200


def test_two_keys_of_one_tenant_have_budgets_of_their_own(clock, limited_tenant):
    _, first = create_api_key(tenant=limited_tenant, name="CRM", actor=Actor.system())
    _, second = create_api_key(tenant=limited_tenant, name="Chatbot", actor=Actor.system())
    for _ in range(5):
        assert get(key=first).status_code == 200
    assert_throttled(get(key=first), "rate_limited")

    for _ in range(5):
        assert get(key=second).status_code == 200
    assert_throttled(get(key=second), "rate_limited")


def test_rate_limited_requests_are_not_failed_attempts(clock, limited_tenant, api_key):
    _, plaintext = create_api_key(tenant=limited_tenant, name="CRM", actor=Actor.system())
    for _ in range(5 + LIMIT + 5):
        get(key=plaintext)

    assert get(key=api_key[1]).status_code == 200, "the address is not blocked"


def test_a_tenant_without_a_rate_is_never_limited(clock, limited_tenant, tenant, api_key):
    assert tenant.api_rate_limit_per_minute is None  # the default
    _, limited = create_api_key(tenant=limited_tenant, name="CRM", actor=Actor.system())
    for _ in range(6):
        get(key=limited)  # another tenant's limit is used up meanwhile

    statuses = [get(key=api_key[1]).status_code for _ in range(200)]

    assert statuses == [200] * 200


class RecordingCache(LocMemCache):
    """A local-memory cache that records which of its methods were called."""

    calls: list[str] = []

    def get(self, *args, **kwargs):
        self.calls.append("get")
        return super().get(*args, **kwargs)

    def add(self, *args, **kwargs):
        self.calls.append("add")
        return super().add(*args, **kwargs)

    def incr(self, *args, **kwargs):
        self.calls.append("incr")
        return super().incr(*args, **kwargs)

    def set(self, *args, **kwargs):
        self.calls.append("set")
        return super().set(*args, **kwargs)


@pytest.fixture
def recording_cache(settings):
    RecordingCache.calls = []
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {
            "BACKEND": f"{__name__}.RecordingCache",
            "LOCATION": f"recording-{uuid.uuid4().hex}",
        },
    }
    return RecordingCache.calls


def test_valid_requests_of_a_tenant_without_a_rate_only_read_their_address(
    clock, recording_cache, api_key
):
    """The one cache read is the address check (a blocked address is refused even with a
    valid key); nothing is counted, so a burst of valid traffic writes nothing."""
    for _ in range(10):
        assert get(key=api_key[1]).status_code == 200

    assert recording_cache == ["get"] * 10


def test_a_failed_attempt_and_a_limited_key_are_what_write(clock, recording_cache, api_key):
    get(key=bad_key())
    assert recording_cache == ["get", "add"]

    recording_cache.clear()
    api_key[0].tenant.api_rate_limit_per_minute = 100
    api_key[0].tenant.save()
    get(key=api_key[1])
    assert recording_cache == ["get", "add"]


# --- A cache that is down -----------------------------------------------------------------


@pytest.fixture
def dead_cache(settings):
    """The throttle's cache (production's backend) is a Redis on a port where nothing
    listens."""
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {
            "BACKEND": "core.redis_cache.ReusedClientRedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.1, "socket_timeout": 0.1},
        },
    }


def test_with_the_cache_down_requests_go_through_unthrottled(
    clock, dead_cache, limited_tenant, api_key, caplog
):
    _, limited = create_api_key(tenant=limited_tenant, name="CRM", actor=Actor.system())
    caplog.set_level(logging.WARNING, logger="teams.throttling")

    assert get(key=api_key[1]).status_code == 200
    for _ in range(LIMIT + 5):
        assert get(key=bad_key()).status_code == 401
    for _ in range(10):
        assert get(key=limited).status_code == 200

    warnings = [r for r in caplog.records if r.name == "teams.throttling"]
    assert warnings and all(r.levelno == logging.WARNING for r in warnings)
    assert "cache failed" in warnings[0].getMessage()
    assert api_key[1] not in caplog.text
    assert limited not in caplog.text


def test_a_cache_error_is_logged_without_the_key(clock, dead_cache, api_key, caplog):
    caplog.set_level(logging.WARNING, logger="teams.throttling")
    wrong = f"{api_key[0].prefix}_{'B' * 43}"

    assert get(key=wrong).status_code == 401

    assert len([r for r in caplog.records if r.name == "teams.throttling"]) == 1, (
        "after the first failure the cache is not asked again in this request"
    )
    assert wrong not in caplog.text
    assert wrong[len(api_key[0].prefix) + 1 :] not in caplog.text


def test_the_tenant_admin_page_offers_the_rate(client, tenant):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    page = client.get(f"/admin/teams/tenant/{tenant.pk}/change/")

    assert page.status_code == 200
    assert 'name="api_rate_limit_per_minute"' in page.content.decode()
    assert "Requests per minute allowed for each of this tenant" in page.content.decode()
