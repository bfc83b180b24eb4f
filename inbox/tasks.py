"""Celery tasks of the inbox app: thin wrappers that take ids and call services."""

from celery import shared_task
from django.conf import settings

from config.tasks import retry_or_give_up
from inbox.confirmations import (
    deliver_confirmation,
    mark_confirmation_failed,
    requeue_stale_confirmations,
    retry_countdown_seconds,
)
from inbox.services import purge_expired_idempotency_keys
from inbox.services import retry_unassigned_sessions as retry_unassigned_sessions_service
from inbox.whatsapp import TransientSendError

# ---------------------------------------------------------------------------------------
# Handover confirmation message (WhatsApp via the tenant's CRM); see inbox/confirmations.py
# ---------------------------------------------------------------------------------------


@shared_task(bind=True, max_retries=settings.CRM_MAX_RETRIES)
def send_handover_confirmation(self, session_id):
    """One attempt per run; transient failures retry with backoff, then give up."""
    try:
        return deliver_confirmation(session_id=session_id, attempt_number=self.request.retries + 1)
    except TransientSendError as exc:
        # Settings are read at run time, so a change applies without re-importing.
        final_error = f"{exc} Gave up after {self.request.retries + 1} attempts."
        return retry_or_give_up(
            self,
            exc,
            max_retries=settings.CRM_MAX_RETRIES,
            countdown=retry_countdown_seconds(self.request.retries),
            give_up=lambda: mark_confirmation_failed(session_id=session_id, error=final_error),
        )


@shared_task
def requeue_pending_confirmations():
    """Celery beat, every minute: enqueue again the confirmations left pending."""
    return requeue_stale_confirmations(older_than_seconds=settings.CRM_REQUEUE_AFTER_SECONDS)


# --- end of handover confirmation tasks ------------------------------------------------


# ---------------------------------------------------------------------------------------
# Routing sessions nobody could take
# ---------------------------------------------------------------------------------------


@shared_task
def retry_unassigned_sessions(tenant_id=None):
    """Celery beat, every minute (all tenants), and when an agent of a tenant is back."""
    return retry_unassigned_sessions_service(tenant_id=tenant_id)


@shared_task
def purge_idempotency_keys():
    """Celery beat, hourly: Idempotency-Keys are only honoured for 24 hours."""
    return purge_expired_idempotency_keys()
