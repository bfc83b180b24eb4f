"""Celery tasks of the teams app: thin wrappers that call services."""

from celery import shared_task

from teams.services import mark_idle_agents_away as mark_idle_agents_away_service


@shared_task
def mark_idle_agents_away():
    """Celery beat, every minute: agents whose pages went quiet become away."""
    return mark_idle_agents_away_service()
