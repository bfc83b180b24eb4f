"""An agent goes away with open leads: the admin's "Redistribute" moves each of them
to an agent the routing engine picks (never back to the one who left) through
`reassign_lead`, so history, counters, notices, timers, audit and email are the same
as for any manual reassignment. A lead nobody can take stays with its agent, and the
engine's reason is reported."""

from dataclasses import dataclass, field

from django.db import transaction

from core.actor import Actor
from core.errors import DomainError
from core.locking import first_locked
from leads.models import OPEN_LEAD_STATUSES, Lead, ReassignmentReason
from leads.selectors import leads_of_agent
from leads.services import _authorize_reassignment, reassign_by_engine
from teams.models import Membership, Tenant


@dataclass(frozen=True)
class LeadMove:
    lead_id: str
    name: str
    to_agent: Membership | None = None
    reason: str = ""  # the engine's reason (or the refusal) when it did not move


@dataclass
class LeadsRedistribution:
    moved: list[LeadMove] = field(default_factory=list)
    stayed: list[LeadMove] = field(default_factory=list)
    # Closed or reassigned by someone else between the list and the move: left alone.
    gone: int = 0


def open_leads_of(agent: Membership):
    return leads_of_agent(membership=agent).select_related("team")


def redistribute_leads(
    *, tenant: Tenant, agent: Membership, actor: Actor, reassigned_by: Membership | None
) -> LeadsRedistribution:
    """Reassign each open lead of `agent` (reason "manual": its timers run on) to the
    agent the engine picks. `reassigned_by` is the deciding admin, as for
    `reassign_lead`, which also checks that they may."""
    if agent.tenant_id != tenant.pk:
        raise ValueError("The agent belongs to another tenant.")
    # Checked once up front: a refusal is the whole page's, not one lead's.
    _authorize_reassignment(tenant=tenant, actor=actor, reassigned_by=reassigned_by)
    result = LeadsRedistribution()
    notes = f"Redistributed: {agent.display_name or agent.user.email} went away."
    for lead_id in list(open_leads_of(agent).values_list("pk", flat=True)):
        try:
            move = _move_lead(
                tenant=tenant,
                agent=agent,
                lead_id=lead_id,
                actor=actor,
                reassigned_by=reassigned_by,
                notes=notes,
            )
        except DomainError as exc:
            # Its transaction rolled back as a whole; the refusal is the reason it stayed.
            lead = Lead.objects.for_tenant(tenant).get(pk=lead_id)
            move = LeadMove(lead_id=str(lead_id), name=lead.name, reason=exc.message)
        if move is None:
            result.gone += 1
        elif move.to_agent is None:
            result.stayed.append(move)
        else:
            result.moved.append(move)
    return result


@transaction.atomic
def _move_lead(
    *, tenant: Tenant, agent: Membership, lead_id, actor: Actor, reassigned_by, notes: str
) -> LeadMove | None:
    lead = first_locked(
        Lead.objects.for_tenant(tenant).filter(
            pk=lead_id, assigned_agent=agent, status__in=OPEN_LEAD_STATUSES
        ),
        related=("team__assignment_config", "team__schedule"),
    )
    if lead is None:
        return None
    decision, result = reassign_by_engine(
        tenant=tenant,
        lead=lead,
        reason=ReassignmentReason.MANUAL,
        actor=actor,
        reassigned_by=reassigned_by,
        notes=notes,
    )
    if decision.agent is None:
        return LeadMove(lead_id=str(lead.pk), name=lead.name, reason=decision.reason)
    return LeadMove(lead_id=str(lead.pk), name=lead.name, to_agent=result.lead.assigned_agent)
