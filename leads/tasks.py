"""Celery tasks of the leads app: thin wrappers that take ids and call services."""

from celery import shared_task

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
