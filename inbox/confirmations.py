"""The handover's WhatsApp confirmation message ("Connecting you to an agent...").

The message is a best-effort side effect of an assignment that has already happened.
Its state lives on the session, where an admin can see it:

* the handover service sets ``confirmation_status="pending"``, ``confirmation_text`` and
  ``confirmation_queued_at`` and, on commit, calls `enqueue_confirmation`;
* the task `inbox.tasks.send_handover_confirmation` calls `deliver_confirmation` once per
  attempt: ``confirmation_attempts`` counts the attempts, ``confirmation_started_at`` and
  ``confirmation_finished_at`` are when the latest attempt started and ended,
  ``confirmation_last_error`` says why the latest one failed;
* it ends ``sent`` or ``failed``. A confirmation that could not even be enqueued (broker
  down) or whose task was lost stays ``pending``, and `requeue_stale_confirmations`
  (run every minute by Celery beat) enqueues it again.

Nothing here touches a session's assignment: every write names its fields, all of them
``confirmation_*``. No log line and no stored error contains the CRM API key.
"""

import logging
from datetime import timedelta
from enum import StrEnum

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from audit.services import record_activity
from config.tasks import BACKOFF_JITTER, backoff_seconds
from core.actor import Actor
from core.tasks import enqueue
from inbox.crypto import SecretDecryptionError, decrypt_secret
from inbox.models import ConfirmationStatus, CrmIntegration, InboxSession
from inbox.whatsapp import PermanentSendError, TransientSendError, redact, send_whatsapp_text

logger = logging.getLogger("inbox.confirmations")

# The line operators search for (seed: "Logs to check after a handover").
FAILURE_LOG_MESSAGE = "Handover confirmation message failed (assignment already done): %s"

# Retry backoff of the task (see `retry_countdown_seconds`).
REQUEUE_BATCH_SIZE = 500
LAST_ERROR_LIMIT = 1000

_ATTEMPT_FIELDS = ["confirmation_attempts", "confirmation_started_at", "updated_at"]
_OUTCOME_FIELDS = [
    "confirmation_status",
    "confirmation_last_error",
    "confirmation_finished_at",
    "updated_at",
]


class Delivery(StrEnum):
    """What one call of `deliver_confirmation` did."""

    SENT = "sent"
    FAILED = "failed"
    NOT_FOUND = "not_found"
    NOT_PENDING = "not_pending"  # already sent, failed or skipped: nothing to do
    IN_PROGRESS = "in_progress"  # another attempt holds the lease (a duplicate enqueue)


def enqueue_confirmation(session_id) -> bool:
    """Queue the confirmation task for a session already marked pending.

    Called on commit of the handover. When the broker cannot take the task, the row stays
    pending for the periodic re-enqueue, and this returns False instead of raising: the
    handover itself has succeeded.
    """
    from inbox.tasks import send_handover_confirmation  # inbox.tasks imports this module

    queued = enqueue(send_handover_confirmation, str(session_id))
    if not queued:
        logger.warning(
            "Handover confirmation for session %s stays pending; the periodic re-enqueue "
            "will retry it.",
            session_id,
        )
    return queued


def deliver_confirmation(*, session_id, attempt_number: int) -> str:
    """Make one attempt to send a session's pending confirmation; a `Delivery` value.

    Raises `TransientSendError` (after recording it) when the CRM could not be reached or
    answered 429/5xx, so that the task retries. Every other outcome is final and stored.
    """
    # 1. Claim the attempt, in a short transaction of its own.
    with transaction.atomic():
        session = _locked_session(session_id)
        if session is None:
            return Delivery.NOT_FOUND
        if session.confirmation_status != ConfirmationStatus.PENDING:
            return Delivery.NOT_PENDING
        now = timezone.now()
        if _attempt_in_flight(session, now=now):
            return Delivery.IN_PROGRESS
        session.confirmation_attempts += 1
        session.confirmation_started_at = now
        session.save(update_fields=_ATTEMPT_FIELDS)

    # 2. The tenant's CRM integration must be complete; a retry would not fix it.
    integration, problem = _sending_integration(session)
    if problem is None and not session.confirmation_text.strip():
        problem = "The session has no confirmation text to send."
    if problem is not None:
        mark_confirmation_failed(session_id=session.pk, error=problem)
        return Delivery.FAILED
    try:
        api_key = decrypt_secret(integration.api_key_encrypted)
    except SecretDecryptionError:
        mark_confirmation_failed(
            session_id=session.pk,
            error=(
                f'CRM integration "{integration.name}" has an API key that cannot be '
                "decrypted with CRM_ENCRYPTION_KEYS: set the API key again."
            ),
        )
        return Delivery.FAILED

    # 3. The request, outside any transaction: no row stays locked while the CRM answers.
    try:
        answer = send_whatsapp_text(
            api_url=integration.api_url,
            api_key=api_key,
            phone_number_id=integration.phone_number_id,
            to=session.contact_id,
            text=session.confirmation_text,
            timeout=settings.CRM_HTTP_TIMEOUT_SECONDS,
        )
    except PermanentSendError as exc:
        mark_confirmation_failed(session_id=session.pk, error=redact(str(exc), api_key))
        return Delivery.FAILED
    except TransientSendError as exc:
        error = redact(str(exc), api_key)
        _record_transient_failure(session_id=session.pk, error=error)
        logger.warning(
            FAILURE_LOG_MESSAGE,
            f"{error} (attempt {attempt_number}; retried while retries remain) "
            f"[session {session.pk}, tenantId={session.tenant_id}]",
        )
        raise TransientSendError(error) from None

    # 4. Sent.
    with transaction.atomic():
        session = _locked_session(session.pk)
        if session is None:
            return Delivery.NOT_FOUND
        session.confirmation_status = ConfirmationStatus.SENT
        session.confirmation_last_error = ""
        session.confirmation_finished_at = timezone.now()
        session.save(update_fields=_OUTCOME_FIELDS)
        record_activity(
            tenant=session.tenant,
            action="session.confirmation_sent",
            actor=Actor.system(),
            target=session,
            data={
                "integration_id": str(integration.pk),
                "attempts": session.confirmation_attempts,
                "message_id": _message_id(answer),
            },
        )
    return Delivery.SENT


def mark_confirmation_failed(*, session_id, error: str) -> bool:
    """Give up on a pending confirmation: status failed, with `error` for the admin.

    Returns False (and changes nothing) when the confirmation is no longer pending.
    `error` must not contain secrets; it is stored and logged as given (clipped).
    """
    error = _clip(error)
    with transaction.atomic():
        session = _locked_session(session_id)
        if session is None or session.confirmation_status != ConfirmationStatus.PENDING:
            return False
        session.confirmation_status = ConfirmationStatus.FAILED
        session.confirmation_last_error = error
        session.confirmation_finished_at = timezone.now()
        session.save(update_fields=_OUTCOME_FIELDS)
        record_activity(
            tenant=session.tenant,
            action="session.confirmation_failed",
            actor=Actor.system(),
            target=session,
            data={"error": error, "attempts": session.confirmation_attempts},
        )
    logger.warning(
        FAILURE_LOG_MESSAGE, f"{error} [session {session.pk}, tenantId={session.tenant_id}]"
    )
    return True


def requeue_stale_confirmations(*, older_than_seconds: float) -> int:
    """Enqueue again the confirmations left pending; how many were enqueued.

    A confirmation is stale when it was queued more than `older_than_seconds` ago (or
    never) and no attempt started recently, i.e. its task never reached a worker (broker
    down at enqueue time) or was lost. Oldest first, in batches.
    """
    older_than_seconds = max(0.0, float(older_than_seconds))
    now = timezone.now()
    queued_before = now - timedelta(seconds=older_than_seconds)
    # An attempt this recent may still be followed by a retry of the same task.
    quiet_for = max(
        older_than_seconds, settings.CRM_ATTEMPT_LEASE_SECONDS + longest_retry_wait_seconds()
    )
    attempted_before = now - timedelta(seconds=quiet_for)

    # Deliberately cross-tenant: a system sweep over every tenant's pending confirmations.
    # Each one is then delivered for its own session, within that session's tenant.
    stale = (
        InboxSession.all_tenants.filter(confirmation_status=ConfirmationStatus.PENDING)
        .filter(
            Q(confirmation_queued_at__lt=queued_before) | Q(confirmation_queued_at__isnull=True)
        )
        .filter(
            Q(confirmation_started_at__isnull=True)
            | Q(confirmation_started_at__lt=attempted_before)
        )
        .order_by(F("confirmation_queued_at").asc(nulls_first=True), "pk")
    )
    requeued = 0
    while True:
        with transaction.atomic():
            # SKIP LOCKED: two overlapping sweeps never take the same rows.
            batch = list(
                stale.select_for_update(skip_locked=True).values_list("pk", flat=True)[
                    :REQUEUE_BATCH_SIZE
                ]
            )
            if batch:
                # Stamped now, so these rows no longer match `stale` (the loop ends) and
                # the next sweep waits `older_than_seconds` for them again.
                InboxSession.all_tenants.filter(pk__in=batch).update(
                    confirmation_queued_at=timezone.now()
                )
        for session_id in batch:
            if not enqueue_confirmation(session_id):
                # The broker is down: the rest would fail the same way, one timeout each.
                return requeued
            requeued += 1
        if len(batch) < REQUEUE_BATCH_SIZE:
            return requeued


def retry_countdown_seconds(retries: int) -> float:
    """How long the task waits before retry number `retries` + 1.

    Exponential backoff, CRM_RETRY_BACKOFF_SECONDS * 2**retries capped at
    capped at 5 minutes, plus up to 10% jitter so that the retries of many
    confirmations that failed together (a CRM outage) do not hit the CRM together.
    """
    return backoff_seconds(retries, settings.CRM_RETRY_BACKOFF_SECONDS)


def longest_retry_wait_seconds() -> float:
    """The longest `retry_countdown_seconds` with the current settings."""
    last_retry = max(0, settings.CRM_MAX_RETRIES - 1)
    wait = backoff_seconds(last_retry, settings.CRM_RETRY_BACKOFF_SECONDS, jitter=False)
    return wait * (1 + BACKOFF_JITTER)


def _locked_session(session_id) -> InboxSession | None:
    # Cross-tenant by necessity: the task carries only the session id. The tenant is
    # taken from the row itself, and everything after this is scoped to it.
    return InboxSession.all_tenants.select_for_update().filter(pk=session_id).first()


def _attempt_in_flight(session: InboxSession, *, now) -> bool:
    """Whether another attempt started less than the lease ago and has not ended."""
    started = session.confirmation_started_at
    if started is None:
        return False
    finished = session.confirmation_finished_at
    if finished is not None and finished >= started:
        return False
    return started > now - timedelta(seconds=settings.CRM_ATTEMPT_LEASE_SECONDS)


def _sending_integration(session: InboxSession) -> tuple[CrmIntegration | None, str | None]:
    """The tenant's active, complete CRM integration, or why there is none (seed check #4)."""
    integrations = CrmIntegration.objects.for_tenant(session.tenant)
    integration = integrations.filter(is_active=True).first()
    if integration is None:
        integration = integrations.order_by("-updated_at").first()
        if integration is None:
            return None, (
                "No CRM integration is set up for this tenant: add one with apiUrl, "
                "apiKey and config.phoneNumberId, and make it active."
            )
    missing = integration.missing_parts()
    if not missing:
        return integration, None
    problems = []
    if "isActive" in missing:
        problems.append("isActive is false")
    others = [part for part in missing if part != "isActive"]
    if others:
        problems.append("missing " + ", ".join(others))
    return None, f'CRM integration "{integration.name}" cannot send: {"; ".join(problems)}.'


def _record_transient_failure(*, session_id, error: str) -> None:
    with transaction.atomic():
        session = _locked_session(session_id)
        if session is None or session.confirmation_status != ConfirmationStatus.PENDING:
            return
        session.confirmation_last_error = _clip(error)
        # The attempt has ended, so a retry does not wait for the lease to expire.
        session.confirmation_finished_at = timezone.now()
        session.save(
            update_fields=["confirmation_last_error", "confirmation_finished_at", "updated_at"]
        )


def _message_id(answer: dict) -> str:
    """The WhatsApp message id in a Cloud-API-shaped answer, if there is one."""
    messages = answer.get("messages") if isinstance(answer, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return str(messages[0].get("id") or "")
    return ""


def _clip(error: str) -> str:
    error = str(error)
    return error if len(error) <= LAST_ERROR_LIMIT else error[: LAST_ERROR_LIMIT - 1] + "…"
