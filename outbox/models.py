import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.scoping import TenantOwnedModel


class MessageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


FINAL_STATUSES = (MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.SKIPPED)


class OutboundMessage(TenantOwnedModel):
    """One message to the outside (a WhatsApp text, an email, a webhook call).

    Written in the same transaction as the change that causes it (transactional outbox),
    so it exists exactly when the change does. Workers claim due rows, send them through
    their channel and store the outcome here; the retry budget lives on the row.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "teams.Tenant",
        on_delete=models.CASCADE,
        related_name="outbound_messages",
        db_index=False,  # outbox_tenant_recent leads with it
    )
    channel = models.CharField(max_length=32)
    kind = models.CharField(max_length=64, blank=True, help_text="What the message is about.")
    target = models.CharField(max_length=2048, help_text="Phone number, address or URL.")
    endpoint_key = models.CharField(max_length=255, blank=True)
    ordering_key = models.CharField(
        max_length=255,
        blank=True,
        help_text="Messages with the same key are delivered one at a time, oldest first.",
    )
    payload = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(
        max_length=255, unique=True, help_text="Sent to the provider with every attempt."
    )
    status = models.CharField(
        max_length=10, choices=MessageStatus.choices, default=MessageStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    next_attempt_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True)
    provider_message_id = models.CharField(max_length=255, blank=True)
    # Set by outbox.services.build_message, strictly increasing within a process.
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        default_manager_name = "all_tenants"
        verbose_name = "outbound message"
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=MessageStatus.values), name="outbox_status_valid"
            ),
            models.CheckConstraint(
                condition=~Q(status="sending") | Q(lease_expires_at__isnull=False),
                name="outbox_sending_has_lease",
            ),
        ]
        indexes = [
            # The claim: due pending messages, and sends whose worker died (lease over).
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="outbox_due",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="sending"),
                name="outbox_in_flight",
            ),
            # "Is an older message of the same ordering key still on its way?"
            models.Index(
                fields=["ordering_key", "created_at"],
                condition=Q(status__in=["pending", "sending"]) & ~Q(ordering_key=""),
                name="outbox_ordered_open",
            ),
            models.Index(fields=["tenant", "-created_at"], name="outbox_tenant_recent"),
            models.Index(fields=["status", "-created_at"], name="outbox_status_recent"),
        ]

    def __str__(self):
        return f"{self.kind or self.channel} to {self.target}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES
