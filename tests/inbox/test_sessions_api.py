"""GET /api/v1/sessions/<id> and POST /api/v1/sessions/<id>/close."""

import pytest

from inbox.models import InboxSession
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def handover(client, contact="c1"):
    response = client.post(
        "/api/v1/handover", {"contactId": contact, "sendHandoverMessage": False}, format="json"
    )
    return response.json()


def test_closing_frees_the_agent_and_the_next_handover_opens_a_new_session(tenant, tenant_client):
    agent = MembershipFactory(tenant=tenant, capacity=1)
    first = handover(tenant_client)
    assert handover(tenant_client, "c2")["unassignedReason"] == "all_at_capacity"

    closed = tenant_client.post(f"/api/v1/sessions/{first['sessionId']}/close")
    again = tenant_client.post(f"/api/v1/sessions/{first['sessionId']}/close")
    detail = tenant_client.get(f"/api/v1/sessions/{first['sessionId']}")
    new = handover(tenant_client)

    assert closed.status_code == again.status_code == 200
    assert detail.json()["status"] == "closed" and detail.json()["closedAt"]
    assert new["sessionCreated"] is True and new["sessionId"] != first["sessionId"]
    assert new["assignedAgent"]["id"] == str(agent.id), "capacity freed by the close"
    assert InboxSession.objects.for_tenant(tenant).filter(status="open").count() == 2


def test_another_tenants_session_is_404(other_tenant, tenant_client, other_api_key, api_client):
    api_client.credentials(HTTP_X_API_KEY=other_api_key[1])
    theirs = handover(api_client)

    assert tenant_client.get(f"/api/v1/sessions/{theirs['sessionId']}").status_code == 404
    closed = tenant_client.post(f"/api/v1/sessions/{theirs['sessionId']}/close")
    assert closed.status_code == 404
    assert closed.json()["error"]["code"] == "session_not_found"
    assert InboxSession.objects.for_tenant(other_tenant).get().status == "open"
