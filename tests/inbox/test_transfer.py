"""An agent (or an admin) moves an open conversation to a teammate or to a team."""

import json
from datetime import timedelta

import pytest

from audit.models import ActivityLog
from core.actor import Actor
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from inbox.acceptance import transfer_session
from inbox.models import InboxSession, SessionNotice, SessionNoticeKind, SessionStatus
from outbox.models import OutboundMessage
from teams.models import Membership, Presence, Tenant
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory
from tests.inbox.factories import InboxSessionFactory
from webhooks.services import create_endpoint

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(tenant):
    return TeamFactory(tenant=tenant, name="Support")


@pytest.fixture
def holder(team):
    """The agent who has the session now."""
    return TeamMemberFactory(team=team).membership


@pytest.fixture
def session(tenant, team, holder):
    session = InboxSessionFactory(
        tenant=tenant, team=team, assigned_agent=holder, strategy="round_robin", confirmation=False
    )
    Membership.objects.for_tenant(tenant).filter(pk=holder.pk).update(open_session_count=1)
    return session


def reload(row):
    return type(row).all_tenants.get(pk=row.pk)


def as_person(membership) -> Actor:
    return Actor.for_membership(membership, via="agent_page")


def test_the_agent_hands_it_to_a_chosen_teammate_even_one_who_is_away(tenant, session, holder):
    tenant.session_accept_window_minutes = 5
    tenant.save()
    create_endpoint(tenant=tenant, actor=Actor.system(), url="https://hooks.example.test/t")
    tenant = Tenant.objects.get(pk=tenant.pk)
    colleague = MembershipFactory(tenant=tenant, presence=Presence.AWAY)

    moved = transfer_session(
        tenant=tenant, session_id=session.pk, actor=as_person(holder), to_agent=colleague
    )

    session = reload(session)
    assert session.assigned_agent_id == colleague.pk
    assert session.strategy == "manual"
    assert session.accept_deadline == moved.assigned_at + timedelta(minutes=5)
    assert session.accepted_at is None
    assert (reload(holder).open_session_count, reload(colleague).open_session_count) == (0, 1)
    [notice] = SessionNotice.all_tenants.filter(session=session)
    assert (notice.recipient_id, notice.kind) == (
        colleague.pk,
        SessionNoticeKind.SESSION_TRANSFERRED,
    )
    [row] = ActivityLog.objects.for_tenant(tenant).filter(action="session.transferred")
    assert (row.actor_label, row.via) == (holder.user.email, "agent_page")
    assert row.data["previous_agent_id"] == str(holder.pk)
    assert row.data["agent_id"] == str(colleague.pk)
    [message] = OutboundMessage.all_tenants.filter(channel="webhook", kind="session.assigned")
    data = json.loads(message.payload["body"])["data"]
    assert data["trigger"] == "transfer" and data["previousAgentId"] == str(holder.pk)
    assert data["assignedAgent"]["id"] == str(colleague.pk)


def test_to_a_team_the_engine_picks_anyone_but_the_current_agent(tenant, session, holder):
    other_team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=other_team, membership=holder)
    newcomer = TeamMemberFactory(team=other_team).membership

    for _ in range(3):  # round robin would come back to the holder: it never does
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(holder), to_team=other_team
        )
        session = reload(session)
        assert session.assigned_agent_id == newcomer.pk
        assert session.team_id == other_team.pk
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(newcomer), to_agent=holder
        )
    assert reload(newcomer).open_session_count == 0
    assert reload(holder).open_session_count == 1


def test_a_team_where_nobody_can_take_it_refuses_and_it_stays(tenant, session, holder):
    closed_shop = TeamFactory(tenant=tenant)
    TeamMemberFactory(
        team=closed_shop, membership=MembershipFactory(tenant=tenant, presence=Presence.OFFLINE)
    )

    with pytest.raises(Conflict) as refused:
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(holder), to_team=closed_shop
        )

    assert refused.value.code == "nobody_available" and "all_away" in refused.value.message
    assert reload(session).assigned_agent_id == holder.pk
    assert not ActivityLog.objects.for_tenant(tenant).filter(action="session.transferred").exists()


def test_an_admin_may_move_anyones_session(tenant, session, owner, teammate):
    transfer_session(
        tenant=tenant, session_id=session.pk, actor=as_person(owner), to_agent=teammate
    )

    assert reload(session).assigned_agent_id == teammate.pk


def test_a_teammate_cannot_take_someone_elses_session(tenant, session, teammate):
    with pytest.raises(NotFound):
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(teammate), to_agent=teammate
        )


def test_a_person_of_another_tenant_may_not(tenant, session, outsider, teammate):
    with pytest.raises(Forbidden):
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(outsider), to_agent=teammate
        )
    with pytest.raises(NotFound):  # and the session does not exist in their tenant
        transfer_session(
            tenant=outsider.tenant,
            session_id=session.pk,
            actor=as_person(outsider),
            to_agent=outsider,
        )
    assert reload(session).assigned_agent_id == session.assigned_agent_id


def test_targets_of_another_tenant_are_not_found(tenant, session, holder, outsider):
    with pytest.raises(NotFound) as agent:
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(holder), to_agent=outsider
        )
    with pytest.raises(NotFound) as team:
        transfer_session(
            tenant=tenant,
            session_id=session.pk,
            actor=as_person(holder),
            to_team=TeamFactory(tenant=outsider.tenant),
        )

    assert (agent.value.code, team.value.code) == ("agent_not_found", "team_not_found")


def test_one_target_exactly_and_not_the_current_agent(tenant, session, holder, team, teammate):
    for targets in ({}, {"to_agent": teammate, "to_team": team}):
        with pytest.raises(InvalidInput):
            transfer_session(
                tenant=tenant, session_id=session.pk, actor=as_person(holder), **targets
            )
    with pytest.raises(Conflict):
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(holder), to_agent=holder
        )


def test_a_closed_session_is_not_moved(tenant, session, holder, teammate):
    InboxSession.objects.for_tenant(tenant).filter(pk=session.pk).update(
        status=SessionStatus.CLOSED
    )

    with pytest.raises(NotFound):
        transfer_session(
            tenant=tenant, session_id=session.pk, actor=as_person(holder), to_agent=teammate
        )
