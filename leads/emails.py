"""Lead emails: every Notification with email_status "pending" becomes one email.

The email is a best-effort side effect of a change that has already been committed (a
lead assigned or reassigned, a missed SLA window). Its state lives on the Notification,
where an admin can see it:

* the services in `leads.services` create the row with ``email_status="pending"`` and,
  on commit, call `enqueue_notification_emails`;
* the task `leads.tasks.send_notification_email` calls `deliver_notification_email` once
  per attempt: ``email_attempts`` counts the attempts, ``email_last_error`` says why the
  latest one failed;
* it ends ``sent`` (with ``email_sent_at``), ``failed``, or ``skipped`` (nobody to tell
  any more: the recipient was deactivated, or the lead has moved on to another agent).
  Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; every
  other error is final at once.
* An email that could not even be enqueued (broker down), or whose task was lost, stays
  ``pending``; `requeue_pending_notification_emails` (Celery beat, every minute) enqueues
  it again.

Nothing here touches a lead: every write names its fields, all of them ``email_*`` on the
Notification. No log line and no stored error contains the Resend API key.
"""

import logging
import re
import smtplib
import uuid
from datetime import datetime, timedelta
from enum import StrEnum

import requests
from anymail.exceptions import AnymailError, AnymailRecipientsRefused
from django.conf import settings
from django.core.cache import cache
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from config.tasks import BACKOFF_JITTER, backoff_seconds
from core.tasks import enqueue
from leads.formatting import format_deadline, lead_url
from leads.models import (
    EmailStatus,
    Lead,
    LeadReassignment,
    LeadStatus,
    Notification,
    NotificationKind,
    ReassignmentReason,
)

logger = logging.getLogger("leads.emails")

# The line operators search for when an agent or admin says "I never got the email".
FAILURE_LOG_MESSAGE = "Lead notification email failed (the lead is unchanged): %s"

REQUEUE_BATCH_SIZE = 500
LAST_ERROR_LIMIT = 1000
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

_OUTCOME_FIELDS = ["email_status", "email_last_error", "email_sent_at"]


class Delivery(StrEnum):
    """What one call of `deliver_notification_email` did."""

    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"  # nobody to tell any more; stored with the reason
    NOT_FOUND = "not_found"
    NOT_PENDING = "not_pending"  # already sent, failed or skipped: nothing to do
    IN_PROGRESS = "in_progress"  # another attempt is sending it right now (duplicate task)


class TransientEmailError(Exception):
    """The mail service could not take the email now; the task retries it later."""

    def __init__(self, message: str, *, attempts: int):
        super().__init__(message)
        self.attempts = attempts


class PermanentEmailError(Exception):
    """The email cannot be sent as it is; retrying would not help."""


# --- enqueueing ------------------------------------------------------------------------


def enqueue_notification_emails(notification_ids: list[str]) -> bool:
    """Queue the emails of these notifications; False when the broker is down (the
    periodic job re-enqueues pending ones)."""
    from leads.tasks import send_notification_emails  # leads.tasks imports this module

    queued = enqueue(send_notification_emails, [str(i) for i in notification_ids])
    if not queued:
        logger.warning(
            "%d lead notification email(s) stay pending; the periodic re-enqueue will send them.",
            len(notification_ids),
        )
    return queued


def requeue_pending_notification_emails(*, older_than_seconds: float) -> int:
    """Enqueue again the emails left pending; how many were enqueued.

    A system job across every tenant. An email is stale when it was created more than
    `older_than_seconds` ago and either was never attempted (its task never reached a
    worker: broker down at enqueue time), or was attempted but is older than the whole
    retry schedule (its task was lost between retries). One that is merely waiting for
    its next retry is left to that retry. Oldest first, in batches; each batch is one
    fan-out task.
    """
    older_than_seconds = max(0.0, float(older_than_seconds))
    now = timezone.now()
    created_before = now - timedelta(seconds=older_than_seconds)
    lost_before = created_before - timedelta(seconds=longest_retry_schedule_seconds())
    # Deliberately cross-tenant: a system sweep over every tenant's pending emails. Each
    # one is then delivered for its own notification, within that row's tenant.
    stale = Notification.all_tenants.filter(
        email_status=EmailStatus.PENDING, created_at__lt=created_before
    ).filter(Q(email_attempts=0) | Q(created_at__lt=lost_before))

    requeued = 0
    after = None
    while True:
        page = stale
        if after is not None:
            created, pk = after
            page = page.filter(Q(created_at__gt=created) | Q(created_at=created, pk__gt=pk))
        batch = list(
            page.order_by("created_at", "pk").values_list("pk", "created_at")[:REQUEUE_BATCH_SIZE]
        )
        if batch:
            if not enqueue_notification_emails([str(pk) for pk, _ in batch]):
                # The broker is down: the rest would fail the same way, one timeout each.
                return requeued
            requeued += len(batch)
        if len(batch) < REQUEUE_BATCH_SIZE:
            return requeued
        last_pk, last_created = batch[-1]
        after = (last_created, last_pk)


# --- one attempt -----------------------------------------------------------------------


def deliver_notification_email(*, notification_id) -> str:
    """Make one attempt to send a notification's pending email; a `Delivery` value.

    Raises `TransientEmailError` (after recording it) when the mail service could not be
    reached or answered 429/5xx, so that the task retries. Every other outcome is final
    and stored on the notification.
    """
    lease = None
    try:
        # 1. Claim the attempt, in a short transaction of its own.
        with transaction.atomic():
            notification = _locked_notification(notification_id)
            if notification is None:
                return Delivery.NOT_FOUND
            if notification.email_status != EmailStatus.PENDING:
                return Delivery.NOT_PENDING
            if notification.email_attempts >= max_attempts():
                # A task requeued after its retries were lost: the budget is spent.
                _store_outcome(
                    notification,
                    EmailStatus.FAILED,
                    error=_gave_up(notification.email_last_error, notification.email_attempts),
                )
                _log_failure(notification, notification.email_last_error)
                return Delivery.FAILED
            lease = _take_lease(notification.pk)
            if lease is None:
                return Delivery.IN_PROGRESS
            notification.email_attempts += 1
            notification.save(update_fields=["email_attempts"])
        attempts = notification.email_attempts

        # 2. Who and what, outside any transaction: no row stays locked while we send.
        notification = (
            Notification.all_tenants.select_related(
                "tenant", "recipient__user", "lead__tenant", "lead__assigned_agent__user"
            )
            .filter(pk=notification.pk)
            .first()
        )
        if notification is None:
            return Delivery.NOT_FOUND
        skip_reason = _reason_to_skip(notification)
        if skip_reason:
            _finish(notification.pk, EmailStatus.SKIPPED, error=skip_reason)
            logger.info(
                "Lead notification email skipped: %s [notification %s]",
                skip_reason,
                notification.pk,
            )
            return Delivery.SKIPPED
        if notification.lead is None:
            return _fail(notification, "The notification has no lead to tell about.")
        address = (notification.recipient.user.email or "").strip()
        if not address:
            return _fail(notification, "The recipient has no email address.")
        try:
            subject, text, html = render_notification_email(notification)
        except Exception as exc:  # a template bug must not leave the row pending forever
            logger.exception("Could not render the email of notification %s", notification.pk)
            return _fail(notification, f"The email could not be rendered: {_describe(exc)}")

        # 3. Send.
        message = EmailMultiAlternatives(
            subject=subject,
            body=text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[address],
        )
        message.attach_alternative(html, "text/html")
        # Anymail sends these along (Resend: X-Metadata header); other backends ignore them.
        message.metadata = {
            "notification_id": str(notification.pk),
            "tenant_id": str(notification.tenant_id),
            "kind": notification.kind,
        }
        try:
            message.send(fail_silently=False)
        except Exception as exc:
            transient, error = classify_send_error(exc)
            if not transient:
                return _fail(notification, error)
            _record_transient_failure(notification.pk, error)
            _log_failure(
                notification, f"{error} (attempt {attempts}; retried while retries remain)"
            )
            raise TransientEmailError(error, attempts=attempts) from None

        # 4. Sent.
        _finish(notification.pk, EmailStatus.SENT, error="", sent_at=timezone.now())
        return Delivery.SENT
    finally:
        if lease is not None:
            _release_lease(*lease)


def mark_notification_email_failed(*, notification_id, error: str) -> bool:
    """Give up on a pending email: status failed, with `error` for the admin.

    Returns False (and changes nothing) when the email is no longer pending. `error` must
    not contain secrets; it is stored and logged as given (clipped, redacted).
    """
    error = _clip(error)
    with transaction.atomic():
        notification = _locked_notification(notification_id)
        if notification is None or notification.email_status != EmailStatus.PENDING:
            return False
        _store_outcome(notification, EmailStatus.FAILED, error=error)
    _log_failure(notification, error)
    return True


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
    context = {"reason_sentence": "", "notes": "", "warning": "", "deadline": ""}
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
    return context


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


# --- errors ----------------------------------------------------------------------------


def classify_send_error(exc: BaseException) -> tuple[bool, str]:
    """(transient, description) of an error raised while sending.

    Transient: the mail service could not be reached or timed out, or answered 429 or
    5xx (Anymail/Resend, raw requests errors, SMTP 4xx and dropped connections, socket
    errors). Everything else is permanent: a 4xx refusal, refused recipients, a bad
    configuration, a bug.
    """
    description = _describe(exc)
    if isinstance(exc, AnymailRecipientsRefused):
        return False, description
    if isinstance(exc, AnymailError):
        status = exc.status_code
        if status is not None:
            return (status == 429 or status >= 500), description
        # No answer at all: anymail wraps the requests error (and is also an instance
        # of its type).
        cause = exc.__cause__
        return _is_network_error(exc) or _is_network_error(cause), description
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes), description
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True, description
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500, description
    if isinstance(exc, smtplib.SMTPException):
        return False, description
    return _is_network_error(exc), description


def _is_network_error(exc) -> bool:
    if exc is None:
        return False
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    if isinstance(exc, requests.RequestException):
        return False  # e.g. an HTTPError carrying a 4xx
    # socket.timeout, ConnectionRefusedError, gaierror, ...: all OSError.
    return isinstance(exc, OSError)


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # anymail's __str__ reads attributes a hand-made error may lack
        text = " ".join(str(arg) for arg in getattr(exc, "args", ()))
    text = " ".join(text.split())
    name = type(exc).__name__
    return _redact(f"{name}: {text}" if text else name)


def _redact(text: str) -> str:
    for secret in (settings.RESEND_API_KEY, getattr(settings, "EMAIL_HOST_PASSWORD", "")):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def _clip(error: str) -> str:
    error = _redact(str(error))
    return error if len(error) <= LAST_ERROR_LIMIT else error[: LAST_ERROR_LIMIT - 1] + "…"


def _gave_up(error: str, attempts: int) -> str:
    suffix = f"Gave up after {attempts} attempts."
    return f"{error} {suffix}" if error else suffix


# --- retries ---------------------------------------------------------------------------


def max_attempts() -> int:
    return max(0, int(settings.EMAIL_MAX_RETRIES)) + 1


def retry_countdown_seconds(retries: int) -> float:
    """How long the task waits before retry number `retries` + 1.

    EMAIL_RETRY_BACKOFF_SECONDS * 2**retries, capped at 5 minutes, plus up
    to 10% jitter so that the emails that failed together (a mail service outage) do not
    all come back together.
    """
    return backoff_seconds(retries, settings.EMAIL_RETRY_BACKOFF_SECONDS)


def longest_retry_schedule_seconds() -> float:
    """How long a task's whole retry schedule can take (waits plus attempts)."""
    retries = max(0, int(settings.EMAIL_MAX_RETRIES))
    waits = sum(
        backoff_seconds(n, settings.EMAIL_RETRY_BACKOFF_SECONDS, jitter=False)
        for n in range(retries)
    ) * (1 + BACKOFF_JITTER)
    return waits + (retries + 1) * float(settings.EMAIL_ATTEMPT_LEASE_SECONDS)


# --- helpers ---------------------------------------------------------------------------


def _locked_notification(notification_id) -> Notification | None:
    # Cross-tenant by necessity: the task carries only the notification id. The tenant
    # is taken from the row itself, and everything after this is scoped to it.
    try:
        notification_id = uuid.UUID(str(notification_id))
    except ValueError:
        return None
    return Notification.all_tenants.select_for_update().filter(pk=notification_id).first()


def _take_lease(notification_id) -> tuple[str, str] | None:
    """Mark an attempt in flight, so that a duplicate task (a requeue racing the original)
    does not send the same email at the same time. In the cache because the Notification
    has no column for it; it expires by itself if a worker dies mid-send. (key, token),
    or None when another attempt holds it."""
    key = f"leads:notification-email:{notification_id}:attempt"
    token = uuid.uuid4().hex
    try:
        taken = cache.add(key, token, timeout=settings.EMAIL_ATTEMPT_LEASE_SECONDS)
    except Exception as exc:  # cache down: sending matters more than a rare duplicate
        logger.warning(
            "No attempt lease for notification %s (%s); sending anyway.",
            notification_id,
            type(exc).__name__,
        )
        return key, ""
    return (key, token) if taken else None


def _release_lease(key: str, token: str) -> None:
    if not token:
        return
    try:
        if cache.get(key) == token:
            cache.delete(key)
    except Exception:  # it expires by itself
        logger.debug("Could not release %s", key)


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


def _store_outcome(notification: Notification, status: str, *, error: str, sent_at=None):
    """Write the final state of a row that the caller holds locked."""
    notification.email_status = status
    notification.email_last_error = error
    notification.email_sent_at = sent_at
    notification.save(update_fields=_OUTCOME_FIELDS)


def _finish(notification_id, status: str, *, error: str, sent_at=None) -> bool:
    with transaction.atomic():
        notification = _locked_notification(notification_id)
        if notification is None or notification.email_status != EmailStatus.PENDING:
            return False
        _store_outcome(notification, status, error=_clip(error), sent_at=sent_at)
    return True


def _fail(notification: Notification, error: str) -> str:
    mark_notification_email_failed(notification_id=notification.pk, error=error)
    return Delivery.FAILED


def _record_transient_failure(notification_id, error: str) -> None:
    Notification.all_tenants.filter(pk=notification_id, email_status=EmailStatus.PENDING).update(
        email_last_error=_clip(error)
    )


def _log_failure(notification: Notification, error: str) -> None:
    logger.warning(
        FAILURE_LOG_MESSAGE,
        f"{_clip(error)} [notification {notification.pk}, kind={notification.kind}, "
        f"tenantId={notification.tenant_id}]",
    )
