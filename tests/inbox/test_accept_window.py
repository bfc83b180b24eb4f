"""The accept window: an assigned conversation must be accepted before its deadline, or
the sweep records the miss (once, however many sweeps race) and moves it on by the
engine, never back to anyone who missed it; after N misses it waits unassigned
(`not_accepted`) and the admins are told."""

import datetime
import json
import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import ActivityLog
from core.actor import Actor
from inbox.acceptance import (
    _record_miss_batch,
    accept_deadline_for,
    accept_session,
    sweep_accept_windows,
)
from inbox.models import InboxSession, SessionNotice, SessionNoticeKind
from outbox.models import OutboundMessage
from teams.models import Membership, Presence
from teams.routing import UnassignedReason
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory
from tests.inbox.factories import InboxSessionFactory
from webhooks.services import create_endpoint

T0 = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.UTC)
WINDOW = 10


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def windowed(tenant):
    tenant.session_accept_window_minutes = WINDOW
    tenant.session_accept_max_misses = 3
    tenant.save()
    return tenant


@pytest.fixture
def team(windowed):
    return TeamFactory(tenant=windowed, name="Support")


def agent_in(team, **fields) -> Membership:
    return TeamMemberFactory(
        team=team, membership=MembershipFactory(tenant=team.tenant, **fields)
    ).membership


def waiting_session(team, agent, *, deadline=None) -> InboxSession:
    """A session assigned to `agent` at T0, waiting for them to accept it."""
    session = InboxSessionFactory(
        tenant=team.tenant,
        team=team,
        assigned_agent=agent,
        assigned_at=T0,
        strategy="round_robin",
        accept_deadline=deadline or T0 + timedelta(minutes=WINDOW),
        confirmation=False,
    )
    Membership.objects.for_tenant(team.tenant).filter(pk=agent.pk).update(open_session_count=1)
    return session


def reload(session) -> InboxSession:
    return InboxSession.objects.for_tenant(session.tenant_id).get(pk=session.pk)


def count_of(agent) -> int:
    return Membership.objects.for_tenant(agent.tenant_id).get(pk=agent.pk).open_session_count


def notices(kind, **filters) -> list[SessionNotice]:
    return list(SessionNotice.all_tenants.filter(kind=kind, **filters))


def events_of(kind) -> list[dict]:
    rows = OutboundMessage.all_tenants.filter(channel="webhook", kind=kind).order_by("created_at")
    return [json.loads(row.payload["body"])["data"] for row in rows]


# --- the deadline -----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_deadline_is_the_tenants_window_from_now_or_none_when_off(tenant):
    assert accept_deadline_for(tenant, T0) is None
    tenant.session_accept_window_minutes = 7
    assert accept_deadline_for(tenant, T0) == T0 + timedelta(minutes=7)


# --- accepting --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_agent_accepts_once_and_again_changes_nothing(team, clock):
    agent = agent_in(team)
    session = waiting_session(team, agent)
    create_endpoint(tenant=team.tenant, actor=Actor.system(), url="https://hooks.example.test/a")
    team.tenant.refresh_from_db()  # it has webhooks now
    clock.move_to(T0 + timedelta(minutes=3))

    for _ in range(2):
        accept_session(
            tenant=team.tenant,
            session_id=session.pk,
            agent=agent,
            actor=Actor.for_membership(agent, via="agent_page"),
        )

    session = reload(session)
    assert session.accepted_at == T0 + timedelta(minutes=3)
    assert session.accept_deadline is None
    [row] = ActivityLog.objects.for_tenant(team.tenant).filter(action="session.accepted")
    assert (row.actor_label, row.via, row.data["late"]) == (agent.user.email, "agent_page", False)
    [event] = events_of("session.accepted")
    assert event["sessionId"] == str(session.pk) and event["acceptedAt"] == "2026-11-23T10:03:00Z"


@pytest.mark.django_db
def test_accepting_late_but_before_the_sweep_wins_and_the_sweep_leaves_it(team, clock):
    agent = agent_in(team)
    other = agent_in(team)
    session = waiting_session(team, agent)
    clock.move_to(T0 + timedelta(minutes=WINDOW, seconds=20))

    accept_session(
        tenant=team.tenant, session_id=session.pk, agent=agent, actor=Actor.for_membership(agent)
    )
    counts = sweep_accept_windows()

    session = reload(session)
    assert counts["missed"] == 0
    assert session.assigned_agent_id == agent.pk and session.accept_misses == 0
    assert ActivityLog.objects.for_tenant(team.tenant).get(action="session.accepted").data["late"]
    assert count_of(other) == 0


@pytest.mark.django_db
def test_accepting_after_the_miss_was_recorded_but_before_the_move_keeps_it(team, clock):
    agent = agent_in(team)
    agent_in(team)
    session = waiting_session(team, agent)
    clock.move_to(T0 + timedelta(minutes=WINDOW, seconds=1))
    _record_miss_batch(timezone.now(), 10)  # the sweep's first step only

    accept_session(
        tenant=team.tenant, session_id=session.pk, agent=agent, actor=Actor.for_membership(agent)
    )
    clock.move_to(T0 + timedelta(minutes=WINDOW + 5))
    counts = sweep_accept_windows()

    session = reload(session)
    assert session.assigned_agent_id == agent.pk and session.accepted_at is not None
    assert session.accept_misses == 1  # the miss happened, and stays recorded
    assert counts == {"missed": 0, "reassigned": 0, "unassigned": 0, "not_accepted": 0, "left": 0}


def accept_url(session) -> str:
    return f"/api/v1/sessions/{session.pk}/accept"


@pytest.mark.django_db
def test_the_logged_in_agent_accepts_through_the_api(team, clock):
    agent = agent_in(team)
    session = waiting_session(team, agent)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(agent.user)
    client.get("/accounts/login/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value

    response = client.post(accept_url(session), HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 200
    body = response.json()
    assert body["sessionId"] == str(session.pk)
    assert body["assignedAgentId"] == str(agent.pk)
    assert body["acceptedAt"] == "2026-11-23T10:00:00Z" and body["acceptDeadline"] is None
    row = ActivityLog.objects.for_tenant(team.tenant).get(action="session.accepted")
    assert row.via == "api"
    assert client.post(accept_url(session)).status_code == 403  # no CSRF token


@pytest.mark.django_db
def test_someone_elses_session_cannot_be_accepted(team, owner, outsider, clock):
    agent = agent_in(team)
    session = waiting_session(team, agent)

    for person in (owner, agent_in(team), outsider):
        client = APIClient()
        client.force_login(person.user)
        response = client.post(accept_url(session))
        assert response.status_code == 404, person
        assert response.json()["error"]["code"] == "session_not_found"
    assert APIClient().post(accept_url(session)).status_code == 401
    assert reload(session).accepted_at is None


@pytest.mark.django_db
def test_the_api_key_cannot_accept_for_an_agent(team, tenant_client, clock):
    session = waiting_session(team, agent_in(team))

    assert tenant_client.post(accept_url(session)).status_code == 401


# --- the sweep --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_miss_moves_the_session_to_another_agent_and_tells_everyone(team, owner, clock):
    first = agent_in(team)
    second = agent_in(team, email_on_conversation=True)
    session = waiting_session(team, first)
    create_endpoint(tenant=team.tenant, actor=Actor.system(), url="https://hooks.example.test/a")

    clock.move_to(T0 + timedelta(minutes=WINDOW) - timedelta(seconds=1))
    assert sweep_accept_windows()["missed"] == 0
    clock.move_to(T0 + timedelta(minutes=WINDOW, seconds=5))
    counts = sweep_accept_windows()

    session = reload(session)
    moved_at = T0 + timedelta(minutes=WINDOW, seconds=5)
    assert counts["missed"] == 1 and counts["reassigned"] == 1
    assert session.assigned_agent_id == second.pk
    assert session.assigned_at == moved_at
    assert session.accept_deadline == moved_at + timedelta(minutes=WINDOW)
    assert (session.accept_misses, session.missed_agent_ids) == (1, [str(first.pk)])
    assert (count_of(first), count_of(second)) == (0, 1)

    missed = notices(SessionNoticeKind.ACCEPT_MISSED, session=session)
    assert {n.recipient_id for n in missed} == {first.pk, owner.pk}
    [assigned] = notices(SessionNoticeKind.SESSION_ASSIGNED, session=session)
    assert assigned.recipient_id == second.pk
    assert assigned.email_message is not None  # second opted in to emails
    assert assigned.email_message.target == second.user.email

    log = ActivityLog.objects.for_tenant(team.tenant)
    [miss] = log.filter(action="session.accept_missed")
    assert miss.via == "job:sweep_accept_windows"
    assert miss.data["agent_id"] == str(first.pk) and miss.data["misses"] == 1
    [moved] = log.filter(action="session.assigned")
    assert moved.data["agent_id"] == str(second.pk)
    assert moved.data["previous_agent_id"] == str(first.pk)

    [event] = events_of("session.accept_missed")
    assert event["missedAgentId"] == str(first.pk) and event["misses"] == 1
    [event] = events_of("session.assigned")
    assert event["assignedAgent"]["id"] == str(second.pk)
    assert event["previousAgentId"] == str(first.pk)


@pytest.mark.django_db
def test_it_never_goes_back_to_anyone_who_missed_it(team, clock):
    first, second = agent_in(team), agent_in(team)
    session = waiting_session(team, first)

    clock.move_to(T0 + timedelta(minutes=WINDOW, seconds=1))
    sweep_accept_windows()
    assert reload(session).assigned_agent_id == second.pk
    clock.move_to(T0 + timedelta(minutes=2 * WINDOW, seconds=2))
    counts = sweep_accept_windows()

    session = reload(session)
    assert counts["unassigned"] == 1
    assert session.assigned_agent_id is None
    assert session.unassigned_reason == UnassignedReason.NO_AGENTS  # both excluded
    assert session.missed_agent_ids == [str(first.pk), str(second.pk)]
    assert (count_of(first), count_of(second)) == (0, 0)


@pytest.mark.django_db
def test_after_n_misses_it_waits_unassigned_not_accepted_and_the_admins_are_told(
    team, owner, clock
):
    agents = [agent_in(team) for _ in range(4)]
    session = waiting_session(team, agents[0])
    holders = []

    for miss in range(1, 4):
        clock.move_to(T0 + timedelta(minutes=miss * WINDOW, seconds=miss))
        sweep_accept_windows()
        holders.append(reload(session).assigned_agent_id)

    session = reload(session)
    assert holders[2] is None
    assert len({agents[0].pk, holders[0], holders[1]}) == 3
    assert session.missed_agent_ids == [str(agents[0].pk), str(holders[0]), str(holders[1])]
    assert session.unassigned_reason == UnassignedReason.NOT_ACCEPTED
    assert session.accept_misses == 3
    [told] = notices(SessionNoticeKind.NOT_ACCEPTED, session=session)
    assert told.recipient_id == owner.pk
    assert [count_of(agent) for agent in agents] == [0, 0, 0, 0]
    last = ActivityLog.objects.for_tenant(team.tenant).filter(action="session.unassigned").get()
    assert last.data["reason"] == "not_accepted"

    clock.move_to(T0 + timedelta(hours=2))
    assert sweep_accept_windows()["missed"] == 0  # nothing left to sweep


@pytest.mark.django_db
def test_an_away_agent_is_not_picked_when_the_session_moves_on(team, clock):
    first = agent_in(team)
    agent_in(team, presence=Presence.AWAY)
    session = waiting_session(team, first)

    clock.move_to(T0 + timedelta(minutes=WINDOW, seconds=1))
    sweep_accept_windows()

    session = reload(session)
    assert session.assigned_agent_id is None
    assert session.unassigned_reason == UnassignedReason.ALL_AWAY


@pytest.mark.django_db
def test_without_a_window_nothing_is_swept(tenant, clock):
    team = TeamFactory(tenant=tenant)
    agent = agent_in(team)
    session = InboxSessionFactory(
        tenant=tenant, team=team, assigned_agent=agent, confirmation=False
    )

    clock.move_to(T0 + timedelta(days=1))
    assert sweep_accept_windows()["missed"] == 0
    assert reload(session).assigned_agent_id == agent.pk


@pytest.mark.django_db
def test_a_miss_whose_move_never_ran_is_moved_by_the_next_sweep(team, clock):
    first, second = agent_in(team), agent_in(team)
    session = waiting_session(team, first)
    clock.move_to(T0 + timedelta(minutes=WINDOW, seconds=1))
    _record_miss_batch(timezone.now(), 10)  # the process died after the first step

    clock.move_to(T0 + timedelta(minutes=WINDOW + 2))
    counts = sweep_accept_windows()

    session = reload(session)
    assert counts == {"missed": 0, "reassigned": 1, "unassigned": 0, "not_accepted": 0, "left": 0}
    assert session.assigned_agent_id == second.pk and session.accept_misses == 1
    assert len(notices(SessionNoticeKind.ACCEPT_MISSED, recipient=first)) == 1


@pytest.mark.django_db
def test_the_sweep_costs_the_same_statements_for_one_or_many_misses(
    team, owner, clock, django_assert_max_num_queries
):
    # Without a second agent every session goes unassigned: the moves cost the same.
    first = agent_in(team)
    waiting_session(team, first)
    clock.move_to(T0 + timedelta(minutes=WINDOW, seconds=1))
    from inbox import acceptance

    with django_assert_max_num_queries(20) as one:
        acceptance._record_miss_batch(timezone.now(), 100)
    for _ in range(30):
        waiting_session(team, first)
    with django_assert_max_num_queries(len(one.captured_queries)):
        acceptance._record_miss_batch(timezone.now(), 100)


# --- racing sweeps ----------------------------------------------------------------------


def two_sweeps_at_once(**kwargs) -> list[dict]:
    """Two sweeps started together in threads of their own (own connections); their
    counts. An error in either fails the test."""
    start = threading.Barrier(2)
    results, errors = [], []

    def sweep():
        try:
            start.wait()
            results.append(sweep_accept_windows(**kwargs))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    return results


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweeps_record_each_miss_once_and_move_each_session_once(windowed, owner):
    team = TeamFactory(tenant=windowed)
    missing, *others = [agent_in(team) for _ in range(3)]
    with time_machine.travel(T0, tick=False):
        sessions = [waiting_session(team, missing) for _ in range(40)]
    Membership.objects.for_tenant(windowed).filter(pk=missing.pk).update(open_session_count=40)
    with time_machine.travel(T0 + timedelta(minutes=WINDOW, seconds=1), tick=False):
        results = two_sweeps_at_once(batch_size=7)

    assert sum(result["missed"] for result in results) == 40
    assert sum(result["reassigned"] for result in results) == 40
    log = ActivityLog.objects.for_tenant(windowed)
    assert log.filter(action="session.accept_missed").count() == 40
    assert log.filter(action="session.assigned").count() == 40
    for session in sessions:
        session = reload(session)
        assert (session.accept_misses, session.missed_agent_ids) == (1, [str(missing.pk)])
        assert session.assigned_agent_id in {agent.pk for agent in others}
    assert [count_of(agent) for agent in (missing, *others)] == [0, 20, 20]
    assert len(notices(SessionNoticeKind.ACCEPT_MISSED)) == 80  # the agent and the admin
    assert len(notices(SessionNoticeKind.SESSION_ASSIGNED)) == 40


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweeps_after_n_misses_leave_it_not_accepted_once(windowed, owner):
    team = TeamFactory(tenant=windowed)
    agents = [agent_in(team) for _ in range(5)]
    with time_machine.travel(T0, tick=False):
        session = waiting_session(team, agents[0])

    for miss in range(1, 4):
        with time_machine.travel(T0 + timedelta(minutes=miss * WINDOW, seconds=miss), tick=False):
            two_sweeps_at_once()

    session = reload(session)
    assert session.accept_misses == 3
    assert session.unassigned_reason == UnassignedReason.NOT_ACCEPTED
    assert session.missed_agent_ids[0] == str(agents[0].pk)
    assert len(set(session.missed_agent_ids)) == 3
    assert len(notices(SessionNoticeKind.NOT_ACCEPTED)) == 1
    log = ActivityLog.objects.for_tenant(windowed)
    assert log.filter(action="session.accept_missed").count() == 3
    assert [count_of(agent) for agent in agents] == [0, 0, 0, 0, 0]


# --- every assignment starts the window -------------------------------------------------


def _handover(tenant, contact_id, team=None):
    from inbox.services import handover

    outcome = handover(
        tenant=tenant,
        actor=Actor.system(),
        contact_id=contact_id,
        channel="whatsapp",
        team_id=team.pk if team else None,
        send_message=False,
    )
    return InboxSession.objects.for_tenant(tenant).get(pk=outcome.body["sessionId"])


@pytest.mark.postgres
def test_a_handover_starts_the_window_of_the_agent_it_picks(team, clock):
    agent = agent_in(team)
    session = _handover(team.tenant, "+4915100000001", team)
    assert session.assigned_agent_id == agent.pk
    assert session.accept_deadline == T0 + timedelta(minutes=WINDOW)
    assert session.accepted_at is None


def test_a_handover_without_a_window_sets_no_deadline(tenant, clock):
    team = TeamFactory(tenant=tenant, name="No window")
    agent_in(team)
    session = _handover(tenant, "+4915100000002", team)
    assert session.assigned_agent_id is not None
    assert session.accept_deadline is None


def test_a_person_assigning_it_starts_a_fresh_window(team, owner, clock):
    from inbox.services import assign_session_to

    first, second = agent_in(team), agent_in(team)
    session = waiting_session(team, first, deadline=T0 + timedelta(minutes=1))
    clock.move_to(T0 + timedelta(minutes=3))
    assign_session_to(tenant=team.tenant, session_id=session.pk, agent=second, actor=Actor.system())
    session = reload(session)
    assert session.assigned_agent_id == second.pk
    assert session.accept_deadline == T0 + timedelta(minutes=3 + WINDOW)


def test_the_retry_job_never_gives_it_back_to_anyone_who_missed_it(team, clock):
    from inbox.services import run_session_assignment

    missed = agent_in(team)
    session = InboxSessionFactory(
        tenant=team.tenant,
        team=team,
        unassigned_reason=UnassignedReason.ALL_AWAY,
        missed_agent_ids=[str(missed.pk)],
        confirmation=False,
    )
    run_session_assignment(
        tenant=team.tenant, session_id=session.pk, actor=Actor.system(), trigger="retry"
    )
    assert reload(session).assigned_agent_id is None
    fresh = agent_in(team)
    run_session_assignment(
        tenant=team.tenant, session_id=session.pk, actor=Actor.system(), trigger="retry"
    )
    assert reload(session).assigned_agent_id == fresh.pk


def test_the_retry_sweep_leaves_not_accepted_sessions_alone(team, clock):
    from inbox.services import retry_unassigned_sessions

    agent_in(team)
    session = InboxSessionFactory(
        tenant=team.tenant,
        team=team,
        unassigned_reason=UnassignedReason.NOT_ACCEPTED,
        confirmation=False,
    )
    retry_unassigned_sessions(tenant_id=team.tenant_id)
    assert reload(session).assigned_agent_id is None


def test_a_new_message_never_brings_it_back_to_the_agent_who_missed_it(team, clock):
    missed = agent_in(team)
    session = InboxSessionFactory(
        tenant=team.tenant,
        team=team,
        contact_id="+4915100000090",
        unassigned_reason=UnassignedReason.ALL_AWAY,
        missed_agent_ids=[str(missed.pk)],
        confirmation=False,
    )
    again = _handover(team.tenant, "+4915100000090", team)
    assert again.pk == session.pk
    assert again.assigned_agent_id is None
    fresh = agent_in(team)
    assert _handover(team.tenant, "+4915100000090", team).assigned_agent_id == fresh.pk


def test_a_new_message_leaves_a_not_accepted_session_for_the_admins(team, clock):
    agent_in(team)
    session = InboxSessionFactory(
        tenant=team.tenant,
        team=team,
        contact_id="+4915100000091",
        unassigned_reason=UnassignedReason.NOT_ACCEPTED,
        confirmation=False,
    )
    again = _handover(team.tenant, "+4915100000091", team)
    assert again.pk == session.pk
    assert again.assigned_agent_id is None
    assert again.unassigned_reason == UnassignedReason.NOT_ACCEPTED


def test_assigning_it_to_the_agent_who_has_it_keeps_their_accept(team, clock):
    from inbox.services import assign_session_to

    agent = agent_in(team)
    session = waiting_session(team, agent)
    accept_session(tenant=team.tenant, session_id=session.pk, agent=agent, actor=Actor.system())
    assign_session_to(tenant=team.tenant, session_id=session.pk, agent=agent, actor=Actor.system())
    session = reload(session)
    assert session.accepted_at == T0
    assert session.accept_deadline is None


def test_an_agents_close_does_not_close_a_session_moved_to_someone_else(team, clock):
    from core.errors import NotFound
    from inbox.services import close_session

    first, second = agent_in(team), agent_in(team)
    session = waiting_session(team, second)
    with pytest.raises(NotFound):
        close_session(
            tenant=team.tenant, session_id=session.pk, actor=Actor.system(), assigned_to=first
        )
    assert reload(session).status == "open"


def test_a_tenant_that_turned_its_window_off_has_nothing_swept(team, clock):
    agent = agent_in(team)
    session = waiting_session(team, agent)
    team.tenant.session_accept_window_minutes = None
    team.tenant.save()
    clock.move_to(T0 + timedelta(minutes=WINDOW + 1))
    assert sweep_accept_windows()["missed"] == 0
    assert reload(session).assigned_agent_id == agent.pk
