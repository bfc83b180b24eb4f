import uuid

from django.db import models
from django.db.models import Q

from core.scoping import TenantOwnedModel
from teams.routing.reasons import UnassignedReason


class LeadStatus(models.TextChoices):
    NEW = "new", "New (waiting to be claimed)"
    CLAIMED = "claimed", "Claimed (waiting for contact)"
    CONTACTED = "contacted", "Contacted"
    CLOSED = "closed", "Closed"


# Leads that still belong to their agent: what `Membership.current_lead_count` counts.
OPEN_LEAD_STATUSES = (LeadStatus.NEW, LeadStatus.CLAIMED, LeadStatus.CONTACTED)


class ReassignmentReason(models.TextChoices):
    UNCLAIMED = "unclaimed", "Not claimed in time"
    NO_CONTACT = "no_contact", "Not contacted in time"
    MANUAL = "manual", "Reassigned by an admin"


class ReassignmentStage(models.TextChoices):
    CLAIM = "claim", "Stage 1: claim window"
    CONTACT = "contact", "Stage 2: contact window"
    MANUAL = "manual", "Manual"


STAGE_FOR_REASON = {
    ReassignmentReason.UNCLAIMED: ReassignmentStage.CLAIM,
    ReassignmentReason.NO_CONTACT: ReassignmentStage.CONTACT,
    ReassignmentReason.MANUAL: ReassignmentStage.MANUAL,
}


class Lead(TenantOwnedModel):
    """A sales lead with two SLA timers, stored as deadlines.

    Assigned → claim within the claim window (`claim_deadline`) → contact within the
    contact window (`contact_deadline`). A sweep records a missed deadline once in
    `*_sla_breached_at`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by lead_tenant_recent, which leads with it (tests/core/test_indexes.py).
    tenant = models.ForeignKey(
        "teams.Tenant", on_delete=models.CASCADE, related_name="leads", db_index=False
    )
    name = models.CharField(max_length=200)
    phone = models.CharField(max_length=40, blank=True)
    email = models.EmailField(blank=True)
    source = models.CharField(max_length=100, blank=True, help_text="e.g. website, facebook")
    status = models.CharField(max_length=12, choices=LeadStatus.choices, default=LeadStatus.NEW)
    # The agent columns and the team are indexed without their NULLs (lead_by_agent,
    # lead_by_team, lead_by_previous_agent): no query looks for a NULL.
    team = models.ForeignKey(
        "teams.Team",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="leads",
        db_index=False,
    )
    assigned_agent = models.ForeignKey(
        "teams.Membership",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="leads",
        db_index=False,
    )
    assigned_at = models.DateTimeField(null=True, blank=True)
    unassigned_reason = models.CharField(
        max_length=32, choices=UnassignedReason.choices, blank=True
    )
    previous_agent = models.ForeignKey(
        "teams.Membership",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    reassignment_count = models.PositiveIntegerField(default=0)
    reassignment_reason = models.CharField(
        max_length=12, choices=ReassignmentReason.choices, blank=True
    )
    reassigned_at = models.DateTimeField(null=True, blank=True)
    claim_deadline = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    claim_sla_breached_at = models.DateTimeField(null=True, blank=True)
    contact_deadline = models.DateTimeField(null=True, blank=True)
    contacted_at = models.DateTimeField(null=True, blank=True)
    contact_sla_breached_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=LeadStatus.values), name="lead_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(reassignment_reason__in=["", *ReassignmentReason.values]),
                name="lead_reassignment_reason_valid",
            ),
        ]
        indexes = [
            # Stage 1 sweep: assigned, unclaimed leads whose claim window is still open.
            models.Index(
                fields=["claim_deadline"],
                condition=Q(
                    status="new",
                    claim_deadline__isnull=False,
                    claim_sla_breached_at__isnull=True,
                ),
                name="lead_claim_window_open",
            ),
            # Stage 2 sweep: claimed leads whose contact window is still open.
            models.Index(
                fields=["contact_deadline"],
                condition=Q(
                    status="claimed",
                    contact_deadline__isnull=False,
                    contact_sla_breached_at__isnull=True,
                ),
                name="lead_contact_window_open",
            ),
            models.Index(
                fields=["assigned_agent", "status"],
                condition=Q(assigned_agent__isnull=False),
                name="lead_by_agent",
            ),
            models.Index(
                fields=["updated_at"],
                condition=Q(status="new", assigned_agent__isnull=True),
                name="lead_unassigned",
            ),
            models.Index(fields=["tenant", "-created_at"], name="lead_tenant_recent"),
            models.Index(fields=["team"], condition=Q(team__isnull=False), name="lead_by_team"),
            models.Index(
                fields=["previous_agent"],
                condition=Q(previous_agent__isnull=False),
                name="lead_by_previous_agent",
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_LEAD_STATUSES

    @property
    def claim_breached(self) -> bool:
        return self.claim_sla_breached_at is not None

    @property
    def contact_breached(self) -> bool:
        return self.contact_sla_breached_at is not None

    @property
    def open_deadline(self):
        """The deadline running now, if any: claim while new, contact while claimed."""
        if self.status == LeadStatus.NEW:
            return self.claim_deadline
        if self.status == LeadStatus.CLAIMED:
            return self.contact_deadline
        return None


class LeadReassignment(TenantOwnedModel):
    """One move of a lead from one agent to another: the history admins read."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("teams.Tenant", on_delete=models.CASCADE, related_name="+")
    # Indexed by reassignment_by_lead, which leads with it; the agents without their
    # NULLs (reassignment_from_agent, …): a first assignment has no "from", the
    # system's moves no "by".
    lead = models.ForeignKey(
        Lead, on_delete=models.CASCADE, related_name="reassignments", db_index=False
    )
    from_agent = models.ForeignKey(
        "teams.Membership",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    to_agent = models.ForeignKey(
        "teams.Membership", on_delete=models.SET_NULL, null=True, related_name="+", db_index=False
    )
    reassigned_by = models.ForeignKey(
        "teams.Membership",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty when the system reassigned (auto-reassign on breach).",
        db_index=False,
    )
    reason = models.CharField(max_length=12, choices=ReassignmentReason.choices)
    stage = models.CharField(max_length=12, choices=ReassignmentStage.choices)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["lead", "-created_at"], name="reassignment_by_lead"),
            *(
                models.Index(
                    fields=[field],
                    condition=Q(**{f"{field}__isnull": False}),
                    name=f"reassignment_{field}",
                )
                for field in ("from_agent", "to_agent", "reassigned_by")
            ),
        ]

    def __str__(self):
        return f"{self.lead} → {self.to_agent_id} ({self.reason})"


class NotificationKind(models.TextChoices):
    LEAD_ASSIGNED = "lead_assigned", "Lead assigned to you"
    LEAD_REASSIGNED = "lead_reassigned", "Lead reassigned to you"
    CLAIM_SLA_BREACHED = "claim_sla_breached", "Lead not claimed in time"
    CONTACT_SLA_BREACHED = "contact_sla_breached", "Lead not contacted in time"


class Notification(TenantOwnedModel):
    """An in-app notice to one agent, and the state of its email."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("teams.Tenant", on_delete=models.CASCADE, related_name="+")
    recipient = models.ForeignKey(
        "teams.Membership", on_delete=models.CASCADE, related_name="notifications"
    )
    # Indexed by notification_by_lead, which leads with it.
    lead = models.ForeignKey(
        Lead,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        db_index=False,
    )
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    is_read = models.BooleanField(default=False)
    read_at = models.DateTimeField(null=True, blank=True)
    # Makes "one notice per breach per admin" a database rule, even for racing sweeps.
    dedupe_key = models.CharField(max_length=200, blank=True)
    # The notice's email; its delivery status is the outbox's.
    email_message = models.OneToOneField(
        "outbox.OutboundMessage",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="email_of",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["recipient", "dedupe_key"],
                condition=~Q(dedupe_key=""),
                name="notification_dedupe",
            ),
        ]
        indexes = [
            models.Index(
                fields=["recipient", "-created_at"],
                condition=Q(is_read=False),
                name="notification_unread",
            ),
            models.Index(fields=["lead", "recipient"], name="notification_by_lead"),
        ]

    def __str__(self):
        return self.title

    @property
    def email_status(self) -> str:
        """The email's delivery status; "skipped" when the notice has no email."""
        message = self.email_message
        return message.status if message is not None else "skipped"
