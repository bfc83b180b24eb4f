"""Celery tasks of the inbox app: thin wrappers that take ids and call services."""

from celery import shared_task

from inbox.acceptance import sweep_accept_windows as sweep_accept_windows_service
from inbox.services import purge_expired_idempotency_keys
from inbox.services import retry_unassigned_sessions as retry_unassigned_sessions_service


@shared_task
def retry_unassigned_sessions(tenant_id=None):
    """Celery beat, every minute (all tenants), and when an agent of a tenant is back."""
    return retry_unassigned_sessions_service(tenant_id=tenant_id)


@shared_task
def purge_idempotency_keys():
    """Celery beat, hourly: Idempotency-Keys are only honoured for 24 hours."""
    return purge_expired_idempotency_keys()


@shared_task
def sweep_accept_windows():
    """Celery beat, every 15 s: conversations not accepted in time move on."""
    return sweep_accept_windows_service()
