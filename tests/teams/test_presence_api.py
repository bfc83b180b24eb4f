"""POST /api/v1/agents/<agent_id>/presence: the tenant's own systems say who is at their
desk. Only online agents get work; presence set here never lapses."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from uuid import uuid4

import pytest
from django.db import connection
from rest_framework.test import APIClient

from audit.models import ActivityLog
from inbox.models import InboxSession
from teams.models import Membership, Presence, PresenceSource
from tests.factories import MembershipFactory


def url(agent) -> str:
    return f"/api/v1/agents/{getattr(agent, 'pk', agent)}/presence"


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["owner", "teammate"])
def test_the_tenants_key_sets_any_of_its_agents_presence(who, request, tenant_client, api_key):
    agent = request.getfixturevalue(who)

    response = tenant_client.post(url(agent), {"status": "away"}, format="json")

    assert response.status_code == 200
    body = response.json()
    agent.refresh_from_db()
    assert body == {
        "agentId": str(agent.pk),
        "status": "away",
        "changedAt": agent.presence_changed_at.isoformat().replace("+00:00", "Z"),
    }
    assert (agent.presence, agent.presence_source) == (Presence.AWAY, PresenceSource.API)
    [row] = ActivityLog.objects.for_tenant(agent.tenant).filter(action="membership.away")
    assert row.target_id == str(agent.pk)
    assert (row.actor_label, row.via) == ("api_key", f"api_key:{api_key[0].prefix}")
    assert row.data == {"from": "online", "to": "away", "source": "api"}


@pytest.mark.django_db
def test_setting_the_same_presence_again_writes_no_second_activity_row(tenant_client, teammate):
    for _ in range(2):
        assert tenant_client.post(url(teammate), {"status": "offline"}, format="json").json()[
            "status"
        ] == ("offline")

    assert ActivityLog.objects.for_tenant(teammate.tenant).filter(
        action="membership.offline"
    ).count() == (1)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body", [{"status": "busy"}, {"status": ""}, {"status": None}, {}, {"state": "away"}]
)
def test_a_missing_or_unknown_status_is_refused_naming_status(body, tenant_client, teammate):
    response = tenant_client.post(url(teammate), body, format="json")

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["status"]
    teammate.refresh_from_db()
    assert teammate.presence == Presence.ONLINE


@pytest.mark.django_db
def test_another_tenants_agent_does_not_exist_for_the_key(tenant_client, outsider):
    response = tenant_client.post(url(outsider), {"status": "away"}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "agent_not_found"
    outsider.refresh_from_db()
    assert outsider.presence == Presence.ONLINE


@pytest.mark.django_db
def test_the_outsiders_key_cannot_touch_our_agents(other_api_key, teammate):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=other_api_key[1])

    assert client.post(url(teammate), {"status": "away"}, format="json").status_code == 404
    teammate.refresh_from_db()
    assert teammate.presence == Presence.ONLINE


@pytest.mark.django_db
def test_unknown_and_deactivated_agents_are_not_found(tenant_client, tenant):
    gone = MembershipFactory(tenant=tenant, is_active=False)

    assert tenant_client.post(url(uuid4()), {"status": "away"}, format="json").status_code == 404
    assert tenant_client.post(url(gone), {"status": "away"}, format="json").status_code == 404


@pytest.mark.django_db
def test_without_a_key_nothing_changes(api_client, teammate):
    response = api_client.post(url(teammate), {"status": "away"}, format="json")

    assert response.status_code == 401
    teammate.refresh_from_db()
    assert teammate.presence == Presence.ONLINE


@pytest.mark.django_db
def test_coming_online_through_the_api_routes_waiting_work_at_once(
    tenant, tenant_client, django_capture_on_commit_callbacks
):
    agent = MembershipFactory(tenant=tenant, presence=Presence.AWAY)
    waiting = tenant_client.post(
        "/api/v1/handover", {"contactId": "c-1", "sendHandoverMessage": False}, format="json"
    ).json()
    assert waiting["status"] == "unassigned"

    with django_capture_on_commit_callbacks(execute=True):
        tenant_client.post(url(agent), {"status": "online"}, format="json")

    session = InboxSession.objects.for_tenant(tenant).get(pk=waiting["sessionId"])
    assert session.assigned_agent_id == agent.pk


def _handover_in_thread(api_key: str, contact: str):
    client = APIClient()
    try:
        response = client.post(
            "/api/v1/handover",
            {"contactId": contact, "sendHandoverMessage": False},
            format="json",
            HTTP_X_API_KEY=api_key,
        )
        return response.status_code, response.json()
    finally:
        connection.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_away_agent_never_receives_work_under_16_concurrent_handovers(tenant, api_key):
    online = [MembershipFactory(tenant=tenant) for _ in range(3)]
    away = MembershipFactory(tenant=tenant)
    offline = MembershipFactory(tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key[1])
    assert client.post(url(away), {"status": "away"}, format="json").status_code == 200
    assert client.post(url(offline), {"status": "offline"}, format="json").status_code == 200

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(
            pool.map(lambda n: _handover_in_thread(api_key[1], f"contact-{n}"), range(96))
        )

    assert Counter(status for status, _ in results) == {201: 96}
    per_agent = Counter(body["assignedAgent"]["id"] for _, body in results)
    assert per_agent == {str(agent.pk): 32 for agent in online}
    assert (
        not InboxSession.objects.for_tenant(tenant)
        .filter(assigned_agent__in=[away, offline])
        .exists()
    )
    assert Membership.objects.for_tenant(tenant).get(pk=away.pk).presence == Presence.AWAY
