"""Conversation notices: in-app always; an email too for agents who opted in, rendered
when it is sent and skipped once it is no longer news."""

from zoneinfo import ZoneInfo

import pytest

from core.actor import Actor
from inbox.acceptance import transfer_session
from inbox.models import InboxSession, SessionNotice, SessionNoticeKind, SessionStatus
from inbox.notices import emails_for, save_notices, session_notice
from outbox.models import MessageStatus, OutboundMessage
from teams.models import Membership
from tests.factories import MembershipFactory
from tests.inbox.factories import InboxSessionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def session(tenant, teammate):
    return InboxSessionFactory(
        tenant=tenant, assigned_agent=teammate, contact_name="Jane Roe", confirmation=False
    )


def emails() -> list[OutboundMessage]:
    return list(OutboundMessage.all_tenants.filter(channel="email"))


def test_only_agents_who_opted_in_get_an_email(tenant, session):
    keen = MembershipFactory(tenant=tenant, email_on_conversation=True)
    quiet = MembershipFactory(tenant=tenant)

    save_notices(
        [
            session_notice(session, keen, kind=SessionNoticeKind.SESSION_ASSIGNED),
            session_notice(session, quiet, kind=SessionNoticeKind.SESSION_ASSIGNED),
        ]
    )

    [message] = emails()
    assert message.target == keen.user.email
    assert message.payload["renderer"] == "inbox.session_notice"
    by_recipient = {n.recipient_id: n for n in SessionNotice.all_tenants.all()}
    assert by_recipient[keen.pk].email_message_id == message.pk
    assert by_recipient[quiet.pk].email_message_id is None
    assert by_recipient[keen.pk].title == "New conversation: Jane Roe"


def test_a_notice_saved_twice_queues_one_email(tenant, session):
    keen = MembershipFactory(tenant=tenant, email_on_conversation=True)

    for _ in range(2):
        save_notices(
            [
                session_notice(
                    session, keen, kind=SessionNoticeKind.ACCEPT_MISSED, dedupe_key="miss:1"
                )
            ],
            ignore_conflicts=True,
        )

    assert len(emails()) == 1
    assert SessionNotice.all_tenants.count() == 1


def test_recipients_the_engine_loaded_partly_cost_one_query_for_all(
    tenant, session, django_assert_num_queries
):
    for n in range(5):
        MembershipFactory(tenant=tenant, email_on_conversation=n % 2 == 0)
    partial = list(
        Membership.objects.for_tenant(tenant).only("id", "tenant_id", "user_id").order_by("pk")
    )
    notices = [
        session_notice(session, agent, kind=SessionNoticeKind.SESSION_ASSIGNED) for agent in partial
    ]

    with django_assert_num_queries(1):
        messages = emails_for(notices)

    assert len(messages) == 3


def test_the_email_tells_the_conversation_and_its_accept_deadline(
    tenant, teammate, mailoutbox, deliver_outbox
):
    tenant.session_accept_window_minutes = 10
    tenant.timezone = "Europe/Berlin"
    tenant.save()
    Membership.objects.for_tenant(tenant).filter(pk=teammate.pk).update(email_on_conversation=True)
    colleague = MembershipFactory(tenant=tenant, email_on_conversation=True)
    session = InboxSessionFactory(
        tenant=tenant, assigned_agent=teammate, contact_name="Jane Roe", confirmation=False
    )

    moved = transfer_session(
        tenant=tenant,
        session_id=session.pk,
        actor=Actor.for_membership(teammate),
        to_agent=colleague,
    )
    deliver_outbox()

    [email] = mailoutbox
    assert email.to == [colleague.user.email]
    assert email.subject == "Conversation transferred to you: Jane Roe"
    local = moved.accept_deadline.astimezone(ZoneInfo("Europe/Berlin"))
    assert f"Accept it before {local:%Y-%m-%d %H:%M} (Europe/Berlin)" in email.body
    assert "/conversations/" in email.body
    html = email.alternatives[0][0]
    assert "Jane Roe" in html and "Open your conversations" in html


def test_the_email_is_skipped_once_the_conversation_moved_on_or_closed(
    tenant, teammate, session, mailoutbox, deliver_outbox
):
    keen = MembershipFactory(tenant=tenant, email_on_conversation=True)
    InboxSession.objects.for_tenant(tenant).filter(pk=session.pk).update(assigned_agent=keen)
    save_notices([session_notice(session, keen, kind=SessionNoticeKind.SESSION_ASSIGNED)])
    closed = InboxSessionFactory(
        tenant=tenant, assigned_agent=keen, status=SessionStatus.CLOSED, confirmation=False
    )
    save_notices([session_notice(closed, keen, kind=SessionNoticeKind.SESSION_ASSIGNED)])
    InboxSession.objects.for_tenant(tenant).filter(pk=session.pk).update(assigned_agent=teammate)

    deliver_outbox()

    assert mailoutbox == []
    assert {m.status for m in emails()} == {MessageStatus.SKIPPED}


def test_an_admins_miss_notice_is_emailed_even_though_the_session_is_not_theirs(
    tenant, session, mailoutbox, deliver_outbox
):
    admin = MembershipFactory(tenant=tenant, role="admin", email_on_conversation=True)
    save_notices(
        [
            session_notice(
                session,
                admin,
                kind=SessionNoticeKind.NOT_ACCEPTED,
                body="3 agents in a row did not accept it.",
            )
        ]
    )

    deliver_outbox()

    [email] = mailoutbox
    assert email.subject == "Nobody accepted Jane Roe: it is waiting unassigned"
    assert "3 agents in a row did not accept it." in email.body
