"""In-app notices to agents about conversations (and their emails, for agents who opted
in). Services build them in the transaction that assigns or moves a session; the agent
pages show them next to the lead notices."""

from inbox.models import InboxSession, SessionNotice, SessionNoticeKind
from outbox.models import OutboundMessage
from outbox.services import queue_messages
from teams.models import Membership

TITLES = {
    SessionNoticeKind.SESSION_ASSIGNED: "New conversation: {contact}",
    SessionNoticeKind.SESSION_TRANSFERRED: "Conversation transferred to you: {contact}",
    SessionNoticeKind.ACCEPT_MISSED: "You did not accept {contact} in time",
    SessionNoticeKind.NOT_ACCEPTED: "Nobody accepted {contact}: it is waiting unassigned",
}


def session_notice(
    session: InboxSession, recipient: Membership, *, kind: str, body: str = "", dedupe_key=""
) -> SessionNotice:
    """An unsaved notice about `session` for `recipient`; `save_notices` stores it."""
    contact = session.contact_name or session.contact_id
    return SessionNotice(
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
    points at its message. The caller saves the messages before the notices."""
    return []


def save_notices(notices: list[SessionNotice], *, ignore_conflicts: bool = False) -> None:
    """Store notices and queue their emails, in the caller's transaction."""
    if not notices:
        return
    queue_messages(emails_for(notices), ignore_conflicts=ignore_conflicts)
    SessionNotice.all_tenants.bulk_create(notices, ignore_conflicts=ignore_conflicts)
