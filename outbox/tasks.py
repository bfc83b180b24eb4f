"""Celery tasks of the outbox: housekeeping only (delivery is `manage.py outbox_worker`)."""

from celery import shared_task
from django.conf import settings

from outbox.services import purge_finished_messages


@shared_task
def purge_old_messages():
    """Celery beat, hourly: forget finished messages older than OUTBOX_RETENTION_DAYS."""
    return purge_finished_messages(older_than_days=settings.OUTBOX_RETENTION_DAYS)
