"""Webhook events, from the door a person (or a job) uses to the outbox message queued for
a tenant's endpoint.

Every event type is driven through its real doors: the API with the tenant key, the
agent's API and pages, the Django admin through the test client, and the periodic jobs
(the Celery tasks, run eagerly). What is checked is what a receiver gets: one `webhook`
outbox message per endpoint, whose body is `{"type", "timestamp", "data"}` with the ids,
the state and the event's own fields. Then: subscriptions, inactive endpoints, tenants
kept apart, ordering (one object's events reach an endpoint in order, checked against a
local receiver that fails), `message.failed`, and tenants without endpoints.
"""

import json
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient
from werkzeug import Response

from core.actor import Actor
from inbox import tasks as inbox_tasks
from inbox.models import InboxSession
from leads import tasks as leads_tasks
from leads.models import Lead, Notification
from outbox.models import MessageStatus, OutboundMessage
from teams import api_key_cache
from teams.models import Role, Strategy
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
)
from tests.webhooks.endpoint_races import (
    add_an_endpoint_after_every_read,
    add_an_endpoint_after_the_first_read,
)
from webhooks import events
from webhooks.models import WebhookEndpoint
from webhooks.schema import EXAMPLE_DATA
from webhooks.services import create_endpoint, delete_endpoint, update_endpoint

pytestmark = pytest.mark.django_db

HANDOVER = "/api/v1/handover"
LEADS = "/api/v1/leads"
HOOK_URL = "https://hooks.example.com/in"
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SYSTEM = Actor.system()


# --- helpers ---------------------------------------------------------------------------


def endpoint_for(tenant, events_wanted=None, url=HOOK_URL) -> WebhookEndpoint:
    endpoint, _secret = create_endpoint(
        tenant=tenant, actor=SYSTEM, url=url, events=events_wanted, description="test"
    )
    return endpoint


def messages_for(endpoint, event_type=None) -> list[OutboundMessage]:
    """The webhook messages queued for `endpoint` (of `event_type`), oldest first."""
    rows = OutboundMessage.all_tenants.filter(channel="webhook").order_by("created_at")
    found = [m for m in rows if m.payload.get("endpoint_id") == str(endpoint.pk)]
    if event_type is not None:
        found = [m for m in found if m.kind == event_type]
    return found


def kinds(endpoint) -> list[str]:
    return [m.kind for m in messages_for(endpoint)]


def body_of(message) -> dict:
    return json.loads(message.payload["body"])


@contextmanager
def door():
    """The moments before and after a door was used: an event's timestamp lies between."""
    span = {"start": timezone.now()}
    yield span
    span["end"] = timezone.now()


def the_event(
    endpoint, event_type, span=None, status=MessageStatus.PENDING
) -> tuple[OutboundMessage, dict]:
    """The one `event_type` message queued for `endpoint`, its envelope checked; (message,
    the body's data)."""
    found = messages_for(endpoint, event_type)
    assert len(found) == 1, f"one {event_type} expected; the endpoint got {kinds(endpoint)}"
    message = found[0]
    body = body_of(message)
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == message.kind == message.payload["type"] == event_type
    assert message.tenant_id == endpoint.tenant_id
    assert message.target == endpoint.url
    assert message.status == status
    assert message.payload["webhook_id"].startswith("msg_")
    assert message.idempotency_key == message.payload["webhook_id"]
    stamp = datetime.fromisoformat(body["timestamp"])
    assert stamp.utcoffset() is not None, "an ISO timestamp with its offset"
    if span is not None:
        assert span["start"] <= stamp <= span["end"]
    assert set(body["data"]) == documented_fields(event_type, body["data"])
    return message, body["data"]


def documented_fields(event_type, data) -> set[str]:
    """The data fields the README and the OpenAPI examples promise for `event_type`."""
    fields = set(EXAMPLE_DATA[event_type])
    if event_type == events.SESSION_ASSIGNED and "previousAgentId" in data:
        fields = fields - {"tier"} | {"previousAgentId"}  # a person assigned it
    if event_type == events.MESSAGE_FAILED and "notificationId" in data:
        fields = fields - {"sessionId"} | {"notificationId"}  # an email
    return fields


def admin_client(membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def agent_client(membership) -> APIClient:
    client = APIClient()
    client.force_login(membership.user)
    return client


def handover(client, contact="+4915100000001", **fields) -> dict:
    response = client.post(
        HANDOVER, {"contactId": contact, "sendHandoverMessage": False, **fields}, format="json"
    )
    assert response.status_code in (200, 201), response.content
    return response.json()


def new_lead(client, agent=None, **fields) -> dict:
    body = {"name": "Jane Roe", "phone": "+4915112345678", "source": "website", **fields}
    if agent is not None:
        body["assigned_agent_id"] = str(agent.pk)
    response = client.post(LEADS, body, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def agent_of(data) -> str | None:
    """The assigned agent's id in session data (assignedAgent) or lead data."""
    agent = data.get("assignedAgent", data.get("assigned_agent"))
    return agent["id"] if agent else None


def iso(value) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def check_session_data(data, *, session, status, agent, session_status="open"):
    assert data["sessionId"] == str(session.pk)
    assert data["contactId"] == session.contact_id
    assert data["channel"] == session.channel
    assert data["status"] == status
    assert data["sessionStatus"] == session_status
    assert data["teamId"] == (str(session.team_id) if session.team_id else None)
    assert data["strategy"] == (session.strategy or None)
    assert data["unassignedReason"] == (session.unassigned_reason or None)
    if agent is None:
        assert data["assignedAgent"] is None
    else:
        assert data["assignedAgent"] == {
            "id": str(agent.pk),
            "name": agent.display_name,
            "email": agent.user.email,
        }
    if session_status == "open":
        assert data["closedAt"] is None


def check_lead_data(data, *, lead_id, status, agent):
    """The lead as the leads API shows it."""
    lead = Lead.all_tenants.select_related("assigned_agent__user").get(pk=lead_id)
    assert data["id"] == str(lead.pk)
    assert data["name"] == lead.name
    assert data["phone"] == lead.phone
    assert data["status"] == status == lead.status
    assert data["url"].endswith(f"/leads/{lead.pk}/")
    assert agent_of(data) == (str(agent.pk) if agent else None)
    if agent is not None:
        assert data["assigned_agent"]["email"] == agent.user.email
    for field in (
        "assigned_at",
        "claim_deadline",
        "claimed_at",
        "contact_deadline",
        "contacted_at",
        "claim_sla_breached_at",
        "contact_sla_breached_at",
        "reassigned_at",
    ):
        assert iso(data[field]) == getattr(lead, field), field
    assert data["reassignment_count"] == lead.reassignment_count
    return lead


def session_row(session_id) -> InboxSession:
    return InboxSession.all_tenants.select_related("assigned_agent__user").get(pk=session_id)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def clock(time_machine):
    """Time stands still at START until a test moves it (windows are 5 minutes)."""
    time_machine.move_to(START, tick=False)
    return time_machine


@pytest.fixture
def hook(tenant):
    """An endpoint of `tenant` that wants every event."""
    return endpoint_for(tenant)


@pytest.fixture
def team(tenant):
    return TeamFactory(tenant=tenant, name="Sales")


@pytest.fixture
def team_agent(team, teammate):
    """`teammate`, the one member of `team`."""
    TeamMemberFactory(team=team, membership=teammate)
    return teammate


@pytest.fixture
def receiver(httpserver):
    """A local webhook receiver: `received` holds every request body (decoded), and
    `answers` the statuses of the next answers (then 200)."""

    class Receiver:
        received: list[dict] = []
        answers: list[int] = []
        url = httpserver.url_for("/hooks")

    recorder = Receiver()
    recorder.received, recorder.answers = [], []

    def handler(request):
        recorder.received.append(json.loads(request.get_data(as_text=True)))
        status = recorder.answers.pop(0) if recorder.answers else 200
        return Response("ok" if status < 300 else "no", status=status)

    httpserver.expect_request("/hooks", method="POST").respond_with_handler(handler)
    return recorder


# --- session.created -------------------------------------------------------------------


def test_session_created_by_a_handover(tenant_client, hook, team, team_agent):
    with door() as span:
        answer = handover(tenant_client, "+4915100000001", teamId=str(team.pk), name="Jane")

    _message, data = the_event(hook, events.SESSION_CREATED, span)
    session = session_row(answer["sessionId"])
    assert data["sessionCreated"] is True
    check_session_data(data, session=session, status="assigned", agent=team_agent)
    assert data["confirmationMessage"] == "skipped"
    # The session as the handover answer shows it (why this handover sent no confirmation
    # is the answer's own, not the session's).
    answer.pop("confirmationSkippedReason")
    assert {k: v for k, v in data.items() if k in answer} == answer, "the handover answer"

    # The same contact again reuses the open session: no second session.created.
    handover(tenant_client, "+4915100000001", teamId=str(team.pk))
    assert len(messages_for(hook, events.SESSION_CREATED)) == 1


# --- session.assigned: handover, retry job, admin "Run assignment again", "Assign to…" --


def _assigned_by_handover(ctx):
    TeamMemberFactory(team=ctx["team"], membership=ctx["teammate"])
    with door() as span:
        answer = handover(ctx["client"], teamId=str(ctx["team"].pk))
    return answer["sessionId"], span, ctx["teammate"], None


def _waiting_session(ctx) -> str:
    """A session of the empty team, unassigned; then `teammate` joins the team."""
    answer = handover(ctx["client"], teamId=str(ctx["team"].pk))
    assert answer["status"] == "unassigned"
    TeamMemberFactory(team=ctx["team"], membership=ctx["teammate"])
    return answer["sessionId"]


def _assigned_by_retry_job(ctx):
    session_id = _waiting_session(ctx)
    with door() as span:
        summary = inbox_tasks.retry_unassigned_sessions.delay().get()
    assert summary["assigned"] == 1
    return session_id, span, ctx["teammate"], None


def _assigned_by_admin_run_again(ctx):
    session_id = _waiting_session(ctx)
    with door() as span:
        response = admin_client(ctx["owner"]).post(
            "/admin/inbox/inboxsession/",
            {"action": "run_assignment_again", ACTION_CHECKBOX_NAME: [session_id]},
            follow=True,
        )
    assert "Assigned 1" in response.text
    return session_id, span, ctx["teammate"], None


def _assigned_by_admin_assign_to(ctx):
    answer = handover(ctx["client"], teamId=str(ctx["team"].pk))
    TeamMemberFactory(team=ctx["team"], membership=ctx["teammate"])
    # First to teammate by "Assign to…" (no previous agent) ...
    admin = admin_client(ctx["owner"])
    for agent in (ctx["teammate"], ctx["other_agent"]):
        with door() as span:
            response = admin.post(
                "/admin/inbox/inboxsession/",
                {
                    "action": "assign_to",
                    ACTION_CHECKBOX_NAME: [answer["sessionId"]],
                    "agent": str(agent.pk),
                    "apply": "Assign",
                },
            )
        assert response.status_code == 302, response.content
    # ... then moved to other_agent: the event the test looks at says who had it before.
    return answer["sessionId"], span, ctx["other_agent"], ctx["teammate"]


@pytest.mark.parametrize(
    "assign",
    [
        _assigned_by_handover,
        _assigned_by_retry_job,
        _assigned_by_admin_run_again,
        _assigned_by_admin_assign_to,
    ],
    ids=["handover", "retry-job", "admin-run-again", "admin-assign-to"],
)
def test_session_assigned(assign, tenant, tenant_client, owner, teammate, team, hook):
    other_agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    ctx = {
        "client": tenant_client,
        "owner": owner,
        "teammate": teammate,
        "other_agent": other_agent,
        "team": team,
    }

    session_id, span, agent, previous = assign(ctx)

    assigned = messages_for(hook, events.SESSION_ASSIGNED)
    message = assigned[-1]
    body = body_of(message)
    assert span["start"] <= datetime.fromisoformat(body["timestamp"]) <= span["end"]
    data = body["data"]
    assert set(data) == documented_fields(events.SESSION_ASSIGNED, data)
    session = session_row(session_id)
    assert session.assigned_agent_id == agent.pk
    check_session_data(data, session=session, status="assigned", agent=agent)
    assert data["sessionCreated"] is False, "only session.created says so"
    if assign is _assigned_by_admin_assign_to:
        assert len(assigned) == 2, "one event per assignment"
        assert data["strategy"] == "manual"
        assert data["previousAgentId"] == str(previous.pk)
        assert body_of(assigned[0])["data"]["previousAgentId"] is None
        assert agent_of(body_of(assigned[0])["data"]) == str(teammate.pk)
    else:
        assert len(assigned) == 1, kinds(hook)
        assert data["tier"] == "team"
        assert data["strategy"] == "round_robin"
        assert "previousAgentId" not in data
    assert message.ordering_key == f"{hook.pk}:{session_id}"


# --- session.unassigned: handover, retry job (reason changed), admin ---------------------


def test_session_unassigned_by_a_handover(tenant_client, hook, team):
    with door() as span:
        answer = handover(tenant_client, teamId=str(team.pk))

    _message, data = the_event(hook, events.SESSION_UNASSIGNED, span)
    session = session_row(answer["sessionId"])
    check_session_data(data, session=session, status="unassigned", agent=None)
    assert data["unassignedReason"] == "no_agents"
    assert kinds(hook) == [events.SESSION_CREATED, events.SESSION_UNASSIGNED]


@pytest.mark.parametrize("how", ["retry-job", "admin-run-again"])
def test_session_unassigned_again_with_a_new_reason(how, tenant, tenant_client, owner, team, hook):
    answer = handover(tenant_client, teamId=str(team.pk))  # no_agents
    away = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence="away")
    TeamMemberFactory(team=team, membership=away)

    with door() as span:
        if how == "retry-job":
            inbox_tasks.retry_unassigned_sessions.delay().get()
        else:
            admin_client(owner).post(
                "/admin/inbox/inboxsession/",
                {"action": "run_assignment_again", ACTION_CHECKBOX_NAME: [answer["sessionId"]]},
            )

    unassigned = messages_for(hook, events.SESSION_UNASSIGNED)
    assert len(unassigned) == 2, kinds(hook)
    data = body_of(unassigned[-1])["data"]
    assert set(data) == documented_fields(events.SESSION_UNASSIGNED, data)
    assert span["start"] <= datetime.fromisoformat(body_of(unassigned[-1])["timestamp"])
    session = session_row(answer["sessionId"])
    check_session_data(data, session=session, status="unassigned", agent=None)
    assert data["unassignedReason"] == "all_away"

    # Routing again with nothing changed announces nothing new.
    inbox_tasks.retry_unassigned_sessions.delay().get()
    assert len(messages_for(hook, events.SESSION_UNASSIGNED)) == 2


# --- session.closed: API, admin ---------------------------------------------------------


@pytest.mark.parametrize("how", ["api", "admin"])
def test_session_closed(how, tenant_client, owner, team, team_agent, hook):
    answer = handover(tenant_client, teamId=str(team.pk))

    with door() as span:
        if how == "api":
            response = tenant_client.post(f"/api/v1/sessions/{answer['sessionId']}/close")
            assert response.status_code == 200, response.content
        else:
            response = admin_client(owner).post(
                "/admin/inbox/inboxsession/",
                {"action": "close_selected", ACTION_CHECKBOX_NAME: [answer["sessionId"]]},
                follow=True,
            )
            assert "Closed 1 session" in response.text

    message, data = the_event(hook, events.SESSION_CLOSED, span)
    session = session_row(answer["sessionId"])
    check_session_data(
        data, session=session, status="assigned", agent=team_agent, session_status="closed"
    )
    assert iso(data["closedAt"]) == session.closed_at is not None
    assert span["start"] <= session.closed_at <= span["end"]
    assert message.ordering_key == f"{hook.pk}:{session.pk}"

    # Closing a closed session changes nothing, and says nothing.
    tenant_client.post(f"/api/v1/sessions/{answer['sessionId']}/close")
    assert len(messages_for(hook, events.SESSION_CLOSED)) == 1


# --- lead.created, lead.assigned ----------------------------------------------------------


def test_lead_created_through_the_api_with_an_agent(tenant_client, teammate, hook):
    with door() as span:
        lead = new_lead(tenant_client, teammate, email="jane@example.test")

    _message, data = the_event(hook, events.LEAD_CREATED, span)
    check_lead_data(data, lead_id=lead["id"], status="new", agent=teammate)
    assert data == lead, "the lead as the API answered it"
    assert data["email"] == "jane@example.test" and data["source"] == "website"
    assert kinds(hook) == [events.LEAD_CREATED, events.LEAD_ASSIGNED]


def test_lead_created_that_nobody_can_take_is_not_assigned(tenant_client, hook):
    with door() as span:
        lead = new_lead(tenant_client)

    _message, data = the_event(hook, events.LEAD_CREATED, span)
    check_lead_data(data, lead_id=lead["id"], status="new", agent=None)
    assert data["unassigned_reason"] == "no_agents"
    assert data["claim_deadline"] is None
    assert kinds(hook) == [events.LEAD_CREATED]


@pytest.mark.parametrize("how", ["api-routed", "api-named-agent", "retry-job"])
def test_lead_assigned(how, tenant, tenant_client, hook):
    if how == "retry-job":
        lead = new_lead(tenant_client)
        assert lead["assigned_agent"] is None
        agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
        with door() as span:
            summary = leads_tasks.retry_unassigned_leads.delay().get()
        assert summary == {"checked": 1, "assigned": 1}
    else:
        agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
        with door() as span:
            lead = new_lead(tenant_client, agent if how == "api-named-agent" else None)

    message, data = the_event(hook, events.LEAD_ASSIGNED, span)
    row = check_lead_data(data, lead_id=lead["id"], status="new", agent=agent)
    assert row.claim_deadline is not None, "the claim window runs from the assignment"
    assert data["unassigned_reason"] == ""
    assert message.ordering_key == f"{hook.pk}:{lead['id']}"


# --- lead.claimed, lead.contacted: the agent's API and the agent's lead page ----------------


def _claim(how, client, lead_id):
    if how == "api":
        response = client.post(f"{LEADS}/{lead_id}/claim")
        assert response.status_code == 200, response.content
    else:
        response = client.post(f"/leads/{lead_id}/claim/")
        assert response.status_code == 302


def _contact(how, client, lead_id):
    if how == "api":
        response = client.post(f"{LEADS}/{lead_id}/contacted")
        assert response.status_code == 200, response.content
    else:
        response = client.post(f"/leads/{lead_id}/contacted/")
        assert response.status_code == 302


@pytest.mark.parametrize("how", ["api", "lead-page"])
def test_lead_claimed(how, tenant_client, teammate, hook):
    lead = new_lead(tenant_client, teammate)
    client = agent_client(teammate)

    with door() as span:
        _claim(how, client, lead["id"])

    _message, data = the_event(hook, events.LEAD_CLAIMED, span)
    row = check_lead_data(data, lead_id=lead["id"], status="claimed", agent=teammate)
    assert span["start"] <= row.claimed_at <= span["end"]
    assert row.contact_deadline is not None and data["claim_deadline"] is None


@pytest.mark.parametrize("how", ["api", "lead-page"])
def test_lead_contacted(how, tenant_client, teammate, hook):
    lead = new_lead(tenant_client, teammate)
    client = agent_client(teammate)
    _claim(how, client, lead["id"])

    with door() as span:
        _contact(how, client, lead["id"])

    _message, data = the_event(hook, events.LEAD_CONTACTED, span)
    row = check_lead_data(data, lead_id=lead["id"], status="contacted", agent=teammate)
    assert span["start"] <= row.contacted_at <= span["end"]
    assert data["contact_deadline"] is None


# --- lead.closed: API, admin ----------------------------------------------------------


@pytest.mark.parametrize("how", ["api", "admin"])
def test_lead_closed(how, tenant_client, owner, teammate, hook):
    lead = new_lead(tenant_client, teammate)

    with door() as span:
        if how == "api":
            response = tenant_client.post(
                f"{LEADS}/{lead['id']}/close", {"outcome": "won"}, format="json"
            )
            assert response.status_code == 200, response.content
        else:
            response = admin_client(owner).post(
                "/admin/leads/lead/",
                {"action": "close_selected", ACTION_CHECKBOX_NAME: [lead["id"]]},
                follow=True,
            )
            assert "Closed 1 lead" in response.text

    _message, data = the_event(hook, events.LEAD_CLOSED, span)
    check_lead_data(data, lead_id=lead["id"], status="closed", agent=teammate)
    assert data["outcome"] == ("won" if how == "api" else "closed in admin")
    assert data["claim_deadline"] is None and data["contact_deadline"] is None


# --- lead.sla_breached: the sweep (Celery beat task) ----------------------------------------


@pytest.mark.parametrize("stage", ["claim", "contact"])
def test_lead_sla_breached(stage, tenant, tenant_client, teammate, hook, clock):
    lead = new_lead(tenant_client, teammate)  # claim by 10:05
    if stage == "contact":
        clock.shift(timedelta(minutes=1))
        _claim("api", agent_client(teammate), lead["id"])  # contact by 10:06
    deadline = Lead.all_tenants.get(pk=lead["id"]).open_deadline
    clock.shift(timedelta(minutes=7))

    assert leads_tasks.check_sla.delay().get() == {
        "claim": int(stage == "claim"),
        "contact": int(stage == "contact"),
    }

    message, data = the_event(hook, events.LEAD_SLA_BREACHED)
    assert datetime.fromisoformat(body_of(message)["timestamp"]) == timezone.now()
    status = "new" if stage == "claim" else "claimed"
    row = check_lead_data(data, lead_id=lead["id"], status=status, agent=teammate)
    assert data["stage"] == stage
    assert iso(data["deadline"]) == deadline
    assert getattr(row, f"{stage}_sla_breached_at") == timezone.now()
    assert message.ordering_key == f"{hook.pk}:{lead['id']}"

    # The next sweep records nothing new and says nothing new.
    clock.shift(timedelta(seconds=30))
    leads_tasks.check_sla.delay().get()
    assert len(messages_for(hook, events.LEAD_SLA_BREACHED)) == 1


# --- lead.reassigned: API, admin button, admin bulk action, automatic on breach -----------


def _reassign_by_api(ctx):
    with door() as span:
        response = ctx["client"].post(
            "/api/v1/reassign-lead",
            {
                "lead_id": ctx["lead_id"],
                "to_agent_id": str(ctx["target"].pk),
                "reason": "unclaimed",
                "notes": "Teammate is out",
                "reassigned_by_id": str(ctx["owner"].pk),
            },
            format="json",
        )
    assert response.status_code == 200, response.content
    return span, "unclaimed", "claim", "Teammate is out", ctx["owner"]


def _reassign_by_admin_button(ctx):
    with door() as span:
        response = admin_client(ctx["owner"]).post(
            f"/admin/leads/lead/{ctx['lead_id']}/reassign/",
            {
                "to_agent": str(ctx["target"].pk),
                "reason": "manual",
                "notes": "Rebalancing",
                "apply": "Reassign",
            },
        )
    assert response.status_code == 302, response.content
    return span, "manual", "manual", "Rebalancing", ctx["owner"]


def _reassign_by_admin_bulk_action(ctx):
    with door() as span:
        response = admin_client(ctx["owner"]).post(
            "/admin/leads/lead/",
            {
                "action": "reassign_selected",
                ACTION_CHECKBOX_NAME: [ctx["lead_id"]],
                "to_agent": str(ctx["target"].pk),
                "reason": "unclaimed",
                "notes": "Bulk move",
                "apply": "Reassign",
            },
        )
    assert response.status_code == 302, response.content
    return span, "unclaimed", "claim", "Bulk move", ctx["owner"]


def _reassign_automatically_on_breach(ctx):
    ctx["tenant"].auto_reassign_on_breach = True
    ctx["tenant"].save(update_fields=["auto_reassign_on_breach"])
    ctx["clock"].shift(timedelta(minutes=6))  # the claim window (5 minutes) ran out
    with door() as span:
        assert leads_tasks.check_sla.delay().get() == {"claim": 1, "contact": 0}
    assert len(messages_for(ctx["hook"], events.LEAD_SLA_BREACHED)) == 1
    return span, "unclaimed", "claim", "Automatic: claim window missed.", None


@pytest.mark.parametrize(
    "reassign",
    [
        _reassign_by_api,
        _reassign_by_admin_button,
        _reassign_by_admin_bulk_action,
        _reassign_automatically_on_breach,
    ],
    ids=["api", "admin-button", "admin-bulk-action", "auto-on-breach"],
)
def test_lead_reassigned(reassign, tenant, tenant_client, owner, teammate, hook, clock):
    target = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = new_lead(tenant_client, teammate)
    ctx = {
        "tenant": tenant,
        "client": tenant_client,
        "owner": owner,
        "target": target,
        "lead_id": lead["id"],
        "hook": hook,
        "clock": clock,
    }

    span, reason, stage, notes, by = reassign(ctx)

    message, data = the_event(hook, events.LEAD_REASSIGNED, span)
    row = Lead.all_tenants.get(pk=lead["id"])
    assert row.assigned_agent_id not in (None, teammate.pk)
    if reassign is not _reassign_automatically_on_breach:
        assert row.assigned_agent_id == target.pk
    new_agent = row.assigned_agent
    check_lead_data(data, lead_id=lead["id"], status=row.status, agent=new_agent)
    assert row.status == ("new" if reason == "manual" else "claimed")
    assert data["previousAgentId"] == data["previous_agent_id"] == str(teammate.pk)
    assert data["reason"] == data["reassignment_reason"] == reason
    assert data["stage"] == stage
    assert data["notes"] == notes
    assert data["reassignedById"] == (str(by.pk) if by else None)
    # Only the sweep's door waits out the window; a manual move keeps the running one.
    assert data["deadlinePassed"] is (reassign is _reassign_automatically_on_breach)
    assert data["windowRestarted"] is (reason != "manual")
    assert data["reassignment_count"] == 1
    assert message.ordering_key == f"{hook.pk}:{lead['id']}"


# --- message.failed -----------------------------------------------------------------------


def test_a_whatsapp_confirmation_that_finally_fails_is_announced(
    tenant, tenant_client, receiver, deliver_outbox
):
    hook = endpoint_for(tenant, ["message.failed"], url=receiver.url)
    answer = tenant_client.post(HANDOVER, {"contactId": "+4915100000009"}, format="json").json()
    confirmation = session_row(answer["sessionId"]).confirmation_message
    assert confirmation is not None, "the handover queued its WhatsApp confirmation"
    assert kinds(hook) == [], "the endpoint wants message.failed only"

    with door() as span:
        deliver_outbox()  # no CRM integration: the confirmation fails for good

    confirmation.refresh_from_db()
    assert confirmation.status == MessageStatus.FAILED
    assert "No CRM integration" in confirmation.last_error
    message, data = the_event(hook, events.MESSAGE_FAILED, span, status=MessageStatus.SENT)
    assert data["sessionId"] == answer["sessionId"]
    assert data["messageId"] == str(confirmation.pk)
    assert data["channel"] == "whatsapp"
    assert data["kind"] == "handover.confirmation"
    assert data["target"] == "+4915100000009"
    assert data["attempts"] == 1
    assert data["error"] == confirmation.last_error
    assert message.ordering_key == f"{hook.pk}:{answer['sessionId']}"
    assert receiver.received == [body_of(message)], "the receiver got it, once"

    deliver_outbox()
    assert OutboundMessage.all_tenants.filter(kind=events.MESSAGE_FAILED).count() == 1


def test_a_failing_webhook_delivery_is_not_announced_by_webhook(
    tenant, tenant_client, receiver, httpserver, deliver_outbox
):
    httpserver.expect_request("/refuses", method="POST").respond_with_data("no", status=400)
    refusing = endpoint_for(tenant, ["lead.created"], url=httpserver.url_for("/refuses"))
    listener = endpoint_for(tenant, ["message.failed"], url=receiver.url)
    new_lead(tenant_client)  # lead.created → the refusing endpoint
    handover(tenant_client, sendHandoverMessage=True)  # a confirmation that will fail

    deliver_outbox()

    (refused,) = messages_for(refusing)
    assert refused.status == MessageStatus.FAILED, "the webhook delivery failed for good"
    assert "HTTP 400" in refused.last_error
    announced = messages_for(listener)
    assert [m.kind for m in announced] == [events.MESSAGE_FAILED], "only the confirmation"
    assert body_of(announced[0])["data"]["channel"] == "whatsapp"
    assert OutboundMessage.all_tenants.filter(kind=events.MESSAGE_FAILED).count() == 1
    assert [body["data"]["channel"] for body in receiver.received] == ["whatsapp"]


# --- subscriptions, inactive endpoints, tenants apart ----------------------------------------


def test_an_endpoint_gets_only_the_event_types_it_subscribed_to(tenant, tenant_client, teammate):
    claimed_only = endpoint_for(tenant, ["lead.claimed"])
    everything = endpoint_for(tenant, url="https://all.example.com/in")

    lead = new_lead(tenant_client, teammate)
    _claim("api", agent_client(teammate), lead["id"])
    tenant_client.post(f"{LEADS}/{lead['id']}/close", {"outcome": "won"}, format="json")
    handover(tenant_client)

    assert kinds(claimed_only) == [events.LEAD_CLAIMED]
    assert body_of(messages_for(claimed_only)[0])["data"]["id"] == lead["id"]
    assert sorted(kinds(everything)) == sorted(
        [
            events.LEAD_CREATED,
            events.LEAD_ASSIGNED,
            events.LEAD_CLAIMED,
            events.LEAD_CLOSED,
            events.SESSION_CREATED,
            events.SESSION_ASSIGNED,
        ]
    )


@pytest.mark.parametrize("with_an_active_one", [True, False])
def test_an_inactive_endpoint_gets_nothing(with_an_active_one, tenant, tenant_client, teammate):
    off = endpoint_for(tenant, url="https://off.example.com/in")
    update_endpoint(tenant=tenant, actor=SYSTEM, endpoint_id=off.pk, is_active=False)
    on = endpoint_for(tenant) if with_an_active_one else None

    lead = new_lead(tenant_client, teammate)
    _claim("api", agent_client(teammate), lead["id"])
    handover(tenant_client)

    assert kinds(off) == []
    if on is not None:
        assert len(kinds(on)) == 5
    else:
        assert not OutboundMessage.all_tenants.filter(channel="webhook").exists()


def test_each_tenant_gets_only_its_own_events(
    tenant, other_tenant, tenant_client, other_api_key, teammate, clock
):
    ours = endpoint_for(tenant)
    theirs = endpoint_for(other_tenant, url="https://globex.example.com/in")
    their_client = APIClient()
    their_client.credentials(HTTP_X_API_KEY=other_api_key[1])
    their_agent = MembershipFactory(tenant=other_tenant, role=Role.MEMBER)
    our_session = handover(tenant_client, "+4915100000001")["sessionId"]
    their_session = handover(their_client, "+4915100000002")["sessionId"]
    our_lead = new_lead(tenant_client, teammate)["id"]
    their_lead = new_lead(their_client, their_agent)["id"]
    clock.shift(timedelta(minutes=6))
    # One sweep across both tenants emits both breaches at once.
    assert leads_tasks.check_sla.delay().get() == {"claim": 2, "contact": 0}

    for endpoint, tenant_, session_id, lead_id in (
        (ours, tenant, our_session, our_lead),
        (theirs, other_tenant, their_session, their_lead),
    ):
        messages = messages_for(endpoint)
        assert sorted(m.kind for m in messages) == sorted(
            [
                events.SESSION_CREATED,
                events.SESSION_ASSIGNED,
                events.LEAD_CREATED,
                events.LEAD_ASSIGNED,
                events.LEAD_SLA_BREACHED,
            ]
        )
        for message in messages:
            assert message.tenant_id == tenant_.pk
            data = body_of(message)["data"]
            assert data.get("sessionId", data.get("id")) in (session_id, lead_id)


# --- ordering -------------------------------------------------------------------------------


def test_events_about_one_object_share_an_ordering_key_per_endpoint(
    tenant, tenant_client, teammate
):
    first = endpoint_for(tenant)
    second = endpoint_for(tenant, url="https://second.example.com/in")

    lead = new_lead(tenant_client, teammate)
    _claim("api", agent_client(teammate), lead["id"])
    session_id = handover(tenant_client)["sessionId"]

    for endpoint in (first, second):
        lead_messages = [m for m in messages_for(endpoint) if m.kind.startswith("lead.")]
        session_messages = [m for m in messages_for(endpoint) if m.kind.startswith("session.")]
        assert len(lead_messages) == 3 and len(session_messages) == 2
        assert {m.ordering_key for m in lead_messages} == {f"{endpoint.pk}:{lead['id']}"}
        assert {m.ordering_key for m in session_messages} == {f"{endpoint.pk}:{session_id}"}


def test_the_next_event_about_an_object_waits_while_the_first_is_retried(
    tenant, tenant_client, teammate, receiver, deliver_outbox, time_machine
):
    hook = endpoint_for(tenant, url=receiver.url)
    receiver.answers = [503]  # the first request fails, the rest succeed
    session_id = handover(tenant_client)["sessionId"]  # session.created, session.assigned
    lead_id = new_lead(tenant_client, teammate)["id"]  # another object: lead.created, .assigned

    deliver_outbox()

    assert [body["type"] for body in receiver.received] == [
        events.SESSION_CREATED,  # answered 503
        events.LEAD_CREATED,  # another object's events are not held up
        events.LEAD_ASSIGNED,
    ]
    created, assigned = messages_for(hook, events.SESSION_CREATED) + messages_for(
        hook, events.SESSION_ASSIGNED
    )
    assert (created.status, created.attempts) == (MessageStatus.PENDING, 1)
    assert "503" in created.last_error
    assert (assigned.status, assigned.attempts) == (MessageStatus.PENDING, 0), (
        "session.assigned must not overtake session.created"
    )

    time_machine.move_to(timezone.now() + timedelta(minutes=2))  # the retry is due
    deliver_outbox()

    assert [body["type"] for body in receiver.received[3:]] == [
        events.SESSION_CREATED,
        events.SESSION_ASSIGNED,
    ]
    assert receiver.received[3] == body_of(created), "the same bytes on the retry"
    assert receiver.received[4]["data"]["sessionId"] == session_id
    assert all(m.status == MessageStatus.SENT for m in messages_for(hook))
    assert {body_of(m)["data"].get("id") for m in messages_for(hook, events.LEAD_CREATED)} == {
        lead_id
    }


# --- tenants without endpoints --------------------------------------------------------------


@pytest.mark.parametrize("history", ["never-had-one", "deleted-its-only-one", "turned-it-off"])
def test_a_tenant_without_active_endpoints_queues_no_webhook_message(
    history, tenant, other_tenant, tenant_client, teammate
):
    endpoint_for(other_tenant, url="https://globex.example.com/in")  # someone else's
    if history != "never-had-one":
        mine = endpoint_for(tenant)
        if history == "deleted-its-only-one":
            delete_endpoint(tenant=tenant, actor=SYSTEM, endpoint_id=mine.pk)
        else:
            update_endpoint(tenant=tenant, actor=SYSTEM, endpoint_id=mine.pk, is_active=False)

    with CaptureQueriesContext(connection) as queries:
        answer = handover(tenant_client)

    assert answer["status"] == "assigned" and answer["sessionCreated"] is True
    assert not OutboundMessage.all_tenants.filter(channel="webhook").exists()
    endpoint_table = WebhookEndpoint._meta.db_table
    reads = [q["sql"] for q in queries.captured_queries if endpoint_table in q["sql"]]
    if connection.vendor == "postgresql":
        assert reads and all("routing_lock" in sql for sql in reads), (
            "a tenant without active endpoints costs no endpoint query of its own: the pick"
            " statement checks (the pool's first pick runs twice: it creates the cursor)"
        )
    else:  # embedded mode routes in a transaction, whose emit() reads the endpoints once
        assert len(reads) == 1, reads


def test_an_email_that_finally_fails_is_announced(tenant, tenant_client, receiver, deliver_outbox):
    hook = endpoint_for(tenant, ["message.failed"], url=receiver.url)
    no_address = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__email="")
    lead = new_lead(tenant_client, no_address)  # "New lead for you" email, to nobody
    notification = Notification.objects.for_tenant(tenant).get(lead_id=lead["id"])

    with door() as span:
        deliver_outbox()

    email = OutboundMessage.all_tenants.get(pk=notification.email_message_id)
    assert email.status == MessageStatus.FAILED
    assert "no email address" in email.last_error
    message, data = the_event(hook, events.MESSAGE_FAILED, span, status=MessageStatus.SENT)
    assert data["notificationId"] == str(notification.pk)
    assert data["messageId"] == str(email.pk)
    assert data["channel"] == "email"
    assert data["kind"] == email.kind == "lead.lead_assigned"
    assert data["attempts"] == 1
    assert data["error"] == email.last_error
    assert message.ordering_key == f"{hook.pk}:{email.pk}"
    assert receiver.received == [body_of(message)]


# --- first agents by reassignment; endpoints added switched off -------------------------


@pytest.mark.parametrize("how", ["api", "admin-button"])
def test_a_lead_that_gets_its_first_agent_by_reassignment_is_announced_as_assigned(
    how, tenant, tenant_client, owner, hook
):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = new_lead(tenant_client)
    assert lead["assigned_agent"] is None and lead["unassigned_reason"] == "manual_strategy"

    with door() as span:
        if how == "api":
            response = tenant_client.post(
                "/api/v1/reassign-lead",
                {
                    "lead_id": lead["id"],
                    "to_agent_id": str(agent.pk),
                    "reason": "manual",
                    "reassigned_by_id": str(owner.pk),
                },
                format="json",
            )
            assert response.status_code == 200, response.content
        else:
            response = admin_client(owner).post(
                f"/admin/leads/lead/{lead['id']}/reassign/",
                {"to_agent": str(agent.pk), "reason": "manual", "apply": "Reassign"},
            )
            assert response.status_code == 302
    assert Lead.all_tenants.get(pk=lead["id"]).assigned_agent_id == agent.pk

    _message, data = the_event(hook, events.LEAD_ASSIGNED, span)
    check_lead_data(data, lead_id=lead["id"], status="new", agent=agent)


def test_an_endpoint_added_in_the_admin_switched_off_gets_nothing(
    tenant, tenant_client, owner, teammate
):
    response = admin_client(owner).post(
        "/admin/webhooks/webhookendpoint/add/",
        {"tenant": str(tenant.pk), "url": HOOK_URL, "description": "not yet"},  # unticked
    )
    assert response.status_code == 302, response.content
    added = WebhookEndpoint.objects.for_tenant(tenant).get()

    new_lead(tenant_client, teammate)

    assert kinds(added) == []
    assert added.is_active is False


@pytest.mark.parametrize("door", ["handover", "lead"])
def test_a_first_endpoint_made_by_another_process_hears_the_next_event_here(
    door, tenant, tenant_client, api_key, monkeypatch
):
    """Another process (a second gunicorn worker, the admin's) made the tenant's first
    endpoint: the tenant this process remembers for the API key still says it has none
    for a few seconds. The next handover or lead here is not lost to the endpoint for
    that (the one-statement handover checks the endpoints itself; `emit` reads them)."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    warm = tenant_client.post(
        HANDOVER, {"contactId": "+4915100000080", "sendHandoverMessage": False}, format="json"
    )
    assert warm.status_code == 201  # the key and its tenant (no webhooks yet) are remembered
    # This process does not hear of the change, as another process would not.
    monkeypatch.setattr(api_key_cache, "forget_tenant", lambda tenant_id: None)
    endpoint = endpoint_for(tenant)
    assert api_key_cache.lookup(api_key[0].prefix).tenant.has_active_webhooks is False

    if door == "handover":
        response = tenant_client.post(
            HANDOVER, {"contactId": "+4915100000081", "sendHandoverMessage": False}, format="json"
        )
        assert response.status_code == 201, response.content
        assert response.json()["assignedAgent"]["id"] == str(agent.pk)
        assert kinds(endpoint) == [events.SESSION_CREATED, events.SESSION_ASSIGNED]
        agent.refresh_from_db()
        assert agent.open_session_count == 2  # counted once: the refused pick wrote nothing
        assert (
            body_of(messages_for(endpoint)[0])["data"]["sessionId"] == response.json()["sessionId"]
        )
    else:
        lead = new_lead(tenant_client)
        assert events.LEAD_CREATED in kinds(endpoint)
        assert body_of(messages_for(endpoint, events.LEAD_CREATED)[0])["data"]["id"] == lead["id"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("before", ["an endpoint", "an idempotency key"])
def test_an_endpoint_added_between_the_read_and_the_pick_hears_the_handover(
    before, tenant, tenant_client, monkeypatch
):
    """With webhooks (or an Idempotency-Key), the handover reads the tenant's endpoints
    and then picks, writing the events for those endpoints in the pick's statement. An
    endpoint another connection commits in between is seen by the pick's snapshot: the
    pick is refused, the endpoints are read again, and the new one hears the handover."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    first = endpoint_for(tenant) if before == "an endpoint" else None
    headers = {"HTTP_IDEMPOTENCY_KEY": "between-reads"} if first is None else {}
    added = add_an_endpoint_after_the_first_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )
    response = tenant_client.post(
        HANDOVER,
        {"contactId": "+4915100000090", "sendHandoverMessage": False},
        format="json",
        **headers,
    )
    assert response.status_code == 201, response.content
    assert response.json()["assignedAgent"]["id"] == str(agent.pk)
    assert kinds(added[0]) == [events.SESSION_CREATED, events.SESSION_ASSIGNED]
    if first is not None:
        assert kinds(first) == [events.SESSION_CREATED, events.SESSION_ASSIGNED]
    agent.refresh_from_db()
    assert agent.open_session_count == 1  # counted once: the refused pick wrote nothing


@pytest.mark.postgres
def test_endpoints_that_keep_changing_still_hear_the_handover(tenant, tenant_client, monkeypatch):
    """An endpoint added after every read: after ENDPOINT_READS refused picks the pick
    writes the session alone and the handover writes the events after it (`emit`)."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    endpoint_for(tenant)
    added = add_an_endpoint_after_every_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )
    with CaptureQueriesContext(connection) as captured:
        response = tenant_client.post(
            HANDOVER, {"contactId": "+4915100000091", "sendHandoverMessage": False}, format="json"
        )
    assert response.status_code == 201, response.content
    # Still inserted by the pick, after the pool's lock (never an open session's index
    # entry held while waiting for a pool: AGENT_BEFORE_SESSION).
    inserts = [q["sql"] for q in captured.captured_queries if '"inbox_inboxsession"' in q["sql"]]
    assert inserts and all(sql.startswith("WITH routing_lock") for sql in inserts)
    assert response.json()["assignedAgent"]["id"] == str(agent.pk)
    assert len(added) == events.ENDPOINT_READS
    for endpoint in WebhookEndpoint.objects.for_tenant(tenant):
        assert kinds(endpoint) == [events.SESSION_CREATED, events.SESSION_ASSIGNED]
    agent.refresh_from_db()
    assert agent.open_session_count == 1


def test_a_tenants_first_endpoint_hears_the_very_next_handover(tenant, tenant_client):
    """The API key's tenant is remembered by the process; creating the first endpoint must
    not leave the next few seconds of events unsent."""
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    warm = tenant_client.post(
        HANDOVER, {"contactId": "+4915100000070", "sendHandoverMessage": False}, format="json"
    )
    assert warm.status_code == 201  # the key and its tenant (no webhooks yet) are remembered
    endpoint = endpoint_for(tenant)
    response = tenant_client.post(
        HANDOVER, {"contactId": "+4915100000071", "sendHandoverMessage": False}, format="json"
    )
    assert response.status_code == 201
    assert "session.created" in kinds(endpoint)
