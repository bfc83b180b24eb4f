"""Tenant API key authentication, end to end through GET /api/v1/whoami."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.apps import apps
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.actor import Actor
from teams import api_key_cache
from teams.models import ApiKey
from teams.services import revoke_api_key

pytestmark = pytest.mark.django_db

WHOAMI = "/api/v1/whoami"


def _error_code(response) -> str:
    return response.json()["error"]["code"]


def _updates(captured) -> list[str]:
    return [q["sql"] for q in captured if q["sql"].lstrip().upper().startswith("UPDATE")]


# --- Where the key is read from ---------------------------------------------------------


def test_key_in_the_header_identifies_the_tenant(tenant_client, tenant, api_key):
    key, _plaintext = api_key

    response = tenant_client.get(WHOAMI)

    assert response.status_code == 200
    assert response.json() == {
        "tenant": {"id": str(tenant.id), "name": "Acme"},
        "apiKey": {"prefix": key.prefix, "name": "Test key"},
    }


def test_key_in_the_query_string_identifies_the_tenant(api_client, tenant, api_key):
    key, plaintext = api_key

    response = api_client.get(WHOAMI, {"apiKey": plaintext})

    assert response.status_code == 200
    assert response.json()["tenant"] == {"id": str(tenant.id), "name": "Acme"}
    assert response.json()["apiKey"]["prefix"] == key.prefix


def test_the_other_tenants_key_resolves_to_the_other_tenant(
    api_client, api_key, other_api_key, other_tenant
):
    other_key, other_plaintext = other_api_key

    response = api_client.get(WHOAMI, HTTP_X_API_KEY=other_plaintext)

    assert response.status_code == 200
    assert response.json()["tenant"] == {"id": str(other_tenant.id), "name": "Globex"}
    assert response.json()["apiKey"]["prefix"] == other_key.prefix
    assert other_key.prefix != api_key[0].prefix


# --- Refusals ---------------------------------------------------------------------------


def test_missing_key_is_401_with_a_challenge(api_client, api_key):
    response = api_client.get(WHOAMI)

    assert response.status_code == 401
    body = response.json()
    assert body["error"]["code"] == "api_key_missing"
    assert "X-API-Key" in body["error"]["message"]
    assert response["WWW-Authenticate"].startswith("ApiKey")
    assert 'header="X-API-Key"' in response["WWW-Authenticate"]


def test_empty_header_counts_as_missing(api_client, api_key):
    response = api_client.get(WHOAMI, HTTP_X_API_KEY="")

    assert response.status_code == 401
    assert _error_code(response) == "api_key_missing"


def test_wrong_secret_with_a_real_prefix_is_invalid(api_client, api_key):
    key, plaintext = api_key
    forged = f"{key.prefix}_{'A' * 43}"
    assert forged != plaintext and len(forged) == len(plaintext)

    response = api_client.get(WHOAMI, HTTP_X_API_KEY=forged)

    assert response.status_code == 401
    assert _error_code(response) == "api_key_invalid"
    assert "WWW-Authenticate" in response


def test_unknown_prefix_is_invalid(api_client, api_key):
    key, plaintext = api_key
    unknown_prefix = "wk_ZZZZZZZZ" if key.prefix != "wk_ZZZZZZZZ" else "wk_YYYYYYYY"
    # The real secret behind a prefix nobody owns.
    forged = unknown_prefix + plaintext[len(key.prefix) :]

    response = api_client.get(WHOAMI, HTTP_X_API_KEY=forged)

    assert response.status_code == 401
    assert _error_code(response) == "api_key_invalid"


@pytest.mark.parametrize(
    "value",
    [
        "hello",
        "wk_short",
        "wk_Ab12Cd34",  # a prefix alone
        "sk_Ab12Cd34_" + "x" * 43,  # another scheme
        "wk_Ab12Cd34-" + "x" * 43,  # no separator after the prefix
        "wk_Ab!2Cd34_" + "x" * 43,  # prefix not alphanumeric
        "wk_Ab12Cd34_" + "x" * 200,  # too long
    ],
)
def test_malformed_key_is_rejected_before_any_lookup(api_client, api_key, value):
    response = api_client.get(WHOAMI, HTTP_X_API_KEY=value)

    assert response.status_code == 401
    assert _error_code(response) == "api_key_malformed"


def test_malformed_key_in_query_string_is_rejected(api_client, api_key):
    response = api_client.get(WHOAMI, {"apiKey": "hello"})

    assert response.status_code == 401
    assert _error_code(response) == "api_key_malformed"


def test_revoked_key_is_inactive(api_client, api_key):
    key, plaintext = api_key
    assert api_client.get(WHOAMI, HTTP_X_API_KEY=plaintext).status_code == 200

    revoke_api_key(api_key=key, actor=Actor.system())
    response = api_client.get(WHOAMI, HTTP_X_API_KEY=plaintext)

    assert response.status_code == 401
    assert _error_code(response) == "api_key_inactive"
    key.refresh_from_db()
    assert key.is_active is False
    assert key.revoked_at is not None


def test_key_of_an_inactive_tenant_is_refused(tenant_client, tenant):
    assert tenant_client.get(WHOAMI).status_code == 200

    tenant.is_active = False
    tenant.save(update_fields=["is_active"])
    response = tenant_client.get(WHOAMI)

    assert response.status_code == 401
    assert _error_code(response) == "tenant_inactive"


def test_revoking_one_tenants_key_leaves_the_other_working(api_client, api_key, other_api_key):
    revoke_api_key(api_key=api_key[0], actor=Actor.system())

    assert api_client.get(WHOAMI, HTTP_X_API_KEY=api_key[1]).status_code == 401
    assert api_client.get(WHOAMI, HTTP_X_API_KEY=other_api_key[1]).status_code == 200


# --- Storage ----------------------------------------------------------------------------


def test_plaintext_is_never_stored(api_key):
    key, plaintext = api_key
    secret = plaintext[len(key.prefix) + 1 :]

    assert plaintext.startswith("wk_")
    assert key.prefix == plaintext[:11]
    assert plaintext[11] == "_"
    key.refresh_from_db()
    assert key.secret_hash != plaintext
    assert len(key.secret_hash) == 64

    stored = {f.attname: getattr(key, f.attname) for f in ApiKey._meta.concrete_fields}
    for column, value in stored.items():
        assert plaintext not in str(value), column
        assert secret not in str(value), column


def test_plaintext_appears_nowhere_in_the_database(api_key):
    """Not in the key row, not in the audit log entry of its creation, not anywhere."""
    key, plaintext = api_key
    secret = plaintext[len(key.prefix) + 1 :]

    rows_seen = 0
    for model in apps.get_models():
        for row in model._base_manager.values_list():
            rows_seen += 1
            text = repr(row)
            assert secret not in text, model.__name__
    assert rows_seen > 1  # the scan did see the key and its audit entry


# --- last_used_at -----------------------------------------------------------------------


def test_last_used_at_is_set_on_first_use(tenant_client, api_key):
    key, _ = api_key
    assert key.last_used_at is None
    moment = datetime(2031, 3, 4, 10, 0, tzinfo=UTC)

    with time_machine.travel(moment, tick=False):
        assert tenant_client.get(WHOAMI).status_code == 200

    key.refresh_from_db()
    assert key.last_used_at == moment


def test_last_used_at_is_written_at_most_once_per_resolution_window(tenant_client, api_key):
    key, _ = api_key
    resolution = settings.API_KEY_LAST_USED_RESOLUTION_SECONDS
    start = datetime(2031, 3, 4, 10, 0, tzinfo=UTC)

    with time_machine.travel(start, tick=False) as traveller:
        assert tenant_client.get(WHOAMI).status_code == 200
        key.refresh_from_db()
        assert key.last_used_at == start

        traveller.shift(timedelta(seconds=resolution - 1))
        assert tenant_client.get(WHOAMI).status_code == 200
        key.refresh_from_db()
        assert key.last_used_at == start  # inside the window: not rewritten

        traveller.shift(timedelta(seconds=2))  # now resolution + 1 seconds after start
        assert tenant_client.get(WHOAMI).status_code == 200
        key.refresh_from_db()
        assert key.last_used_at == start + timedelta(seconds=resolution + 1)


def test_a_request_inside_the_window_skips_the_write(tenant_client, api_key):
    api_key_cache.clear()
    with CaptureQueriesContext(connection) as first:
        assert tenant_client.get(WHOAMI).status_code == 200
    with CaptureQueriesContext(connection) as second:
        assert tenant_client.get(WHOAMI).status_code == 200

    assert len(_updates(first.captured_queries)) == 1
    assert "last_used_at" in _updates(first.captured_queries)[0]
    assert _updates(second.captured_queries) == []


def test_the_key_is_looked_up_once_by_its_indexed_prefix_then_remembered(
    tenant_client, api_key, django_assert_max_num_queries
):
    api_key_cache.clear()
    with CaptureQueriesContext(connection) as first:
        assert tenant_client.get(WHOAMI).status_code == 200  # sets last_used_at

    with django_assert_max_num_queries(0):
        for _ in range(5):
            assert tenant_client.get(WHOAMI).status_code == 200

    key_lookups = [q["sql"] for q in first.captured_queries if "teams_apikey" in q["sql"]]
    assert len(key_lookups) == 2  # the SELECT and the one last_used_at UPDATE
    assert "prefix" in key_lookups[0]
    # The lookup is by a unique (hence indexed) column.
    assert ApiKey._meta.get_field("prefix").unique


def test_refused_keys_do_not_touch_last_used_at(api_client, api_key):
    key, _ = api_key
    forged = f"{key.prefix}_{'A' * 43}"

    assert api_client.get(WHOAMI, HTTP_X_API_KEY=forged).status_code == 401

    key.refresh_from_db()
    assert key.last_used_at is None
