"""Demo data for `seed_demo`: leads in every state of the SLA workflow.

Leads go through the real services (intake, claim, contact, reassignment) and the real
sweep records the breaches; only the clock is cheated, by moving a deadline into the
past with a queryset update. Phones are fixed, so a later run finds and reuses them.
"""

from datetime import timedelta

from django.utils import timezone

from core.actor import Actor
from leads.models import Lead, LeadStatus, ReassignmentReason
from leads.services import (
    claim_lead,
    create_lead,
    mark_lead_contacted,
    reassign_lead,
    sweep_sla_breaches,
)
from teams.models import Membership

ACTOR = Actor.for_command("seed_demo")
ADMIN_EMAIL = "admin@demo.test"
REASSIGN_TO = "carol@demo.test"

# state, name, phone, first agent. Phones differ from the inbox demo's contact ids.
DEMO_LEADS = [
    ("new", "Liam Carter", "+447700900101", "alice@demo.test"),
    ("claimed", "Emma Hughes", "+447700900102", "bob@demo.test"),
    ("contacted", "Oliver Price", "+447700900103", "carol@demo.test"),
    ("claim_breached", "Sophie Turner", "+447700900104", "dave@demo.test"),
    ("contact_breached", "Harry Walker", "+447700900105", "alice@demo.test"),
    ("reassigned", "Grace Bennett", "+447700900106", "bob@demo.test"),
]
OTHER_LEAD = ("Otto Other", "+15550100001")


def _existing(tenant, phone: str) -> Lead | None:
    return Lead.objects.for_tenant(tenant).filter(phone=phone).order_by("created_at").first()


def _miss_deadline(tenant, lead: Lead, field: str) -> None:
    """Demo only: pretend the window ran out a minute ago, for the sweep to find."""
    past = timezone.now() - timedelta(minutes=1)
    Lead.objects.for_tenant(tenant).filter(pk=lead.pk).update(**{field: past})


def _reopen_lapsed_window(tenant, lead: Lead) -> None:
    """On a later run, a lead meant to show a running window gets a fresh one, so that
    this run's sweep does not breach it just because time passed since the first run.
    A breach already recorded (by a worker in between) is left as it is."""
    now = timezone.now()
    if lead.status == LeadStatus.NEW and not lead.claim_breached:
        field, minutes = "claim_deadline", tenant.claim_window_minutes
    elif lead.status == LeadStatus.CLAIMED and not lead.contact_breached:
        field, minutes = "contact_deadline", tenant.contact_window_minutes
    else:
        return
    deadline = getattr(lead, field)
    if deadline is not None and deadline <= now:
        Lead.objects.for_tenant(tenant).filter(pk=lead.pk).update(
            **{field: now + timedelta(minutes=minutes)}
        )


def _demo_lead(tenant, agents: dict, state: str, name: str, phone: str, email: str) -> tuple:
    """The lead for one demo state, created on the first run; (lead, needs a sweep)."""
    lead = _existing(tenant, phone)
    if lead is not None:
        if state not in ("claim_breached", "contact_breached"):
            _reopen_lapsed_window(tenant, lead)
        return lead, False

    agent = agents[email]
    slug = name.lower().replace(" ", ".")
    lead = create_lead(
        tenant=tenant,
        actor=ACTOR,
        name=name,
        phone=phone,
        email=f"{slug}@example.test",
        source="website",
        assigned_agent_id=agent.pk,
    )
    if state in ("claimed", "contacted", "contact_breached"):
        claim_lead(tenant=tenant, lead_id=lead.pk, agent=agent)
    if state == "contacted":
        mark_lead_contacted(tenant=tenant, lead_id=lead.pk, agent=agent)
    if state == "claim_breached":
        _miss_deadline(tenant, lead, "claim_deadline")
        return lead, True
    if state == "contact_breached":
        _miss_deadline(tenant, lead, "contact_deadline")
        return lead, True
    if state == "reassigned":
        admin = agents[ADMIN_EMAIL]
        reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=agents[REASSIGN_TO].pk,
            reason=ReassignmentReason.MANUAL,
            actor=Actor.for_membership(admin),
            reassigned_by=admin,
            notes="Demo: Bob is off this afternoon.",
        )
    return lead, False


def _other_tenant_lead(other_tenant, agent_id) -> Lead:
    name, phone = OTHER_LEAD
    lead = _existing(other_tenant, phone)
    if lead is None:
        agent = Membership.objects.for_tenant(other_tenant).get(pk=agent_id)
        lead = create_lead(
            tenant=other_tenant,
            actor=ACTOR,
            name=name,
            phone=phone,
            source="website",
            assigned_agent_id=agent.pk,
        )
    return lead


def seed(context: dict) -> None:
    tenant = context["tenant_obj"]
    agents = context["agents_by_email"]
    output = context["output"]

    lead_ids = []
    sweep = False
    for state, name, phone, email in DEMO_LEADS:
        lead, needs_sweep = _demo_lead(tenant, agents, state, name, phone, email)
        lead_ids.append(lead.pk)
        sweep = sweep or needs_sweep
    if sweep:
        # The real stage 1 and 2 sweep: breaches, admin notifications, activity rows.
        sweep_sla_breaches()

    other_lead = _other_tenant_lead(context["other_tenant_obj"], output["other_tenant"]["agent_id"])

    stored = Lead.objects.for_tenant(tenant).in_bulk(lead_ids)
    output["leads"] = [
        {
            "id": str(lead.pk),
            "name": lead.name,
            "status": lead.status,
            "assigned_agent_id": str(lead.assigned_agent_id) if lead.assigned_agent_id else None,
            "claim_breached": lead.claim_breached,
            "contact_breached": lead.contact_breached,
            "reassignment_count": lead.reassignment_count,
        }
        for lead in (stored[pk] for pk in lead_ids)
    ]
    output["other_tenant"]["lead_id"] = str(other_lead.pk)
