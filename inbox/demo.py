"""Demo data for `seed_demo`: a CRM integration and sessions in several states, one of
them waiting for its agent to accept it (the demo tenant has a 10-minute accept window).

Sessions go through the real handover service, so their assignment is whatever the
demo tenant's rules give; contact ids are fixed, so a second run reuses them.
"""

import os
from datetime import timedelta

from django.utils import timezone

from core.actor import Actor
from inbox.integrations import set_crm_api_key
from inbox.models import CrmIntegration, InboxSession, SessionStatus
from inbox.services import close_session, handover
from teams.models import AssignmentConfig, Presence, Strategy, Team, TeamMember

ACTOR = Actor.for_command("seed_demo")


def _crm_integration(tenant) -> CrmIntegration:
    """Inactive unless DEMO_CRM_API_URL and DEMO_CRM_API_KEY point at a real CRM."""
    api_url = os.environ.get("DEMO_CRM_API_URL", "")
    api_key = os.environ.get("DEMO_CRM_API_KEY", "")
    integration, created = CrmIntegration.all_tenants.get_or_create(
        tenant=tenant,
        name="Demo CRM (WhatsApp)",
        defaults={
            "api_url": api_url or "https://crm.invalid",
            "is_active": bool(api_url and api_key),
            "config": {"phoneNumberId": os.environ.get("DEMO_CRM_PHONE_NUMBER_ID", "1000000001")},
        },
    )
    if created:
        set_crm_api_key(integration=integration, plaintext=api_key or "demo-not-a-real-key")
    return integration


def _escalations_team(tenant, agents) -> Team:
    """A team routed by hand (strategy manual): its handovers wait for a person."""
    team, _ = Team.all_tenants.get_or_create(tenant=tenant, name="Escalations")
    AssignmentConfig.all_tenants.get_or_create(
        tenant=tenant, team=team, defaults={"strategy": Strategy.MANUAL}
    )
    for email in ("erin@demo.test", "frank@demo.test"):
        TeamMember.all_tenants.get_or_create(tenant=tenant, team=team, membership=agents[email])
    return team


def _handover(tenant, contact_id, name, **fields) -> InboxSession:
    outcome = handover(
        tenant=tenant,
        actor=ACTOR,
        contact_id=contact_id,
        channel=fields.pop("channel", "whatsapp"),
        name=name,
        send_message=False,
        **fields,
    )
    return InboxSession.objects.for_tenant(tenant).get(pk=outcome.body["sessionId"])


WAITING_CONTACT = ("+447700900006", "Mia Davies")


def _waiting_for_acceptance(tenant) -> InboxSession:
    """An open conversation whose agent (online) has not accepted it yet, its accept
    deadline ahead. A conversation left from an earlier run that was accepted, lost its
    agent or has an agent who is no longer online since is closed, and a new one opened."""
    contact_id, name = WAITING_CONTACT
    session = (
        InboxSession.objects.for_tenant(tenant)
        .select_related("assigned_agent")
        .filter(contact_id=contact_id, status=SessionStatus.OPEN)
        .first()
    )
    if session is not None and (
        session.accepted_at is not None
        or session.assigned_agent is None
        or session.assigned_agent.presence != Presence.ONLINE
    ):
        close_session(tenant=tenant, session_id=session.pk, actor=ACTOR)
        session = None
    if session is None:
        session = _handover(tenant, contact_id, name, context={"topic": "late delivery"})
    now = timezone.now()
    if session.assigned_agent_id and (
        session.accept_deadline is None or session.accept_deadline <= now
    ):
        # Demo only (as the leads demo moves its deadlines): a full window from now, so
        # the conversation shows a countdown however long ago the last run was.
        deadline = now + timedelta(minutes=tenant.session_accept_window_minutes or 10)
        InboxSession.objects.for_tenant(tenant).filter(pk=session.pk).update(
            accept_deadline=deadline
        )
        session.accept_deadline = deadline
    return session


def seed(context: dict) -> None:
    tenant = context["tenant_obj"]
    _crm_integration(tenant)
    escalations = _escalations_team(tenant, context["agents_by_email"])
    sales = Team.objects.for_tenant(tenant).get(name="Sales")

    sessions = [
        _handover(tenant, "+447700900001", "Olivia Brown", context={"topic": "billing"}),
        _handover(tenant, "+447700900002", "Noah Smith", team_id=sales.pk),
        _handover(tenant, "web-visitor-42", "Amelia Jones", channel="webchat"),
        _handover(tenant, "+447700900004", "Jack Wilson", team_id=escalations.pk),
    ]
    # A conversation that is over: closed once, and recreated closed on later runs.
    finished = (
        InboxSession.objects.for_tenant(tenant)
        .filter(contact_id="+447700900005", status=SessionStatus.CLOSED)
        .first()
    )
    if finished is None:
        finished = _handover(tenant, "+447700900005", "Isla Taylor")
        finished = close_session(tenant=tenant, session_id=finished.pk, actor=ACTOR)
    sessions.append(finished)
    waiting = _waiting_for_acceptance(tenant)
    sessions.append(waiting)

    escalations_entry = {
        "id": str(escalations.pk),
        "name": escalations.name,
        "strategy": Strategy.MANUAL,
        "is_default": False,
        "agent_ids": [
            str(context["agents_by_email"][e].pk) for e in ("erin@demo.test", "frank@demo.test")
        ],
    }
    output = context["output"]
    if escalations_entry["id"] not in {t["id"] for t in output["teams"]}:
        output["teams"].append(escalations_entry)
    output["waiting_session"] = {
        "id": str(waiting.pk),
        "contact_id": waiting.contact_id,
        "assigned_agent_id": str(waiting.assigned_agent_id),
        "accept_deadline": waiting.accept_deadline.isoformat(),
    }
    output["sessions"] = [
        {
            "id": str(s.pk),
            "contact_id": s.contact_id,
            "status": s.status,
            "assigned_agent_id": str(s.assigned_agent_id) if s.assigned_agent_id else None,
            "unassigned_reason": s.unassigned_reason or None,
        }
        for s in sessions
    ]
