"""Reads for leads. Every query starts from a tenant or from the logged-in user."""

from django.db.models import Q, QuerySet

from leads.models import Lead, LeadStatus
from teams.models import ADMIN_ROLES, Membership, Tenant


def leads_for_tenant(*, tenant: Tenant, filters: dict | None = None) -> QuerySet:
    filters = filters or {}
    leads = (
        Lead.objects.for_tenant(tenant)
        .select_related("assigned_agent__user", "tenant")
        .order_by("-created_at")
    )
    if filters.get("status"):
        leads = leads.filter(status=filters["status"])
    if filters.get("assigned_agent_id"):
        leads = leads.filter(assigned_agent_id=filters["assigned_agent_id"])
    breached = filters.get("breached")
    if breached == "claim":
        leads = leads.filter(claim_sla_breached_at__isnull=False)
    elif breached == "contact":
        leads = leads.filter(contact_sla_breached_at__isnull=False)
    elif breached == "any":
        leads = leads.filter(
            Q(claim_sla_breached_at__isnull=False) | Q(contact_sla_breached_at__isnull=False)
        )
    if filters.get("created_after"):
        leads = leads.filter(created_at__gte=filters["created_after"])
    if filters.get("created_before"):
        leads = leads.filter(created_at__lt=filters["created_before"])
    if filters.get("search"):
        term = filters["search"]
        leads = leads.filter(
            Q(name__icontains=term) | Q(phone__icontains=term) | Q(email__icontains=term)
        )
    return leads


def lead_for_tenant(*, tenant: Tenant, lead_id) -> Lead | None:
    return (
        Lead.objects.for_tenant(tenant)
        .select_related("assigned_agent__user", "tenant")
        .prefetch_related("reassignments")
        .filter(pk=lead_id)
        .first()
    )


def membership_for_lead(*, user, lead_id) -> Membership | None:
    """The user's active membership in the tenant that owns the lead, if any.

    This is how a logged-in person's tenant is resolved for a lead: a lead of a tenant
    they do not belong to does not exist for them.
    """
    return (
        Membership.all_tenants.select_related("tenant", "user")
        .filter(user=user, is_active=True, tenant__leads__pk=lead_id)
        .first()
    )


def active_admin(*, tenant: Tenant, agent_id) -> Membership | None:
    return (
        Membership.objects.for_tenant(tenant)
        .select_related("user")
        .filter(pk=agent_id, role__in=ADMIN_ROLES, is_active=True, user__is_active=True)
        .first()
    )


def leads_of_agent(*, membership: Membership) -> QuerySet:
    return (
        Lead.objects.for_tenant(membership.tenant_id)
        .filter(assigned_agent=membership)
        .exclude(status=LeadStatus.CLOSED)
        .select_related("tenant")
        .order_by("status", "claim_deadline", "contact_deadline", "-created_at")
    )
