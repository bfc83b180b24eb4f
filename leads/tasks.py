"""Celery tasks of the leads app: thin wrappers that take ids and call services."""

import logging

from celery import current_app as celery_app
from celery import shared_task
from django.conf import settings

from config.tasks import retry_or_give_up
from core.tasks import enqueue
from leads.emails import (
    TransientEmailError,
    deliver_notification_email,
    mark_notification_email_failed,
    retry_countdown_seconds,
)
from leads.emails import (
    requeue_pending_notification_emails as requeue_pending_notification_emails_service,
)
from leads.services import retry_unassigned_leads as retry_unassigned_leads_service
from leads.services import sweep_sla_breaches


@shared_task
def check_sla():
    """Celery beat, every 30 seconds: record missed claim and contact deadlines."""
    return sweep_sla_breaches()


@shared_task
def retry_unassigned_leads(tenant_id=None):
    """Celery beat, every minute, and when an agent of a tenant is back."""
    return retry_unassigned_leads_service(tenant_id=tenant_id)


# ---------------------------------------------------------------------------------------
# Notification emails; see leads/emails.py
# ---------------------------------------------------------------------------------------

email_logger = logging.getLogger("leads.emails")


@shared_task
def send_notification_emails(notification_ids):
    """Fan out: one `send_notification_email` task per notification, so that each email
    retries on its own and one failure never holds up the others."""
    queued = 0
    for notification_id in notification_ids:
        if celery_app.conf.task_always_eager:
            # Embedded mode and tests: this already runs off the request thread; send one
            # after another here rather than start a thread per email.
            try:
                send_notification_email.apply(args=(str(notification_id),))
            except Exception as exc:  # e.g. Retry surfacing under eager propagation
                email_logger.warning(
                    "Email task for notification %s raised %s; it stays pending for the "
                    "periodic re-enqueue.",
                    notification_id,
                    type(exc).__name__,
                )
                continue
            queued += 1
        elif enqueue(send_notification_email, str(notification_id)):
            queued += 1
    return queued


@shared_task(bind=True, max_retries=settings.EMAIL_MAX_RETRIES)
def send_notification_email(self, notification_id):
    """One attempt per run; transient failures retry with backoff, then give up."""
    try:
        return deliver_notification_email(notification_id=notification_id)
    except TransientEmailError as exc:
        # Settings are read at run time, so a change applies without re-importing. A
        # requeued email keeps its attempts, so those count towards the limit too.
        max_retries = settings.EMAIL_MAX_RETRIES
        final_error = f"{exc} Gave up after {exc.attempts} attempts."
        return retry_or_give_up(
            self,
            exc,
            max_retries=max_retries,
            exhausted=exc.attempts > max_retries,
            countdown=retry_countdown_seconds(self.request.retries),
            give_up=lambda: mark_notification_email_failed(
                notification_id=notification_id, error=final_error
            ),
        )


@shared_task
def requeue_pending_notification_emails():
    """Celery beat, every minute: enqueue again the emails left pending."""
    return requeue_pending_notification_emails_service(
        older_than_seconds=settings.EMAIL_REQUEUE_AFTER_SECONDS
    )
