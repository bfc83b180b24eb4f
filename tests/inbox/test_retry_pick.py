"""Issue #10 for an open session routed again (the periodic retry, an agent back online,
an admin's "route again", the contact handing over again while it waits): on PostgreSQL
every write about the session that got an agent (the session, its activity, the agent's
notice and email, the webhook event, a handover's confirmation and answer to replay; the
counter is the pick's) is attached to the pick, the transaction's last statement, so the
pool's lock is held from it to COMMIT alone. With real threads where it is about
concurrency."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import ActivityLog
from core.actor import Actor
from inbox.models import InboxSession, SessionNotice
from inbox.services import handover, run_session_assignment, session_event
from outbox.models import MessageStatus, OutboundMessage
from teams.models import Membership, Presence, Role, Strategy
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    UserFactory,
)
from tests.webhooks.endpoint_races import (
    add_an_endpoint_after_every_read,
    add_an_endpoint_after_the_first_read,
    bodies_heard,
    endpoint_for,
)
from webhooks import events

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SYSTEM = Actor.system()
JOB = Actor.for_job("retry_unassigned_sessions")


def waiting_session(tenant, contact="+4915112345678", team=None) -> InboxSession:
    """An open session nobody could take when it came in."""
    outcome = handover(
        tenant=tenant,
        actor=SYSTEM,
        contact_id=contact,
        channel="whatsapp",
        team_id=team.pk if team else None,
        send_message=False,
    )
    assert outcome.body["status"] == "unassigned", outcome.body
    return InboxSession.all_tenants.get(pk=outcome.body["sessionId"])


def back_online(agent) -> None:
    Membership.objects.for_tenant(agent.tenant_id).filter(pk=agent.pk).update(
        presence=Presence.ONLINE
    )


def retry(tenant, session, trigger="retry"):
    return run_session_assignment(tenant=tenant, session_id=session.pk, actor=JOB, trigger=trigger)


@pytest.mark.parametrize("webhooks", [False, True])
def test_the_pick_is_the_last_statement_before_commit(tenant, webhooks):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    if webhooks:
        endpoint_for(tenant)
    session = waiting_session(tenant)  # the pools' cursors exist from now on
    back_online(agent)

    with CaptureQueriesContext(connection) as captured:
        retry(tenant, session)

    statements = [q["sql"] for q in captured.captured_queries]
    picks = [n for n, sql in enumerate(statements) if "routing_lock" in sql]
    assert picks == [len(statements) - 2], statements
    assert statements[-1] == "COMMIT"
    assert InboxSession.all_tenants.get(pk=session.pk).assigned_agent_id == agent.pk


@pytest.mark.parametrize("full_name", ['Zoë "Z" O\'Brien \\ 東京 </script> \u2028', ""])
def test_what_the_pick_writes_is_what_a_session_routed_in_python_gets(tenant, full_name):
    agent = MembershipFactory(
        tenant=tenant,
        role=Role.MEMBER,
        presence=Presence.AWAY,
        email_on_conversation=True,
        user=UserFactory(full_name=full_name, email="zoe@example.com"),
    )
    endpoint = endpoint_for(tenant)
    tenant.session_accept_window_minutes = 7
    tenant.save()
    session = waiting_session(tenant)
    back_online(agent)

    routed = retry(tenant, session, trigger="agent_online")

    stored = InboxSession.all_tenants.select_related("assigned_agent__user").get(pk=session.pk)
    assert stored.assigned_agent_id == agent.pk
    assert (stored.unassigned_reason, stored.strategy) == ("", Strategy.ROUND_ROBIN)
    assert stored.accept_deadline - stored.assigned_at == timedelta(minutes=7)
    assert stored.accepted_at is None
    assert stored.updated_at > session.updated_at
    assert stored.last_assignment_attempt["agentId"] == str(agent.pk)
    assert stored.last_assignment_attempt["outcome"] == "assigned"
    # The session handed back holds what the statement wrote, the time of the attempt too.
    assert routed.last_assignment_attempt == stored.last_assignment_attempt
    assert (routed.accept_deadline, routed.assigned_agent_id) == (
        stored.accept_deadline,
        agent.pk,
    )
    agent.refresh_from_db()
    assert agent.open_session_count == 1

    activity = ActivityLog.all_tenants.get(action="session.assigned", target_id=str(session.pk))
    assert activity.data == {
        "agent_id": str(agent.pk),
        "agent_email": "zoe@example.com",
        "strategy": Strategy.ROUND_ROBIN,
        "tier": "member",
        "team_id": None,
        "trigger": "agent_online",
    }
    assert activity.actor_label == JOB.label

    notice = SessionNotice.all_tenants.get(session=session)
    assert notice.recipient_id == agent.pk
    assert (notice.email_message.channel, notice.email_message.target) == (
        "email",
        "zoe@example.com",
    )

    (body,) = bodies_heard(endpoint, events.SESSION_ASSIGNED)
    assert body["data"]["assignedAgent"] == {
        "id": str(agent.pk),
        "name": full_name or "zoe@example.com",
        "email": "zoe@example.com",
    }
    expected = session_event(stored, events.SESSION_ASSIGNED, tier="member").data
    assert body["data"] == json.loads(json.dumps(expected))


def test_an_agent_who_wants_no_emails_gets_the_notice_alone(tenant):
    agent = MembershipFactory(
        tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY, email_on_conversation=False
    )
    session = waiting_session(tenant)
    back_online(agent)

    retry(tenant, session)

    notice = SessionNotice.all_tenants.get(session=session)
    assert (notice.recipient_id, notice.email_message_id) == (agent.pk, None)
    assert not OutboundMessage.all_tenants.filter(channel="email").exists()


def test_an_agent_who_missed_the_accept_window_is_not_picked_again(tenant):
    missed, other = (
        MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY) for _ in range(2)
    )
    session = waiting_session(tenant)
    InboxSession.all_tenants.filter(pk=session.pk).update(missed_agent_ids=[str(missed.pk)])
    back_online(missed)
    back_online(other)

    for _ in range(2):  # round robin would come to `missed` within two
        routed = retry(tenant, InboxSession.all_tenants.get(pk=session.pk))
        assert routed.assigned_agent_id == other.pk
        InboxSession.all_tenants.filter(pk=session.pk).update(assigned_agent=None)
        Membership.objects.for_tenant(tenant).filter(pk=other.pk).update(open_session_count=0)


def test_an_endpoint_added_between_the_read_and_the_pick_hears_the_session(tenant, monkeypatch):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    session = waiting_session(tenant)
    back_online(agent)
    added = add_an_endpoint_after_the_first_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )

    retry(tenant, session)

    assert len(bodies_heard(added[0], events.SESSION_ASSIGNED)) == 1
    agent.refresh_from_db()
    assert agent.open_session_count == 1  # counted once: the refused pick wrote nothing


def test_endpoints_that_keep_changing_still_hear_the_session(tenant, monkeypatch):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    session = waiting_session(tenant)
    back_online(agent)
    added = add_an_endpoint_after_every_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )

    retry(tenant, session)

    assert InboxSession.all_tenants.get(pk=session.pk).assigned_agent_id == agent.pk
    assert len(added) == events.ENDPOINT_READS
    for endpoint in added:
        assert len(bodies_heard(endpoint, events.SESSION_ASSIGNED)) == 1
    agent.refresh_from_db()
    assert agent.open_session_count == 1


@pytest.mark.parametrize("strategy", [Strategy.ROUND_ROBIN, Strategy.LEAST_BUSY])
def test_sixteen_workers_route_waiting_sessions_evenly_and_every_counter_is_right(tenant, strategy):
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=strategy)
    agents = [
        MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY) for _ in range(5)
    ]
    for agent in agents:
        TeamMemberFactory(tenant=tenant, team=team, membership=agent)
    sessions = [waiting_session(tenant, f"+49151{n:07d}", team) for n in range(80)]
    for agent in agents:
        back_online(agent)

    def route_again(session) -> bool:
        try:
            routed = retry(tenant, session)
            return routed is not None and routed.assigned_agent_id is not None
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        routed = list(pool.map(route_again, sessions))

    assert routed == [True] * 80
    per_agent = Counter(
        InboxSession.all_tenants.filter(tenant=tenant).values_list("assigned_agent_id", flat=True)
    )
    assert sorted(per_agent.values()) == [16] * 5
    for agent in Membership.objects.for_tenant(tenant).filter(pk__in=[a.pk for a in agents]):
        assert agent.open_session_count == per_agent[agent.pk]
    assert SessionNotice.all_tenants.filter(session__tenant=tenant).count() == 80


# --- the contact hands over again while its session waits ------------------------------

HANDOVER = "/api/v1/handover"


def hand_over_again(client, contact="+4915112345678", headers=None, **body):
    return client.post(HANDOVER, {"contactId": contact, **body}, format="json", **(headers or {}))


def confirmation_sent(session) -> None:
    """The session's confirmation reached the contact a moment ago."""
    OutboundMessage.all_tenants.filter(pk=session.confirmation_message_id).update(
        status=MessageStatus.SENT, finished_at=timezone.now()
    )


@pytest.mark.parametrize("more", ["nothing", "webhooks", "idempotency key"])
def test_a_handover_that_routes_the_waiting_session_ends_with_the_pick(tenant, tenant_client, more):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    if more == "webhooks":
        endpoint_for(tenant)
    headers = {"HTTP_IDEMPOTENCY_KEY": "again-1"} if more == "idempotency key" else {}
    session = waiting_session(tenant)
    back_online(agent)

    with CaptureQueriesContext(connection) as captured:
        response = hand_over_again(tenant_client, sendHandoverMessage=False, headers=headers)

    assert response.status_code == 200, response.content
    assert response.json()["assignedAgent"]["id"] == str(agent.pk)
    statements = [q["sql"] for q in captured.captured_queries]
    picks = [n for n, sql in enumerate(statements) if "routing_lock" in sql]
    assert picks[-1] == len(statements) - 2, statements
    assert statements[-1] == "COMMIT"
    assert InboxSession.all_tenants.get(pk=session.pk).assigned_agent_id == agent.pk


@pytest.mark.parametrize("full_name", ['Zoë "Z" O\'Brien \\ 東京 </script> \u2028', ""])
def test_what_the_pick_writes_for_a_waiting_session_is_what_the_answer_says(
    tenant, tenant_client, full_name
):
    agent = MembershipFactory(
        tenant=tenant,
        role=Role.MEMBER,
        presence=Presence.AWAY,
        user=UserFactory(full_name=full_name, email="zoe@example.com"),
    )
    endpoint = endpoint_for(tenant)
    tenant.confirmation_quiet_period_seconds = 3600
    tenant.save()
    session = InboxSession.all_tenants.get(pk=hand_over_again(tenant_client).json()["sessionId"])
    confirmation_sent(session)  # recent, but the contact is to hear of the new agent
    back_online(agent)
    headers = {"HTTP_IDEMPOTENCY_KEY": "again-2"}

    response = hand_over_again(
        tenant_client, name="Jane Roe", context={"topic": "billing"}, headers=headers
    )

    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["assignedAgent"] == {
        "id": str(agent.pk),
        "name": full_name or "zoe@example.com",
        "email": "zoe@example.com",
    }
    assert (answer["sessionCreated"], answer["confirmationMessage"]) == (False, "queued")
    stored = InboxSession.all_tenants.select_related("assigned_agent__user").get(pk=session.pk)
    assert (stored.contact_name, stored.context) == ("Jane Roe", {"topic": "billing"})
    assert stored.assigned_agent_id == agent.pk
    assert stored.confirmation_message_id not in (None, session.confirmation_message_id)
    assert stored.confirmation_message.status == MessageStatus.PENDING
    assert stored.last_assignment_attempt["agentId"] == str(agent.pk)
    agent.refresh_from_db()
    assert agent.open_session_count == 1
    activity = ActivityLog.all_tenants.get(action="session.assigned", target_id=str(session.pk))
    assert activity.data["agent_email"] == "zoe@example.com"
    assert SessionNotice.all_tenants.get(session=session).recipient_id == agent.pk

    (body,) = bodies_heard(endpoint, events.SESSION_ASSIGNED)
    expected = session_event(stored, events.SESSION_ASSIGNED, tier="member").data
    assert body["data"] == json.loads(json.dumps(expected))
    assert body["data"]["assignedAgent"] == answer["assignedAgent"]
    replay = hand_over_again(
        tenant_client, name="Jane Roe", context={"topic": "billing"}, headers=headers
    )
    assert replay["Idempotent-Replayed"] == "true"
    assert (replay.status_code, replay.json()) == (200, answer)


def test_with_nobody_back_a_recent_confirmation_is_not_sent_again(tenant, tenant_client):
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.OFFLINE)
    tenant.confirmation_quiet_period_seconds = 3600
    tenant.save()
    session = InboxSession.all_tenants.get(pk=hand_over_again(tenant_client).json()["sessionId"])
    confirmation_sent(session)

    answer = hand_over_again(tenant_client).json()

    assert (answer["status"], answer["unassignedReason"]) == ("unassigned", "all_away")
    assert answer["confirmationSkippedReason"] == "recently_sent"
    stored = InboxSession.all_tenants.get(pk=session.pk)
    assert stored.confirmation_message_id == session.confirmation_message_id
    assert not SessionNotice.all_tenants.exists()


@pytest.mark.parametrize("strategy", [Strategy.ROUND_ROBIN, Strategy.LEAST_BUSY])
def test_sixteen_contacts_handing_over_again_get_agents_evenly(tenant, api_key, strategy):
    AssignmentConfigFactory(tenant=tenant, strategy=strategy)
    agents = [
        MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY) for _ in range(5)
    ]
    contacts = [f"+49151{n:07d}" for n in range(80)]
    for contact in contacts:
        waiting_session(tenant, contact)
    for agent in agents:
        back_online(agent)

    def again(contact) -> int:
        client = APIClient()
        client.credentials(HTTP_X_API_KEY=api_key[1])
        try:
            return hand_over_again(client, contact, sendHandoverMessage=False).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(again, contacts))

    assert statuses == [200] * 80
    per_agent = Counter(
        InboxSession.all_tenants.filter(tenant=tenant).values_list("assigned_agent_id", flat=True)
    )
    assert sorted(per_agent.values()) == [16] * 5
    for agent in Membership.objects.for_tenant(tenant).filter(pk__in=[a.pk for a in agents]):
        assert agent.open_session_count == per_agent[agent.pk]
