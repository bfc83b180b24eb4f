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


def _span(seconds: int) -> str:
    """A duration as people say it at a glance: "45 s", "4 min", "1 h 5 min", "2 d 3 h"."""
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def time_to_deadline(deadline, now) -> str:
    """ "4 min left" before the deadline, "3 min late" after it (the admin's lists and
    pages say it the same way)."""
    seconds = int((deadline - now).total_seconds())
    if seconds >= 0:
        return f"{_span(seconds)} left"
    return f"{_span(-seconds)} late"
