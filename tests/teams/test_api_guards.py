"""Guards of the tenant API key endpoints the auth, cache and directory tests do not
reach: a key sent in the query string is never echoed, page sizes are capped, agents
whose login was deactivated do not exist for the API, and a revocation committed here
is not undone by a request that read the key meanwhile."""

import threading

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from core.actor import Actor
from teams import api_key_cache
from teams.api_base import TenantApiPagination
from teams.services import revoke_api_key
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_page_links_never_repeat_a_key_sent_in_the_query_string(tenant, api_key):
    for n in range(3):
        MembershipFactory(tenant=tenant, user__full_name=f"Agent {n}")
    plaintext = api_key[1]

    first = APIClient().get(f"/api/v1/agents?limit=1&apiKey={plaintext}").json()
    second = APIClient().get(f"/api/v1/agents?limit=1&offset=1&apiKey={plaintext}").json()

    assert first["next"] and second["previous"]
    assert plaintext not in first["next"] and "apiKey" not in first["next"]
    assert plaintext not in second["previous"] and "apiKey" not in second["previous"]


def test_a_page_larger_than_the_cap_gives_the_cap(tenant, tenant_client, monkeypatch):
    monkeypatch.setattr(TenantApiPagination, "max_limit", 2)
    for _ in range(3):
        MembershipFactory(tenant=tenant)

    body = tenant_client.get("/api/v1/agents?limit=50").json()

    assert body["count"] == 3 and len(body["results"]) == 2


def test_an_agent_whose_login_was_deactivated_is_not_found(tenant, tenant_client):
    agent = MembershipFactory(tenant=tenant, user__is_active=False, presence="offline")

    response = tenant_client.post(
        f"/api/v1/agents/{agent.pk}/presence", {"status": "online"}, format="json"
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "agent_not_found"
    agent.refresh_from_db()
    assert agent.presence == "offline"


@pytest.mark.postgres  # SQLite lets no other connection read during the revoking write
@pytest.mark.django_db(transaction=True)
def test_a_key_read_by_another_request_while_it_was_being_revoked_stops_at_the_commit(
    tenant, api_key
):
    key = api_key[0]
    api_key_cache.clear()
    seen = []
    try:
        with transaction.atomic():
            revoke_api_key(api_key=key, actor=Actor.system())

            def another_request():  # reads the committed row: still active, and remembers it
                try:
                    seen.append(api_key_cache.lookup(key.prefix).is_active)
                finally:
                    connection.close()

            thread = threading.Thread(target=another_request)
            thread.start()
            thread.join(10)

        assert seen == [True]
        assert api_key_cache.lookup(key.prefix).is_active is False
    finally:
        api_key_cache.clear()
