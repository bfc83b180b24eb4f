"""The admin's "Outbound messages": scoped to the admin's tenants, read-only, and failed
messages can be sent again; sessions and notices show their message's delivery."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import transaction
from django.test import Client
from django.urls import reverse

from audit.models import ActivityLog
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import queue_message
from tests.inbox.factories import InboxSessionFactory

pytestmark = pytest.mark.django_db

LIST_URL = reverse("admin:outbox_outboundmessage_changelist")


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def failed_email(tenant, target) -> OutboundMessage:
    with transaction.atomic():
        message = queue_message(
            tenant=tenant, channel="email", kind="test.email", target=target, payload={}
        )
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        status=MessageStatus.FAILED, attempts=6, max_attempts=6, last_error="HTTP 400 from Resend"
    )
    return message


def test_an_admin_sees_only_their_tenants_messages_and_cannot_open_others(
    owner, tenant, other_tenant
):
    mine = failed_email(tenant, "mine@example.test")
    theirs = failed_email(other_tenant, "theirs@example.test")
    client = login(owner.user)

    page = client.get(LIST_URL).content.decode()

    assert "mine@example.test" in page
    assert "theirs@example.test" not in page
    assert "HTTP 400 from Resend" in page
    assert "6 of 6" in page
    own_page = client.get(reverse("admin:outbox_outboundmessage_change", args=[mine.pk]))
    assert own_page.status_code == 200
    other = client.get(reverse("admin:outbox_outboundmessage_change", args=[theirs.pk]))
    assert other.status_code in (302, 404)


def test_send_again_requeues_failed_messages_of_the_admins_tenant(owner, tenant, other_tenant):
    mine = failed_email(tenant, "mine@example.test")
    theirs = failed_email(other_tenant, "theirs@example.test")
    client = login(owner.user)

    response = client.post(
        LIST_URL,
        {
            "action": "send_selected_again",
            ACTION_CHECKBOX_NAME: [str(mine.pk), str(theirs.pk)],
        },
        follow=True,
    )

    assert response.status_code == 200
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.status == MessageStatus.PENDING
    assert mine.max_attempts == 12  # six more tries on top of the six made
    assert theirs.status == MessageStatus.FAILED  # not in the admin's queryset at all
    resent = ActivityLog.objects.for_tenant(tenant).get(action="message.resent")
    assert (resent.actor_label, resent.via) == (owner.user.email, "admin")


def test_the_session_page_shows_its_confirmations_delivery(owner, tenant):
    session = InboxSessionFactory(tenant=tenant)
    OutboundMessage.all_tenants.filter(pk=session.confirmation_message_id).update(
        status=MessageStatus.FAILED, attempts=2, last_error="CRM answered HTTP 401"
    )
    client = login(owner.user)

    page = client.get(reverse("admin:inbox_inboxsession_change", args=[session.pk]))

    text = page.content.decode()
    assert "Failed" in text
    assert "CRM answered HTTP 401" in text
    message_url = reverse(
        "admin:outbox_outboundmessage_change", args=[session.confirmation_message_id]
    )
    assert message_url in text
