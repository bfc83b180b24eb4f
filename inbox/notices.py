"""In-app notices to agents about conversations (and their emails, for agents who opted
in). Services build them in the transaction that assigns or moves a session; the agent
pages show them next to the lead notices.

An email is one outbox message (channel `email`, renderer ``inbox.session_notice``)
queued with its notice. The outbox renders it when it sends, so it tells the session as
it is then, and skips it when it is no longer news (the recipient was deactivated, or
the conversation was closed or moved on to someone else)."""

import logging
import re
from zoneinfo import ZoneInfo

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse

from core import log_context
from core.row_sql import new_row
from inbox.models import InboxSession, SessionNotice, SessionNoticeKind, SessionStatus
from outbox.channels import SkipMessage
from outbox.email import EmailContent, email_to, register_renderer
from outbox.models import OutboundMessage
from outbox.services import build_message, queue_messages
from teams.models import Membership

logger = logging.getLogger("inbox.notices")

RENDERER = "inbox.session_notice"
TEMPLATE_DIR = "inbox/email"
# The line operators search for when an agent says "I never got the email".
FAILURE_LOG_MESSAGE = "Conversation notice email failed (the session is unchanged): %s"

TITLES = {
    SessionNoticeKind.SESSION_ASSIGNED: "New conversation: {contact}",
    SessionNoticeKind.SESSION_TRANSFERRED: "Conversation transferred to you: {contact}",
    SessionNoticeKind.ACCEPT_MISSED: "You did not accept {contact} in time",
    SessionNoticeKind.NOT_ACCEPTED: "Nobody accepted {contact}: it is waiting unassigned",
}
# Notices that hand the recipient a conversation: their email is moot once it moved on.
HANDED_TO_RECIPIENT = (SessionNoticeKind.SESSION_ASSIGNED, SessionNoticeKind.SESSION_TRANSFERRED)


def session_notice(
    session: InboxSession,
    recipient: Membership | None,
    *,
    kind: str,
    body: str = "",
    dedupe_key="",
) -> SessionNotice:
    """An unsaved notice about `session` for `recipient` (None: the caller sets
    `recipient_id`); `save_notices` stores it."""
    contact = session.contact_name or session.contact_id
    return new_row(
        SessionNotice,
        tenant_id=session.tenant_id,
        recipient=recipient,
        session=session,
        kind=kind,
        title=TITLES[kind].format(contact=contact)[:200],
        body=body,
        dedupe_key=dedupe_key,
    )


def emails_for(notices: list[SessionNotice]) -> list[OutboundMessage]:
    """The outbox emails of the notices whose recipients asked for them; each notice
    points at its message. The caller saves the messages before the notices.

    Recipients the routing engine loaded carry only some columns: their preference and
    address are then read for all of them in one query, never one per notice."""
    deferred = {
        notice.recipient_id
        for notice in notices
        if {"email_on_conversation", "user_id"} & notice.recipient.get_deferred_fields()
        or not Membership.user.is_cached(notice.recipient)
    }
    read = {}
    if deferred:
        read = {
            pk: (wants, email)
            for pk, wants, email in Membership.all_tenants.filter(pk__in=deferred).values_list(
                "pk", "email_on_conversation", "user__email"
            )
        }
    messages = []
    for notice in notices:
        recipient = notice.recipient
        if recipient.pk in read:
            wants, address = read[recipient.pk]
        else:
            wants, address = recipient.email_on_conversation, recipient.user.email
        if not wants or not address:
            continue
        message = notice_email(notice, address)
        notice.email_message = message
        messages.append(message)
    return messages


def notice_email(notice: SessionNotice, address) -> OutboundMessage:
    """The unsaved outbox email of `notice` to `address` (a string, or SQL that reads
    it in the statement that inserts the message)."""
    # Stable: a notice saved again (a retried sweep, ignore_conflicts) queues no
    # second email, since the outbox refuses a second message with the same key.
    key = (
        f"session-notice/{notice.recipient_id}/{notice.dedupe_key}"
        if notice.dedupe_key
        else f"session-notice/{notice.pk}"
    )
    return build_message(
        tenant=notice.tenant_id,
        channel="email",
        kind=f"inbox.{notice.kind}",
        target=address,
        payload={"renderer": RENDERER, "notice_id": str(notice.pk)},
        idempotency_key=key,
    )


def save_notices(notices: list[SessionNotice], *, ignore_conflicts: bool = False) -> None:
    """Store notices and queue their emails, in the caller's transaction."""
    if not notices:
        return
    queue_messages(emails_for(notices), ignore_conflicts=ignore_conflicts)
    SessionNotice.all_tenants.bulk_create(notices, ignore_conflicts=ignore_conflicts)


# --- the email, as the outbox sends it ---------------------------------------------------


@register_renderer(RENDERER, failure_log_line=FAILURE_LOG_MESSAGE)
def render_for_outbox(message) -> EmailContent:
    """The email of the notice that `message` belongs to, as it reads now."""
    notice = (
        SessionNotice.all_tenants.select_related(
            "tenant", "recipient__user", "session__assigned_agent__user"
        )
        .filter(pk=message.payload.get("notice_id"), tenant_id=message.tenant_id)
        .first()
    )
    if notice is None:
        raise SkipMessage("The notice no longer exists.")
    if notice.session_id:
        log_context.bind(session_id=notice.session_id)  # the failure line names it
    skip_reason = _reason_to_skip(notice)
    if skip_reason:
        raise SkipMessage(skip_reason)
    return email_to(
        notice.recipient.user.email,
        lambda: render_notice_email(notice),
        what=f"session notice {notice.pk}",
        logger=logger,
        metadata={
            "notice_id": str(notice.pk),
            "tenant_id": str(notice.tenant_id),
            "kind": notice.kind,
        },
    )


def render_notice_email(notice: SessionNotice) -> tuple[str, str, str]:
    """(subject, plain text, HTML) from ``templates/inbox/email/notice.*``: one layout
    for every kind; the notice's title and body say what happened."""
    context = _email_context(notice)
    subject = " ".join(notice.title.split())  # one line: a header cannot hold a newline
    text = render_to_string(f"{TEMPLATE_DIR}/notice.txt", context)
    text = re.sub(r"\n{3,}", "\n\n", text.strip()) + "\n"
    html = render_to_string(f"{TEMPLATE_DIR}/notice.html", context)
    return subject, text, html


def conversations_url() -> str:
    try:
        path = reverse("conversations")
    except NoReverseMatch:  # the agent pages are not mounted (API-only deployments)
        path = "/conversations/"
    return f"{settings.PUBLIC_BASE_URL}{path}"


def _email_context(notice: SessionNotice) -> dict:
    session = notice.session
    tenant = notice.tenant
    deadline = ""
    if (
        session is not None
        and session.accept_deadline
        and session.assigned_agent_id == notice.recipient_id
        and notice.kind in HANDED_TO_RECIPIENT
    ):
        local = session.accept_deadline.astimezone(ZoneInfo(tenant.timezone))
        deadline = f"{local:%Y-%m-%d %H:%M} ({tenant.timezone})"
    return {
        "notice": notice,
        "tenant": tenant,
        "session": session,
        "contact": (session.contact_name or session.contact_id) if session else "",
        "channel": session.get_channel_display() if session else "",
        "recipient_name": notice.recipient.user.get_short_name(),
        "accept_deadline": deadline,
        "link": conversations_url(),
    }


def _reason_to_skip(notice: SessionNotice) -> str:
    recipient = notice.recipient
    if not recipient.is_active or not recipient.user.is_active:
        return "The recipient is no longer an active agent of the tenant."
    session = notice.session
    if notice.kind in HANDED_TO_RECIPIENT and session is not None:
        if session.status != SessionStatus.OPEN:
            return "The conversation has been closed since."
        if session.assigned_agent_id != recipient.pk:
            return "The conversation has since been given to another agent."
    return ""
