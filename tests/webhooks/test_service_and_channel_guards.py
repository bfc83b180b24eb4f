"""Guards of the webhook services and channel that the API and delivery tests do not
reach: who may resend, which deliveries may be resent, what a send refuses."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from werkzeug import Response

from audit.models import ActivityLog
from core.actor import Actor
from core.errors import Forbidden, NotFound
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import queue_message
from teams.models import Role
from tests.db_locks import lock_waits
from tests.e2e.processes import wait_until
from tests.factories import MembershipFactory
from webhooks.events import Event, emit
from webhooks.models import WebhookAttempt, WebhookEndpoint
from webhooks.services import (
    create_endpoint,
    disable_endpoint,
    disable_failing_endpoints,
    resend,
    send_test_event,
    update_endpoint,
)

pytestmark = pytest.mark.django_db


def _delivery(tenant):
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )
    return endpoint, send_test_event(tenant=tenant, actor=Actor.system(), endpoint_id=endpoint.pk)


def test_a_member_who_is_not_an_admin_may_not_resend_a_delivery(tenant):
    _, message = _delivery(tenant)
    member = MembershipFactory(tenant=tenant, role=Role.MEMBER)

    with pytest.raises(Forbidden):
        resend(
            tenant=tenant, actor=Actor.for_membership(member, via="admin"), message_id=message.pk
        )

    assert OutboundMessage.objects.for_tenant(tenant).filter(channel="webhook").count() == 1


def test_another_tenants_delivery_cannot_be_resent(tenant, other_tenant):
    _, theirs = _delivery(other_tenant)

    with pytest.raises(NotFound):
        resend(tenant=tenant, actor=Actor.system(), message_id=theirs.pk)

    assert OutboundMessage.all_tenants.filter(channel="webhook").count() == 1


def test_an_email_is_not_resent_as_a_webhook(tenant):
    _delivery(tenant)
    with transaction.atomic():
        email = queue_message(
            tenant=tenant,
            channel="email",
            kind="test.email",
            target="a@example.test",
            payload={"endpoint_id": "x"},
        )

    with pytest.raises(NotFound):
        resend(tenant=tenant, actor=Actor.system(), message_id=email.pk)


# --- delivery ---------------------------------------------------------------------------


@pytest.fixture
def receiver(httpserver):
    """A local receiver answering with `receiver.answers` in turn (then 200)."""
    received = []

    def handler(request):
        received.append(request.get_data(as_text=True))
        status = receiver.answers.pop(0) if receiver.answers else 200
        return Response(receiver.body, status=status)

    receiver.answers, receiver.received, receiver.body = [], received, "thanks"
    receiver.url = httpserver.url_for("/hooks")
    httpserver.expect_request("/hooks", method="POST").respond_with_handler(handler)
    return receiver


def _send_event(tenant, subject="lead-1"):
    with transaction.atomic():
        emit(
            [
                Event(
                    tenant_id=tenant.pk,
                    type="lead.claimed",
                    data={"id": subject},
                    subject_id=subject,
                )
            ]
        )


def _make_due():
    OutboundMessage.all_tenants.filter(status=MessageStatus.PENDING).update(
        next_attempt_at=timezone.now()
    )


def test_an_endpoint_whose_address_turned_internal_is_refused_at_send(
    tenant, receiver, deliver_outbox, settings
):
    create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False  # 127.0.0.1 is internal from now on
    _send_event(tenant)

    deliver_outbox()

    message = OutboundMessage.all_tenants.get(channel="webhook")
    assert message.status == MessageStatus.FAILED
    assert "non-public address" in message.last_error
    assert receiver.received == []


def test_a_429_is_tried_again_later(tenant, receiver, deliver_outbox):
    create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    receiver.answers = [429]
    _send_event(tenant)

    deliver_outbox()

    message = OutboundMessage.all_tenants.get(channel="webhook")
    assert (message.status, message.attempts) == (MessageStatus.PENDING, 1)


def test_a_run_of_failures_keeps_when_it_started_and_a_success_ends_it(
    tenant, receiver, deliver_outbox
):
    endpoint, _ = create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    receiver.answers = [503, 503]
    _send_event(tenant)

    deliver_outbox()
    first_failure = WebhookAttempt.objects.for_tenant(tenant).get().attempted_at
    _make_due()
    deliver_outbox()
    endpoint.refresh_from_db()
    assert endpoint.failing_since == first_failure  # the 72 hours count from the first

    _make_due()
    deliver_outbox()
    endpoint.refresh_from_db()
    assert endpoint.failing_since is None
    assert OutboundMessage.all_tenants.get(channel="webhook").status == MessageStatus.SENT


def test_only_the_first_kilobyte_of_an_answer_is_logged(tenant, receiver, deliver_outbox):
    create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    receiver.body = "x" * 5000
    _send_event(tenant)

    deliver_outbox()

    assert len(WebhookAttempt.objects.for_tenant(tenant).get().response_body) == 1024


def test_a_secret_that_cannot_be_decrypted_fails_the_delivery_saying_rotate_it(
    tenant, receiver, deliver_outbox
):
    endpoint, _ = create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint.pk).update(
        secret_encrypted="gAAAAAnot-a-token"
    )
    _send_event(tenant)

    deliver_outbox()

    message = OutboundMessage.all_tenants.get(channel="webhook")
    assert message.status == MessageStatus.FAILED
    assert "rotate the secret" in message.last_error
    assert receiver.received == []


# --- turning endpoints off and on -------------------------------------------------------


def test_an_endpoint_turned_back_on_is_not_turned_off_again_by_the_next_sweep(tenant):
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )
    WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint.pk).update(
        failing_since=timezone.now() - timedelta(hours=100)
    )
    assert disable_failing_endpoints() == 1

    update_endpoint(tenant=tenant, actor=Actor.system(), endpoint_id=endpoint.pk, is_active=True)

    assert disable_failing_endpoints() == 0
    endpoint.refresh_from_db()
    assert (endpoint.is_active, endpoint.failing_since) == (True, None)


def test_an_endpoint_already_off_is_not_disabled_or_announced_twice(tenant, owner):
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )

    assert disable_endpoint(endpoint=endpoint, reason="The endpoint answered 410 Gone.") is True
    assert disable_endpoint(endpoint=endpoint, reason="The endpoint answered 410 Gone.") is False

    assert ActivityLog.objects.for_tenant(tenant).filter(action="webhook.disabled").count() == 1
    assert OutboundMessage.objects.for_tenant(tenant).filter(kind="webhook.disabled").count() == 1


def test_only_the_tenants_admins_are_emailed_when_an_endpoint_is_turned_off(
    tenant, owner, teammate
):
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )

    disable_endpoint(endpoint=endpoint, reason="The endpoint answered 410 Gone.")

    told = OutboundMessage.objects.for_tenant(tenant).filter(kind="webhook.disabled")
    assert list(told.values_list("target", flat=True)) == [owner.user.email]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_changes_to_one_endpoint_at_once_both_stay(tenant):
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )
    changed, release, errors = threading.Event(), threading.Event(), []

    def describe():
        try:
            with transaction.atomic():
                update_endpoint(
                    tenant=tenant, actor=Actor.system(), endpoint_id=endpoint.pk, description="CRM"
                )
                changed.set()
                release.wait(10)
        except Exception as exc:
            errors.append(exc)
        finally:
            changed.set()
            connection.close()

    def subscribe():
        try:
            update_endpoint(
                tenant=tenant,
                actor=Actor.system(),
                endpoint_id=endpoint.pk,
                events=["lead.closed"],
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=describe)
    first.start()
    changed.wait(10)
    second = threading.Thread(target=subscribe)
    second.start()
    wait_until(lambda: lock_waits() > 0, timeout=10, what="the second change waits")
    release.set()
    first.join(10)
    second.join(10)

    assert errors == []
    endpoint.refresh_from_db()
    assert (endpoint.description, endpoint.events) == ("CRM", ["lead.closed"])


def test_changing_an_endpoint_to_an_internal_address_is_refused_naming_url(
    tenant, tenant_client, settings
):
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False

    response = tenant_client.patch(
        f"/api/v1/webhooks/{endpoint.pk}", {"url": "https://127.0.0.1/admin"}, format="json"
    )

    assert response.status_code == 400
    assert "url" in response.json()["error"]["fields"]
    endpoint.refresh_from_db()
    assert endpoint.url == "https://hooks.example.com/in"


def test_a_message_naming_another_tenants_endpoint_is_never_sent_there(
    tenant, other_tenant, receiver, deliver_outbox
):
    from outbox.services import build_message, queue_messages

    theirs, _ = create_endpoint(tenant=other_tenant, actor=Actor.system(), url=receiver.url)
    with transaction.atomic():
        queue_messages(
            [
                build_message(
                    tenant=tenant,
                    channel="webhook",
                    kind="lead.claimed",
                    target=theirs.url,
                    payload={
                        "endpoint_id": str(theirs.pk),
                        "webhook_id": "msg_1",
                        "type": "lead.claimed",
                        "body": "{}",
                    },
                )
            ]
        )

    deliver_outbox()

    assert OutboundMessage.objects.for_tenant(tenant).get().status == MessageStatus.SKIPPED
    assert receiver.received == []


def test_a_redirect_is_not_a_delivery(tenant, receiver, deliver_outbox):
    create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    receiver.answers = [307]
    _send_event(tenant)

    deliver_outbox()

    assert OutboundMessage.all_tenants.get(channel="webhook").status == MessageStatus.FAILED
    assert WebhookAttempt.objects.for_tenant(tenant).get().succeeded is False
