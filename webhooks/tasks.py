"""Celery tasks of the webhooks app: thin wrappers that call services."""

from celery import shared_task

from webhooks.services import disable_failing_endpoints as disable_failing_endpoints_service


@shared_task
def disable_failing_endpoints():
    """Celery beat, hourly: turn off endpoints that have failed for too long."""
    return disable_failing_endpoints_service()
