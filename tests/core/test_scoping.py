"""A scoped queryset stays scoped however it is narrowed before a write."""

import pytest

from core.scoping import UnscopedQueryError
from teams.models import Team
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def test_a_narrowed_scoped_queryset_still_fills_in_and_insists_on_its_tenant():
    tenant_a, tenant_b = TenantFactory(), TenantFactory()
    narrowed = Team.objects.for_tenant(tenant_a).filter(is_default=False).order_by("name")

    assert narrowed.create(name="Filled in").tenant_id == tenant_a.id
    with pytest.raises(UnscopedQueryError):
        narrowed.create(name="Smuggled", tenant=tenant_b)
    with pytest.raises(UnscopedQueryError):
        narrowed.bulk_create([Team(name="Other", tenant=tenant_b)])

    assert not Team.all_tenants.filter(tenant=tenant_b).exists()
