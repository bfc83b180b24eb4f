"""Factories for lead rows, for tests that need a lead in a given state quickly.

They write rows directly: no routing, no ActivityLog, no notifications, and agents'
`current_lead_count` is not touched. Where that matters, build the lead through the
services (`leads.services.create_lead`, `reassign_lead`, ...) instead.
"""

from datetime import timedelta

import factory
from django.db import transaction
from django.utils import timezone
from factory.django import DjangoModelFactory

from leads.emails import attach_email
from leads.models import (
    Lead,
    LeadReassignment,
    LeadStatus,
    Notification,
    NotificationKind,
    ReassignmentReason,
    ReassignmentStage,
)
from outbox.services import queue_messages
from tests.factories import MembershipFactory, TenantFactory


def _claim_deadline(lead):
    """New leads with an agent have a claim window running, as `create_lead` would set."""
    if lead.assigned_agent is None or lead.status != LeadStatus.NEW:
        return None
    return lead.assigned_at + timedelta(minutes=lead.tenant.claim_window_minutes)


class LeadFactory(DjangoModelFactory):
    """A lead of `tenant`; unassigned unless `assigned_agent` is given.

    `LeadFactory(assigned_agent=agent)` takes the agent's tenant and starts a claim window
    at `assigned_at` (now). Every field can be overridden, timers included.
    """

    class Meta:
        model = Lead

    tenant = factory.Maybe(
        "assigned_agent",
        yes_declaration=factory.SelfAttribute("assigned_agent.tenant"),
        no_declaration=factory.SubFactory(TenantFactory),
    )
    name = factory.Faker("name")
    phone = factory.Sequence(lambda n: f"+49151{n:07d}")
    email = factory.Sequence(lambda n: f"lead{n}@customer.test")
    source = "website"
    status = LeadStatus.NEW
    assigned_agent = None
    assigned_at = factory.LazyAttribute(
        lambda lead: timezone.now() if lead.assigned_agent is not None else None
    )
    claim_deadline = factory.LazyAttribute(_claim_deadline)


class LeadReassignmentFactory(DjangoModelFactory):
    class Meta:
        model = LeadReassignment

    lead = factory.SubFactory(LeadFactory)
    tenant = factory.SelfAttribute("lead.tenant")
    from_agent = None
    to_agent = factory.SubFactory(MembershipFactory, tenant=factory.SelfAttribute("..tenant"))
    reassigned_by = None
    reason = ReassignmentReason.MANUAL
    stage = ReassignmentStage.MANUAL
    notes = ""


class NotificationFactory(DjangoModelFactory):
    """A "lead assigned" notice to an agent of the lead's tenant, its email pending.

    By default the lead is assigned to the recipient; pass `lead=` (and a `kind`) for
    anything else, e.g. a breach notice to an admin.
    """

    class Meta:
        model = Notification
        skip_postgeneration_save = True

    tenant = factory.SubFactory(TenantFactory)
    recipient = factory.SubFactory(MembershipFactory, tenant=factory.SelfAttribute("..tenant"))
    lead = factory.SubFactory(
        LeadFactory,
        tenant=factory.SelfAttribute("..tenant"),
        assigned_agent=factory.SelfAttribute("..recipient"),
    )
    kind = NotificationKind.LEAD_ASSIGNED
    title = factory.LazyAttribute(lambda n: f"New lead for you: {n.lead.name}"[:200])
    body = ""

    @factory.post_generation
    def email(obj, create, extracted, **kwargs):
        """Queue the notice's email as the services do (`email=False`: no email)."""
        if create and extracted is not False:
            with transaction.atomic():
                queue_messages([attach_email(obj)])
                obj.save(update_fields=["email_message"])
