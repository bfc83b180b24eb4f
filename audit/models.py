import uuid

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Q

from core.scoping import TenantOwnedModel


class ActivityLog(TenantOwnedModel):
    """An append-only domain event: who did what to which object, and why.

    Rows are written only by `audit.services.record_activity`, called from the service
    that made the change, inside its transaction, so an event exists iff the change does.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Indexed by the composite indexes below, which lead with it (tests/core/test_indexes.py).
    tenant = models.ForeignKey(
        "teams.Tenant", on_delete=models.CASCADE, related_name="activity", db_index=False
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=64)
    # The actor columns are indexed without their NULLs (activity_by_actor,
    # activity_by_actor_user): an API key or a job acting writes no entry for nobody.
    actor = models.ForeignKey(
        "teams.Membership",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        help_text="The agent who acted, when a person did.",
    )
    actor_user = models.ForeignKey(
        "teams.User",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        help_text="The person who acted, when a person did (also a superuser with no membership).",
    )
    actor_label = models.CharField(
        max_length=200,
        help_text='The person who acted: an email, "system", or "api_key" for a key acting '
        "on nobody's behalf. How they acted is `via`.",
    )
    # One index serves both the admin's filters on it, equal and prefix (activity_via).
    via = models.CharField(
        max_length=80,
        blank=True,
        help_text='How the person acted: "admin", "api_key:wk_…", "api", "agent_page", '
        '"job:<name>", "command:<name>".',
    )
    target_type = models.ForeignKey(
        ContentType,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,  # activity_target leads with it
    )
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=255, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        default_manager_name = "all_tenants"
        ordering = ["-created_at"]
        verbose_name = "activity log entry"
        verbose_name_plural = "activity log"
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="activity_tenant_recent"),
            models.Index(fields=["tenant", "action", "-created_at"], name="activity_tenant_action"),
            models.Index(fields=["target_type", "target_id"], name="activity_target"),
            models.Index(
                fields=["actor"], condition=Q(actor__isnull=False), name="activity_by_actor"
            ),
            models.Index(
                fields=["actor_user"],
                condition=Q(actor_user__isnull=False),
                name="activity_by_actor_user",
            ),
            # varchar_pattern_ops answers `=` as well as LIKE 'prefix%'.
            models.Index(fields=["via"], opclasses=["varchar_pattern_ops"], name="activity_via"),
        ]

    def __str__(self):
        via = f" via {self.via}" if self.via else ""
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label}{via} {self.action}"
