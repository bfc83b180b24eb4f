"""Writes of the agent pages: an agent marking their own notices read, and setting
their presence and email preference in every tenant they work for (through the teams
services, which audit each change).

Reading a notice changes only the reader's own view of their inbox, not the tenant's
data, so it writes no ActivityLog row (the audit log records who changed work, and a
row per click on "mark read" would bury that).
"""

from django.db import transaction
from django.utils import timezone

from core.actor import Actor
from core.errors import InvalidInput, NotFound
from inbox.models import SessionNotice
from leads.models import Notification
from teams.models import PresenceSource
from teams.services import set_agent_presence, set_conversation_emails
from workspace.selectors import LEAD_NOTICE, SESSION_NOTICE

NOTICE_MODELS = {LEAD_NOTICE: Notification, SESSION_NOTICE: SessionNotice}


def _own_notices(model, user):
    # The user's own notices, in whichever of their tenants: the recipient is one of
    # their active memberships (see workspace.selectors).
    return model.all_tenants.filter(recipient__user=user, recipient__is_active=True)


@transaction.atomic
def mark_notice_read(*, user, kind: str, notice_id, now=None) -> None:
    """Mark one of the user's notices read; someone else's does not exist for them.
    Marking a read notice again keeps its first read_at."""
    model = NOTICE_MODELS.get(kind)
    if model is None:
        raise InvalidInput(code="invalid_kind", message="Unknown kind of notice.", field="kind")
    notices = _own_notices(model, user).filter(pk=notice_id)
    if not notices.exists():
        raise NotFound(code="notice_not_found", message="Notice not found.")
    notices.filter(is_read=False).update(is_read=True, read_at=now or timezone.now())


@transaction.atomic
def mark_all_notices_read(*, user, now=None) -> int:
    """Mark every unread notice of the user read, both kinds; how many were unread."""
    now = now or timezone.now()
    return sum(
        _own_notices(model, user).filter(is_read=False).update(is_read=True, read_at=now)
        for model in NOTICE_MODELS.values()
    )


# --- the person's settings, for every tenant they work for ------------------------------
# Presence and the email preference are about the person (at their desk or not), so the
# pages set them in all of the person's memberships at once, or in none.


@transaction.atomic
def set_presence_everywhere(*, memberships, presence: str, via: str) -> None:
    for membership in memberships:
        set_agent_presence(
            membership=membership,
            presence=presence,
            actor=Actor.for_membership(membership, via=via),
            source=PresenceSource.PAGE,
        )


@transaction.atomic
def set_conversation_emails_everywhere(*, memberships, enabled: bool, via: str) -> None:
    for membership in memberships:
        set_conversation_emails(
            membership=membership, enabled=enabled, actor=Actor.for_membership(membership, via=via)
        )
