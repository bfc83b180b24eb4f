from zoneinfo import ZoneInfo

from django.conf import settings
from django.urls import reverse

from teams.models import Tenant


def lead_url(lead) -> str:
    """Absolute link to the agent's lead page (used in emails)."""
    return f"{settings.PUBLIC_BASE_URL}{reverse('lead-page', args=[lead.pk])}"


def format_deadline(deadline, tenant: Tenant) -> str:
    local = deadline.astimezone(ZoneInfo(tenant.timezone))
    return f"{local:%Y-%m-%d %H:%M} ({tenant.timezone})"
