from django.contrib import admin

from audit.models import ActivityLog


@admin.register(ActivityLog)
class ActivityLogAdmin(admin.ModelAdmin):
    """The audit trail is append-only: nobody adds, edits or deletes it here."""

    list_display = ["created_at", "tenant", "actor_label", "action", "target_type", "target_label"]
    list_filter = ["action", "tenant", "target_type"]
    search_fields = ["actor_label", "action", "target_id", "target_label"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant", "target_type"]
    readonly_fields = [f.name for f in ActivityLog._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
