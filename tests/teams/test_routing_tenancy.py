"""Every pick reads the tenant's own agents, even through a team row that (written
around the model's validation: a bulk import, a raw fix) links an agent of another
tenant into one of this tenant's teams. The team's members are checked by tenant in
each way a pick reads them: round robin, least busy in a small team, and least busy in
a big team (the walk along the tenant's load index)."""

import uuid

import pytest

from teams.models import Membership, Strategy, TeamMember
from teams.routing import picking, route
from tests.factories import AssignmentConfigFactory, MembershipFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("strategy", "scan_max"),
    [(Strategy.ROUND_ROBIN, 500), (Strategy.LEAST_BUSY, 500), (Strategy.LEAST_BUSY, 0)],
    ids=["round-robin", "least-busy-small-team", "least-busy-big-team"],
)
def test_an_agent_of_another_tenant_linked_into_a_team_is_never_picked(
    tenant, outsider, monkeypatch, strategy, scan_max
):
    monkeypatch.setattr(picking, "MEMBER_SCAN_MAX", scan_max)
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=strategy)
    ours = MembershipFactory(tenant=tenant)
    Membership.objects.for_tenant(tenant).filter(pk=ours.pk).update(open_session_count=5)
    # Rows saved without `clean()`: nothing in the database ties the two tenants apart.
    TeamMember.all_tenants.bulk_create(
        [
            TeamMember(tenant=tenant, team=team, membership=ours),
            TeamMember(tenant=tenant, team=team, membership=outsider),
        ]
    )

    picks = {route(tenant=tenant, team=team, work="sessions").agent for _ in range(3)}

    assert picks == {ours}


def test_round_robin_cursors_of_two_tenants_never_mix(tenant, other_tenant):
    """Pools of two tenants have the same key ("sessions:tier:member"): each pick reads
    and moves its own tenant's cursor only. The other tenant's agent sorts last, so a
    cursor moved to it would send this tenant's rotation back to its first agent."""
    first, second = (
        MembershipFactory(tenant=tenant, id=uuid.UUID(f"00000000-0000-4000-8000-00000000000{n}"))
        for n in (1, 2)
    )
    theirs = MembershipFactory(
        tenant=other_tenant, id=uuid.UUID("ffffffff-ffff-4fff-bfff-fffffffffff0")
    )

    def mine():
        return route(tenant=tenant, team=None, work="sessions").agent

    def other():
        return route(tenant=other_tenant, team=None, work="sessions").agent

    picks = [other(), mine(), other(), mine(), mine()]

    assert picks == [theirs, first, theirs, second, first]
