import uuid

from django.db import models
from django.db.models import Q

from core.scoping import TenantOwnedModel


class WebhookEndpoint(TenantOwnedModel):
    """A URL of the tenant's systems that receives signed events (Standard Webhooks)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(
        "teams.Tenant", on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2048)
    # Event types it wants; empty means every event.
    events = models.JSONField(default=list, blank=True)
    description = models.CharField(max_length=500, blank=True)
    is_active = models.BooleanField(default=True)
    # `whsec_<base64>`, encrypted with CRM_ENCRYPTION_KEYS (core.crypto).
    secret_encrypted = models.TextField(editable=False)
    disabled_reason = models.CharField(max_length=500, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # When the current run of failures began (None while deliveries succeed).
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        default_manager_name = "all_tenants"
        verbose_name = "webhook endpoint"
        indexes = [
            models.Index(fields=["tenant", "is_active"], name="webhook_endpoint_tenant"),
            models.Index(
                fields=["failing_since"],
                condition=Q(is_active=True, failing_since__isnull=False),
                name="webhook_endpoint_failing",
            ),
        ]

    def __str__(self):
        return self.url

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


class WebhookAttempt(TenantOwnedModel):
    """One HTTP attempt to deliver one event to one endpoint: the delivery log."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("teams.Tenant", on_delete=models.CASCADE, related_name="+")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="attempts")
    message = models.ForeignKey(
        "outbox.OutboundMessage", on_delete=models.SET_NULL, null=True, related_name="+"
    )
    webhook_id = models.CharField(max_length=64, db_index=True)
    event_type = models.CharField(max_length=64)
    attempted_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    response_body = models.TextField(blank=True)  # at most 1 KB
    error = models.TextField(blank=True)
    succeeded = models.BooleanField(default=False)

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["-attempted_at"]
        indexes = [
            models.Index(fields=["endpoint", "-attempted_at"], name="webhook_attempt_recent"),
        ]

    def __str__(self):
        return f"{self.event_type} → {self.status_code or self.error[:40]}"
