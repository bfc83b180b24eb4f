from django import template

from config.dashboard import may_open_dashboard

register = template.Library()


@register.filter
def may_open_sla_dashboard(request) -> bool:
    """Whether the admin index offers the SLA dashboard to this user."""
    return may_open_dashboard(request)
