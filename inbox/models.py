import uuid

from django.db import models
from django.db.models import Q

from core.scoping import TenantOwnedModel
from teams.routing.reasons import UnassignedReason


class Channel(models.TextChoices):
    WHATSAPP = "whatsapp", "WhatsApp"
    WEBCHAT = "webchat", "Web chat"
    INSTAGRAM = "instagram", "Instagram"
    MESSENGER = "messenger", "Messenger"
    TELEGRAM = "telegram", "Telegram"
    SMS = "sms", "SMS"
    EMAIL = "email", "Email"


CHANNEL_LABELS = dict(Channel.choices)


class ConfirmationSkipReason(models.TextChoices):
    """Why a handover queued no confirmation message (the answer's
    `confirmationSkippedReason`)."""

    NOT_REQUESTED = "not_requested", "Not requested (sendHandoverMessage was false)"
    NO_SENDER_FOR_CHANNEL = "no_sender_for_channel", "No sender for this channel"
    RECENTLY_SENT = "recently_sent", "Sent recently (within the tenant's quiet period)"


class SessionStatus(models.TextChoices):
    OPEN = "open", "Open"
    CLOSED = "closed", "Closed"


ONE_OPEN_SESSION_PER_CONTACT = "session_one_open_per_contact"


class InboxSession(TenantOwnedModel):
    """A contact's conversation on one channel, handed over to a human agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by session_tenant_recent, which leads with it (tests/core/test_indexes.py).
    tenant = models.ForeignKey(
        "teams.Tenant", on_delete=models.CASCADE, related_name="sessions", db_index=False
    )
    contact_id = models.CharField(max_length=128)
    contact_name = models.CharField(max_length=200, blank=True)
    channel = models.CharField(max_length=20, choices=Channel.choices, default=Channel.WHATSAPP)
    context = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=10, choices=SessionStatus.choices, default=SessionStatus.OPEN
    )
    # Indexed without their NULLs (session_by_team, session_by_agent): no query looks
    # for a NULL, and a handover without a team would write an entry for nothing.
    team = models.ForeignKey(
        "teams.Team",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sessions",
        db_index=False,
    )
    assigned_agent = models.ForeignKey(
        "teams.Membership",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sessions",
        db_index=False,
    )
    assigned_at = models.DateTimeField(null=True, blank=True)
    strategy = models.CharField(max_length=20, blank=True)
    unassigned_reason = models.CharField(
        max_length=32, choices=UnassignedReason.choices, blank=True
    )
    last_assignment_attempt = models.JSONField(
        default=dict,
        blank=True,
        help_text="The latest routing attempt: strategy, tiers tried and agents each gave.",
    )
    # The latest "Connecting you to an agent..." message; its status is the outbox's.
    confirmation_message = models.OneToOneField(
        "outbox.OutboundMessage",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="confirmation_of",
    )
    # Why the session has no confirmation message; blank once one is queued.
    confirmation_skipped_reason = models.CharField(
        max_length=32, choices=ConfirmationSkipReason.choices, blank=True
    )
    # The accept window (tenant setting): the assigned agent accepts before the deadline
    # or the accept sweep moves the session on, never back to anyone in missed_agent_ids.
    accept_deadline = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    accept_misses = models.PositiveSmallIntegerField(default=0)
    missed_agent_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "contact_id", "channel"],
                condition=Q(status="open"),
                name=ONE_OPEN_SESSION_PER_CONTACT,
            ),
            models.CheckConstraint(
                condition=Q(status__in=SessionStatus.values), name="session_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(assigned_agent__isnull=True) | Q(unassigned_reason=""),
                name="session_assigned_has_no_reason",
            ),
        ]
        indexes = [
            # The retry sweep: open unassigned sessions, least recently tried first.
            models.Index(
                fields=["updated_at"],
                condition=Q(status="open", assigned_agent__isnull=True),
                name="session_open_unassigned",
            ),
            models.Index(fields=["tenant", "-created_at"], name="session_tenant_recent"),
            models.Index(fields=["team"], condition=Q(team__isnull=False), name="session_by_team"),
            # An agent's sessions, and their open ones (one index, one entry a session).
            models.Index(
                fields=["assigned_agent", "status"],
                condition=Q(assigned_agent__isnull=False),
                name="session_by_agent",
            ),
            # The accept sweep: open sessions waiting for their agent to accept.
            models.Index(
                fields=["accept_deadline"],
                condition=Q(status="open", accepted_at__isnull=True, accept_deadline__isnull=False),
                name="session_awaiting_accept",
            ),
        ]

    def __str__(self):
        # The label as get_channel_display() gives it, without rebuilding the choices'
        # lookup on every call (a handover names its session in two activity rows).
        channel = CHANNEL_LABELS.get(self.channel, self.channel)
        return f"{self.contact_name or self.contact_id} ({channel})"

    @property
    def is_assigned(self) -> bool:
        return self.assigned_agent_id is not None

    @property
    def confirmation_status(self) -> str:
        """The confirmation message's delivery status; "skipped" when none was asked for."""
        message = self.confirmation_message
        return message.status if message is not None else "skipped"


class SessionNoticeKind(models.TextChoices):
    SESSION_ASSIGNED = "session_assigned", "Conversation assigned to you"
    SESSION_TRANSFERRED = "session_transferred", "Conversation transferred to you"
    ACCEPT_MISSED = "session_accept_missed", "Conversation not accepted in time"
    NOT_ACCEPTED = "session_not_accepted", "Conversation left unassigned: nobody accepted it"


class SessionNotice(TenantOwnedModel):
    """An in-app notice to one agent about a conversation, and the state of its email."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("teams.Tenant", on_delete=models.CASCADE, related_name="+")
    recipient = models.ForeignKey(
        "teams.Membership",
        on_delete=models.CASCADE,
        related_name="session_notices",
        db_index=False,  # session_notice_recent leads with it
    )
    # Indexed without its NULLs (session_notice_by_session).
    session = models.ForeignKey(
        InboxSession,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notices",
        db_index=False,
    )
    kind = models.CharField(max_length=32, choices=SessionNoticeKind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    is_read = models.BooleanField(default=False)
    read_at = models.DateTimeField(null=True, blank=True)
    # "One notice per miss per person" as a database rule, even for racing sweeps.
    dedupe_key = models.CharField(max_length=200, blank=True)
    email_message = models.OneToOneField(
        "outbox.OutboundMessage",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="session_notice_of",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["recipient", "dedupe_key"],
                condition=~Q(dedupe_key=""),
                name="session_notice_dedupe",
            ),
        ]
        indexes = [
            models.Index(
                fields=["recipient", "-created_at"],
                condition=Q(is_read=False),
                name="session_notice_unread",
            ),
            models.Index(fields=["recipient", "-created_at"], name="session_notice_recent"),
            models.Index(
                fields=["session"],
                condition=Q(session__isnull=False),
                name="session_notice_by_session",
            ),
        ]

    def __str__(self):
        return self.title


class HandoverRequest(TenantOwnedModel):
    """An `Idempotency-Key` seen on a handover: replays the first answer for 24 hours."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("teams.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    session = models.ForeignKey(
        InboxSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        default_manager_name = "all_tenants"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="handover_request_key_once"),
        ]

    def __str__(self):
        return self.key


class CrmIntegration(TenantOwnedModel):
    """The tenant's CRM, through which WhatsApp confirmation messages are sent.

    The CRM API key is stored encrypted (see `core.crypto`); `config` holds the
    WhatsApp `phoneNumberId`.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "teams.Tenant", on_delete=models.CASCADE, related_name="crm_integrations"
    )
    name = models.CharField(max_length=120)
    is_active = models.BooleanField(default=False)
    api_url = models.URLField(blank=True, help_text="Base URL, e.g. https://crm.example.com")
    api_key_encrypted = models.TextField(blank=True, editable=False)
    config = models.JSONField(
        default=dict, blank=True, help_text='e.g. {"phoneNumberId": "1234567890"}'
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        default_manager_name = "all_tenants"
        verbose_name = "CRM integration"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(is_active=True), name="crm_one_active_per_tenant"
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)

    @property
    def phone_number_id(self) -> str:
        value = (self.config or {}).get("phoneNumberId") if isinstance(self.config, dict) else None
        return str(value) if value else ""

    def missing_parts(self) -> list[str]:
        """What the integration lacks before it can send a message."""
        missing = []
        if not self.is_active:
            missing.append("isActive")
        if not self.api_url:
            missing.append("apiUrl")
        if not self.api_key_encrypted:
            missing.append("apiKey")
        if not self.phone_number_id:
            missing.append("config.phoneNumberId")
        return missing
