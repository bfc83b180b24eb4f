"""Reads for leads. Every query starts from a tenant or from the logged-in user."""

from collections.abc import Collection
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import (
    Aggregate,
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.functions import TruncDate

from audit.models import ActivityLog
from core.scoping import UnscopedQueryError
from leads.models import (
    Lead,
    LeadStatus,
    NotificationKind,
    ReassignmentReason,
    ReassignmentStage,
)
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


# --- The SLA dashboard (admin) ----------------------------------------------------------
# The dashboard reads several tenants at once: the caller passes the ids of the tenants
# the admin may see, and every query below is filtered by them (never by nothing).

BREACH_ACTIONS = {
    f"lead.{NotificationKind.CLAIM_SLA_BREACHED}": ReassignmentStage.CLAIM.value,
    f"lead.{NotificationKind.CONTACT_SLA_BREACHED}": ReassignmentStage.CONTACT.value,
}


def _tenant_ids(tenant_ids: Collection) -> list:
    if tenant_ids is None:
        raise UnscopedQueryError("The dashboard's reads need the tenants they may read.")
    return list(tenant_ids)


def leads_at_risk(*, tenant_ids: Collection, now: datetime, within: timedelta, limit: int = 100):
    """Open leads whose running deadline falls within `within` from `now`, or has passed
    and the sweep has not yet recorded the breach; soonest first.

    Returns (leads, total): at most `limit` leads, each with `deadline` and `stage`
    annotated, and how many there are in all.
    """
    horizon = now + within
    at_risk = (
        Lead.all_tenants.filter(tenant_id__in=_tenant_ids(tenant_ids))
        .filter(
            Q(
                status=LeadStatus.NEW,
                claim_deadline__lte=horizon,
                claim_sla_breached_at__isnull=True,
            )
            | Q(
                status=LeadStatus.CLAIMED,
                contact_deadline__lte=horizon,
                contact_sla_breached_at__isnull=True,
            )
        )
        .annotate(
            deadline=Case(
                When(status=LeadStatus.NEW, then=F("claim_deadline")),
                default=F("contact_deadline"),
            ),
            stage=Case(
                When(status=LeadStatus.NEW, then=Value(ReassignmentStage.CLAIM.value)),
                default=Value(ReassignmentStage.CONTACT.value),
            ),
        )
    )
    total = at_risk.count()
    leads = list(
        at_risk.select_related("tenant", "assigned_agent__user").order_by("deadline", "pk")[:limit]
    )
    return leads, total


def breaches_per_day(*, tenant_ids: Collection, start: datetime, end: datetime) -> list[dict]:
    """Recorded SLA breaches between `start` and `end`, counted per day (in the current
    time zone) and stage: [{"day": date, "stage": "claim"|"contact", "count": n}].

    Counted from the activity log, where the sweep writes one row per breach: a lead's
    own breach stamp is cleared when a reassignment restarts its window, the log's row
    stays.
    """
    rows = (
        ActivityLog.all_tenants.filter(
            tenant_id__in=_tenant_ids(tenant_ids),
            action__in=list(BREACH_ACTIONS),
            created_at__gte=start,
            created_at__lt=end,
        )
        .annotate(day=TruncDate("created_at"))
        .values("day", "action")
        .annotate(count=Count("id"))
        .order_by("day", "action")
    )
    return [
        {"day": row["day"], "stage": BREACH_ACTIONS[row["action"]], "count": row["count"]}
        for row in rows
    ]


class _PercentileCont(Aggregate):
    """PostgreSQL's ordered-set aggregate: the interpolated percentile of a column."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression, fraction: float, **extra):
        # The fraction is one of our constants, never user input.
        super().__init__(
            expression, fraction=float(fraction), output_field=DurationField(), **extra
        )


def percentile(values: list[timedelta], fraction: float) -> timedelta | None:
    """The same interpolation as PostgreSQL's percentile_cont, for other databases."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


# What each grouping is keyed by and labelled with.
_GROUPINGS = {
    "team": ("team_id", ("team__name",)),
    "agent": (
        "assigned_agent_id",
        ("assigned_agent__user__full_name", "assigned_agent__user__email"),
    ),
}


def _durations(tenant_ids, start, end, metric: str):
    """Leads with a measured time to claim (claimed_at - assigned_at) or to contact
    (contacted_at - claimed_at) whose claim or contact fell between `start` and `end`,
    annotated with `duration`."""
    leads = Lead.all_tenants.filter(tenant_id__in=_tenant_ids(tenant_ids))
    if metric == "claim":
        # A claim stamped by an "unclaimed" reassignment is the system's, not the agent's;
        # a lead reassigned after its claim has a later assigned_at: neither is measured.
        return (
            leads.filter(
                claimed_at__gte=start,
                claimed_at__lt=end,
                assigned_at__isnull=False,
                assigned_at__lte=F("claimed_at"),
            )
            .exclude(
                reassignment_reason=ReassignmentReason.UNCLAIMED, reassigned_at=F("claimed_at")
            )
            .annotate(
                duration=ExpressionWrapper(F("claimed_at") - F("assigned_at"), DurationField())
            )
        )
    return leads.filter(
        contacted_at__gte=start,
        contacted_at__lt=end,
        claimed_at__isnull=False,
        claimed_at__lte=F("contacted_at"),
    ).annotate(duration=ExpressionWrapper(F("contacted_at") - F("claimed_at"), DurationField()))


def response_times(
    *, tenant_ids: Collection, start: datetime, end: datetime, by: str
) -> list[dict]:
    """Time to claim and time to contact (count, median, 90th percentile) per team or
    per agent (`by`), for claims and contacts between `start` and `end`.

    [{"key", "tenant", "label", "claim_count", "claim_median", "claim_p90",
      "contact_count", "contact_median", "contact_p90"}], durations as timedeltas.
    Two queries whatever the number of leads: aggregated in the database on PostgreSQL,
    and in Python elsewhere (SQLite has no percentile).
    """
    key, label_fields = _GROUPINGS[by]
    fields = [key, "tenant__name", *label_fields]
    groups: dict = {}
    for metric in ("claim", "contact"):
        durations = _durations(tenant_ids, start, end, metric)
        if connection.vendor == "postgresql":
            stats = (
                durations.values(*fields)
                .annotate(
                    count=Count("id"),
                    median=_PercentileCont("duration", 0.5),
                    p90=_PercentileCont("duration", 0.9),
                )
                .order_by()
            )
        else:
            collected: dict = {}
            for row in durations.values(*fields, "duration"):
                group = tuple(row[f] for f in fields)
                collected.setdefault(group, []).append(row["duration"])
            stats = [
                {
                    **dict(zip(fields, group, strict=True)),
                    "count": len(values),
                    "median": percentile(values, 0.5),
                    "p90": percentile(values, 0.9),
                }
                for group, values in collected.items()
            ]
        for row in stats:
            entry = groups.setdefault(
                row[key],
                {
                    "key": row[key],
                    "tenant": row["tenant__name"],
                    "label": _group_label(by, row),
                    "claim_count": 0,
                    "claim_median": None,
                    "claim_p90": None,
                    "contact_count": 0,
                    "contact_median": None,
                    "contact_p90": None,
                },
            )
            entry[f"{metric}_count"] = row["count"]
            entry[f"{metric}_median"] = row["median"]
            entry[f"{metric}_p90"] = row["p90"]
    return sorted(groups.values(), key=lambda e: (e["tenant"], e["label"].lower()))


def _group_label(by: str, row: dict) -> str:
    if by == "team":
        return row["team__name"] or "No team"
    if row["assigned_agent_id"] is None:
        return "Unassigned"
    return row["assigned_agent__user__full_name"] or row["assigned_agent__user__email"]
