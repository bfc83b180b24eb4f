from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from teams.models import Tenant


def resolve_tenant(value: str) -> Tenant:
    """A tenant by id or slug, or a CommandError that says which."""
    try:
        return Tenant.objects.get(pk=value)
    except (Tenant.DoesNotExist, ValidationError, ValueError):
        pass
    try:
        return Tenant.objects.get(slug=value)
    except Tenant.DoesNotExist:
        raise CommandError(f"No tenant with id or slug {value!r}.") from None
