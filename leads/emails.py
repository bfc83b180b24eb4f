"""Lead notification emails: what the email of a Notification says.

Services queue one outbox message (channel `email`, renderer ``leads.notification``) in
the transaction that creates the notification. The outbox calls `render_for_outbox` when
it sends, so the email tells the state of the lead at that moment, and is skipped when
nobody needs it any more (the recipient was deactivated, or the lead moved on to another
agent or was closed). Delivery, retries and the stored status belong to the outbox.
"""

import logging
import re
from datetime import datetime

from django.conf import settings
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse

from core import log_context
from leads.formatting import format_deadline, lead_url
from leads.models import (
    Lead,
    LeadReassignment,
    LeadStatus,
    Notification,
    NotificationKind,
    ReassignmentReason,
)
from outbox.channels import PermanentSendError, SkipMessage
from outbox.email import EmailContent, email_to, register_renderer
from outbox.models import OutboundMessage
from outbox.services import build_message

logger = logging.getLogger("leads.emails")

# The line operators search for when an agent or admin says "I never got the email";
# logged once per email, when it has finally failed.
FAILURE_LOG_MESSAGE = "Lead notification email failed (the lead is unchanged): %s"
RENDERER = "leads.notification"
TEMPLATE_DIR = "leads/email"

AGENT_KINDS = (NotificationKind.LEAD_ASSIGNED, NotificationKind.LEAD_REASSIGNED)
BREACH_KINDS = (NotificationKind.CLAIM_SLA_BREACHED, NotificationKind.CONTACT_SLA_BREACHED)

# Why a lead was reassigned, as the new agent reads it.
REASON_SENTENCES = {
    ReassignmentReason.UNCLAIMED: (
        "It was reassigned to you because the previous agent did not claim it in time."
    ),
    ReassignmentReason.NO_CONTACT: (
        "It was reassigned to you because the previous agent did not contact the lead in time."
    ),
    ReassignmentReason.MANUAL: "An admin reassigned it to you.",
}


class PermanentEmailError(Exception):
    """The email cannot be rendered as it is."""


# --- queueing ---------------------------------------------------------------------------


def attach_email(
    notification: Notification, *, now=None, details: dict | None = None
) -> OutboundMessage:
    """Build the outbox message of a new notification's email and point the notification
    at it; the caller saves both in its transaction (message first).

    `details` (JSON) are facts of the change that the lead's row does not keep, for the
    renderer: after a reassignment, `{"window": ..., "window_restarted": ...}`."""
    key = (
        f"lead-notification/{notification.recipient_id}/{notification.dedupe_key}"
        if notification.dedupe_key
        else f"lead-notification/{notification.pk}"
    )
    message = build_message(
        tenant=notification.tenant_id,
        channel="email",
        kind=f"lead.{notification.kind}",
        target=notification.recipient.user.email or "",
        payload={
            "renderer": RENDERER,
            "notification_id": str(notification.pk),
            **({"details": details} if details else {}),
        },
        idempotency_key=key,
        now=now,
    )
    notification.email_message = message
    return message


@register_renderer(RENDERER, failure_log_line=FAILURE_LOG_MESSAGE)
def render_for_outbox(message) -> EmailContent:
    """The email of the notification that `message` belongs to, as it reads now."""
    notification = (
        Notification.all_tenants.select_related(
            "tenant",
            "recipient__user",
            "lead__tenant",
            "lead__assigned_agent__user",
            "email_message",
        )
        .filter(pk=message.payload.get("notification_id"), tenant_id=message.tenant_id)
        .first()
    )
    if notification is None:
        raise SkipMessage("The notification no longer exists.")
    # The outbox's send scope ends this: the failure line names the lead.
    log_context.bind(lead_id=notification.lead_id)
    skip_reason = _reason_to_skip(notification)
    if skip_reason:
        raise SkipMessage(skip_reason)
    if notification.lead is None:
        raise PermanentSendError("The notification has no lead to tell about.")
    return email_to(
        notification.recipient.user.email,
        lambda: render_notification_email(notification),
        what=f"notification {notification.pk}",
        logger=logger,
        metadata={
            "notification_id": str(notification.pk),
            "tenant_id": str(notification.tenant_id),
            "kind": notification.kind,
        },
    )


# --- rendering -------------------------------------------------------------------------


def render_notification_email(notification: Notification) -> tuple[str, str, str]:
    """(subject, plain text, HTML) of a notification's email, from
    ``templates/leads/email/<kind>.subject.txt``, ``<kind>.txt`` and ``<kind>.html``."""
    context = _email_context(notification)
    kind = notification.kind
    subject = render_to_string(f"{TEMPLATE_DIR}/{kind}.subject.txt", context)
    subject = " ".join(subject.split())  # one line: a header cannot hold a newline
    text = render_to_string(f"{TEMPLATE_DIR}/{kind}.txt", context)
    text = re.sub(r"\n{3,}", "\n\n", text.strip()) + "\n"  # what template tags leave behind
    html = render_to_string(f"{TEMPLATE_DIR}/{kind}.html", context)
    return subject, text, html


def _email_context(notification: Notification) -> dict:
    lead = notification.lead
    if lead is None:
        raise PermanentEmailError("The notification has no lead.")
    tenant = lead.tenant
    context = {
        "notification": notification,
        "tenant": tenant,
        "lead": lead,
        "recipient": notification.recipient,
        "recipient_name": notification.recipient.user.get_short_name(),
        "lead_link": lead_url(lead),
        "status_label": LeadStatus(lead.status).label,
    }
    if notification.kind in AGENT_KINDS:
        context.update(_agent_context(notification, lead))
    else:
        context.update(_breach_context(notification, lead))
    return context


def _agent_context(notification: Notification, lead: Lead) -> dict:
    tenant = lead.tenant
    context = {
        "reason_sentence": "",
        "notes": "",
        "warning": "",
        "deadline": "",
        "warning_urgent": False,
    }
    if notification.kind == NotificationKind.LEAD_ASSIGNED:
        if lead.status == LeadStatus.NEW and lead.claim_deadline:
            context["warning"] = _window_warning(tenant.claim_window_minutes, "claim")
            context["deadline"] = format_deadline(lead.claim_deadline, tenant)
        return context

    # The reassignment that gave the lead to this recipient.
    reassignment = (
        LeadReassignment.objects.for_tenant(tenant)
        .select_related("reassigned_by__user")
        .filter(lead=lead, to_agent=notification.recipient)
        .order_by("-created_at")
        .first()
    )
    reason = reassignment.reason if reassignment else lead.reassignment_reason
    if reason:
        context["reason_sentence"] = REASON_SENTENCES[ReassignmentReason(reason)]
        if reason == ReassignmentReason.MANUAL and reassignment and reassignment.reassigned_by:
            context["reason_sentence"] = (
                f"{reassignment.reassigned_by.display_name} (admin) reassigned it to you."
            )
    if reassignment and reassignment.notes:
        context["notes"] = reassignment.notes
    # Only the reasons that start a new contact window come with a timer warning.
    if (
        reason in (ReassignmentReason.UNCLAIMED, ReassignmentReason.NO_CONTACT)
        and lead.status == LeadStatus.CLAIMED
        and lead.contact_deadline
    ):
        context["warning"] = _window_warning(tenant.contact_window_minutes, "contact")
        context["deadline"] = format_deadline(lead.contact_deadline, tenant)
    if reason == ReassignmentReason.MANUAL and reassignment is not None:
        context.update(_manual_window_context(notification, lead, reassignment))
    return context


def _manual_window_context(
    notification: Notification, lead: Lead, reassignment: LeadReassignment
) -> dict:
    """A manual reassignment keeps the timers, unless the admin restarted the window.

    Told from the lead as it is now: a deadline no later than the reassignment had
    already passed when the lead came to this agent (the sweep holds it against them at
    once); a window the admin restarted gives its new deadline. Once the lead has moved
    on to its next window (claimed since), neither is news any more."""
    tenant = lead.tenant
    if lead.status == LeadStatus.NEW:
        window, step, deadline = "claim", "claim", lead.claim_deadline
        minutes = tenant.claim_window_minutes
    elif lead.status == LeadStatus.CLAIMED:
        window, step, deadline = "contact", "contact", lead.contact_deadline
        minutes = tenant.contact_window_minutes
    else:
        return {}
    if deadline is None:
        return {}
    if deadline <= reassignment.created_at:
        return {
            "warning": (
                f"The {window} deadline had already passed when this lead was reassigned "
                f"to you: it is late, {step} it as soon as you can"
            ),
            "warning_urgent": True,
            "deadline": format_deadline(deadline, tenant),
        }
    message = notification.email_message
    details = (message.payload.get("details") or {}) if message is not None else {}
    if details.get("window_restarted") and details.get("window") == window:
        unit = "minute" if minutes == 1 else "minutes"
        return {
            "warning": (
                f"The {window} window was restarted when this lead was reassigned to you: "
                f"you have {minutes} {unit} to {step} it"
            ),
            "deadline": format_deadline(deadline, tenant),
        }
    return {}


def _window_warning(minutes: int, step: str) -> str:
    unit = "minute" if minutes == 1 else "minutes"
    return f"You have {minutes} {unit} to {step} this lead"


def _breach_context(notification: Notification, lead: Lead) -> dict:
    tenant = lead.tenant
    claim = notification.kind == NotificationKind.CLAIM_SLA_BREACHED
    deadline = _breached_deadline(notification, lead, claim=claim)
    # The agent who held the lead when the window ended. By the time this email is
    # rendered the lead may already have been reassigned (auto-reassign on breach, or
    # an admin), so the first reassignment after the deadline names them.
    missed_by = lead.assigned_agent
    if deadline is not None:
        moved = (
            LeadReassignment.objects.for_tenant(tenant)
            .select_related("from_agent__user")
            .filter(lead=lead, created_at__gte=deadline)
            .order_by("created_at")
            .first()
        )
        if moved is not None:
            missed_by = moved.from_agent
    # Already with someone else (auto-reassign on breach): the admin may have nothing to do.
    now_with = None
    if lead.assigned_agent_id and (missed_by is None or lead.assigned_agent_id != missed_by.pk):
        now_with = lead.assigned_agent
    return {
        "window": "claim" if claim else "contact",
        "verb": "claimed" if claim else "contacted",
        "missed_by_name": missed_by.display_name if missed_by else "nobody",
        "missed_by_email": missed_by.user.email if missed_by else "",
        "deadline": format_deadline(deadline, tenant) if deadline else "",
        "now_with_name": now_with.display_name if now_with else "",
        "admin_link": _admin_lead_url(lead),
    }


def _breached_deadline(notification: Notification, lead: Lead, *, claim: bool):
    """The deadline that was missed. The sweep writes it into the dedupe key
    (``<kind>:<lead id>:<deadline ISO>``); the lead's own fields may have been reset by a
    reassignment since."""
    parts = notification.dedupe_key.split(":", 2)
    if len(parts) == 3:
        try:
            return datetime.fromisoformat(parts[2])
        except ValueError:
            pass
    if claim:
        return lead.claim_deadline or lead.claim_sla_breached_at
    return lead.contact_deadline or lead.contact_sla_breached_at


def _admin_lead_url(lead: Lead) -> str:
    try:
        path = reverse("admin:leads_lead_change", args=[lead.pk])
    except NoReverseMatch:  # the lead admin is not registered
        return lead_url(lead)
    return f"{settings.PUBLIC_BASE_URL}{path}"


# --- helpers ---------------------------------------------------------------------------


def _reason_to_skip(notification: Notification) -> str:
    recipient = notification.recipient
    if not recipient.is_active or not recipient.user.is_active:
        return "The recipient is no longer an active agent of the tenant."
    lead = notification.lead
    if notification.kind in AGENT_KINDS and lead is not None:
        if lead.assigned_agent_id != recipient.pk:
            return "The lead has since been given to another agent."
        if not lead.is_open:
            return "The lead has been closed since."
    return ""
