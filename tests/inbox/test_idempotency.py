"""Idempotency-Key on POST /api/v1/handover."""

import pytest
import time_machine

from audit.models import ActivityLog
from inbox.models import HandoverRequest, InboxSession
from outbox.models import OutboundMessage
from tests.factories import MembershipFactory

URL = "/api/v1/handover"
pytestmark = pytest.mark.django_db


def post(client, body, key):
    return client.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_same_key_and_body_replays_the_first_answer_without_side_effects(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    body = {"contactId": "c1", "name": "Jane"}

    first = post(tenant_client, body, "key-1")
    replay = post(tenant_client, body, "key-1")

    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    assert replay["Idempotent-Replayed"] == "true"
    assert InboxSession.objects.for_tenant(tenant).count() == 1
    assert ActivityLog.objects.for_tenant(tenant).filter(action="session.created").count() == 1
    messages = OutboundMessage.objects.for_tenant(tenant)
    assert messages.count() == 1, "the first request queues the confirmation, the replay nothing"


def test_same_key_with_a_different_body_is_422(tenant, tenant_client):
    post(tenant_client, {"contactId": "c1"}, "key-1")

    response = post(tenant_client, {"contactId": "c2"}, "key-1")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert InboxSession.objects.for_tenant(tenant).count() == 1


def test_keys_are_scoped_to_the_tenant(
    tenant, other_tenant, tenant_client, other_api_key, api_client
):
    api_client.credentials(HTTP_X_API_KEY=other_api_key[1])

    mine = post(tenant_client, {"contactId": "c1"}, "shared-key")
    theirs = post(api_client, {"contactId": "c1"}, "shared-key")

    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["sessionId"] != theirs.json()["sessionId"]
    assert InboxSession.objects.for_tenant(other_tenant).count() == 1


def test_a_key_expires_after_24_hours(tenant, tenant_client):
    with time_machine.travel("2026-11-20T10:00:00Z", tick=False):
        first = post(tenant_client, {"contactId": "c1"}, "key-1")
    with time_machine.travel("2026-11-21T09:59:00Z", tick=False):
        within = post(tenant_client, {"contactId": "c2"}, "key-1")
    with time_machine.travel("2026-11-21T10:01:00Z", tick=False):
        after = post(tenant_client, {"contactId": "c2"}, "key-1")
    with time_machine.travel("2026-11-21T10:02:00Z", tick=False):
        again = post(tenant_client, {"contactId": "c2"}, "key-1")
        first_body_again = post(tenant_client, {"contactId": "c1"}, "key-1")

    assert first.status_code == 201
    assert within.status_code == 422, "within 24 h the key still belongs to the first body"
    assert after.status_code == 201
    # The expired record was taken over: the key now replays its second use.
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json() == after.json()
    assert first_body_again.status_code == 422
    assert HandoverRequest.objects.for_tenant(tenant).count() == 1


def test_a_failed_request_does_not_burn_the_key(tenant, tenant_client):
    bad = post(
        tenant_client, {"contactId": "c1", "teamId": "0b6f2a52-9f0e-4c1e-9d8f-2f3f6a1f8c11"}, "k"
    )
    good = post(tenant_client, {"contactId": "c1"}, "k")

    assert bad.status_code == 404
    assert good.status_code == 201


def test_overlong_idempotency_key_is_400(tenant_client):
    response = post(tenant_client, {"contactId": "c1"}, "k" * 300)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["fields"]


def test_expired_keys_are_purged(tenant, tenant_client):
    from inbox.services import purge_expired_idempotency_keys

    with time_machine.travel("2026-11-20T10:00:00Z", tick=False):
        post(tenant_client, {"contactId": "c1"}, "old-key")
    with time_machine.travel("2026-11-21T09:00:00Z", tick=False):
        post(tenant_client, {"contactId": "c2"}, "fresh-key")
    with time_machine.travel("2026-11-21T10:30:00Z", tick=False):
        assert purge_expired_idempotency_keys() == 1
    assert list(HandoverRequest.objects.for_tenant(tenant).values_list("key", flat=True)) == [
        "fresh-key"
    ]
