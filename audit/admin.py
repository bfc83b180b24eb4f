from django.contrib import admin
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from audit.models import ActivityLog
from core.admin_scope import TenantScopedAdmin


class ActorFilter(admin.SimpleListFilter):
    title = "actor"
    parameter_name = "actor"

    def lookups(self, request, model_admin):
        labels = (
            model_admin.get_queryset(request)
            .order_by("actor_label")
            .values_list("actor_label", flat=True)
            .distinct()[:50]
        )
        return [(label, label) for label in labels]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(actor_label=self.value())
        return queryset


@admin.register(ActivityLog)
class ActivityLogAdmin(TenantScopedAdmin):
    """The audit trail is append-only: nobody adds, edits or deletes it, here or anywhere."""

    list_display = ["created_at", "tenant", "actor_label", "action", "target_link", "summary"]
    list_filter = ["action", ActorFilter, "target_type", "tenant"]
    search_fields = ["actor_label", "action", "target_id", "target_label"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant", "target_type", "actor__user"]
    ordering = ["-created_at"]
    readonly_fields = [
        "created_at",
        "tenant",
        "action",
        "actor",
        "actor_label",
        "target_type",
        "target_id",
        "target_link",
        "data",
    ]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="object")
    def target_link(self, obj):
        if not obj.target_type_id:
            return "-"
        try:
            url = reverse(
                f"admin:{obj.target_type.app_label}_{obj.target_type.model}_change",
                args=[obj.target_id],
            )
        except NoReverseMatch:
            return obj.target_label or obj.target_id
        return format_html('<a href="{}">{}</a>', url, obj.target_label or obj.target_id)

    @admin.display(description="details")
    def summary(self, obj):
        data = obj.data or {}
        keys = ("reason", "strategy", "tier", "agent_email", "to_agent_id", "notes")
        parts = [f"{key}={data[key]}" for key in keys if data.get(key)]
        return ", ".join(parts)[:120]
