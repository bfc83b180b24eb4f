from django.apps import apps
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join

from audit.models import ActivityLog
from core.admin_columns import date_column, short
from core.admin_scope import ReadOnlyAdminMixin, TenantScopedAdmin

# Ids the services put in `data`, and the rows they name. Models by label, as in a
# ForeignKey: the audit app sits below the apps whose rows it names.
REFERENCES = {
    "agent_id": "teams.Membership",
    "to_agent_id": "teams.Membership",
    "from_agent_id": "teams.Membership",
    "assigned_agent_id": "teams.Membership",
    "previous_agent_id": "teams.Membership",
    "team_id": "teams.Team",
    "lead_id": "leads.Lead",
    "session_id": "inbox.InboxSession",
    "endpoint_id": "webhooks.WebhookEndpoint",
    "message_id": "outbox.OutboundMessage",
}
# Keys shown in words, in this order, after the references.
PLAIN_KEYS = (
    "reason",
    "strategy",
    "tier",
    "trigger",
    "outcome",
    "notes",
    "url",
    "name",
    "prefix",
    "email",
    "user",
    "role",
    "row",
)
SUMMARY_ITEMS = 6


def _label(obj) -> str:
    return getattr(obj, "display_name", None) or str(obj)


def _admin_url(model, pk) -> str | None:
    try:
        return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[pk])
    except NoReverseMatch:
        return None


def resolve_references(rows) -> dict:
    """{(model label, id): (name, admin url)} for every id the rows' data name: one query
    per kind of row for the whole page."""
    wanted: dict[str, set] = {}
    for row in rows:
        for key, label in REFERENCES.items():
            value = (row.data or {}).get(key)
            if value:
                wanted.setdefault(label, set()).add(str(value))
    names = {}
    for label, ids in wanted.items():
        model = apps.get_model(label)
        related = [f.name for f in model._meta.concrete_fields if f.name == "user"]
        found = model._base_manager.select_related(*related).filter(pk__in=ids)
        for obj in found:
            names[(label, str(obj.pk))] = (_label(obj), _admin_url(model, obj.pk))
    return names


class ActivityChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        names = resolve_references(self.result_list)
        for row in self.result_list:
            row.reference_names = names


def _link(name, url):
    return format_html('<a href="{}">{}</a>', url, name) if url else name


def _changes(changes: dict) -> list:
    return [
        format_html("{}: {} → {}", field, _shown(old), _shown(new))
        for field, (old, new) in changes.items()
    ]


def _shown(value) -> str:
    return "—" if value in (None, "") else str(value)


def render_details(row, names: dict | None = None) -> str:
    """The row's `data` in words: people, leads, sessions and teams by name with links to
    their admin pages, field changes as old → new."""
    data = row.data or {}
    names = names if names is not None else resolve_references([row])
    parts = []
    for key, label in REFERENCES.items():
        value = data.get(key)
        if value:
            name, url = names.get((label, str(value)), (f"{label.split('.')[1]} {value}", None))
            parts.append(
                format_html("{}: {}", key.removesuffix("_id").replace("_", " "), _link(name, url))
            )
    parts += _changes(data.get("changes") or {})
    for row_change in data.get("rows") or []:
        text = f"{row_change['rows']}: {row_change['op']} {row_change['row']}"
        parts.append(format_html("{}", text))
        parts += _changes(row_change.get("changes") or {})
    parts += [
        format_html("{}: {}", key, data[key])
        for key in PLAIN_KEYS
        if data.get(key) not in (None, "", [], {})
    ]
    if len(parts) > SUMMARY_ITEMS:
        parts = [*parts[:SUMMARY_ITEMS], f"… {len(parts) - SUMMARY_ITEMS} more"]
    return format_html_join("; ", "{}", ((part,) for part in parts)) or "-"


class PersonFilter(admin.SimpleListFilter):
    """Who acted: each person once, however they acted (see "via")."""

    title = "person"
    parameter_name = "person"

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


class ViaFilter(admin.SimpleListFilter):
    """How they acted: the admin, an API key, a job, a command, the agent pages."""

    title = "via"
    parameter_name = "via"
    KINDS = {
        "admin": "the admin",
        "api_key": "an API key",
        "api": "the API (signed in)",
        "agent_page": "the agent pages",
        "job": "a scheduled job",
        "command": "a command",
    }

    def lookups(self, request, model_admin):
        return list(self.KINDS.items())

    def queryset(self, request, queryset):
        value = self.value()
        if value in ("api_key", "job", "command"):
            return queryset.filter(via__startswith=f"{value}:")
        if value in self.KINDS:
            return queryset.filter(via=value)
        return queryset


@admin.register(ActivityLog)
class ActivityLogAdmin(ReadOnlyAdminMixin, TenantScopedAdmin):
    """The audit trail is append-only: nobody adds, edits or deletes it, here or anywhere."""

    list_display = [
        date_column("created_at", "When"),
        "person",
        "via",
        "action",
        "target_link",
        "summary",
    ]
    list_filter = ["action", PersonFilter, ViaFilter, "target_type", "tenant"]
    search_fields = ["actor_label", "via", "action", "target_id", "target_label"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant", "target_type", "actor"]
    ordering = ["-created_at"]
    readonly_fields = [
        "created_at",
        "tenant",
        "action",
        "person",
        "via",
        "target_link",
        "details",
        "data",
    ]
    fields = readonly_fields

    def get_changelist(self, request, **kwargs):
        return ActivityChangeList

    @admin.display(description="person", ordering="actor_label")
    def person(self, obj):
        # The agent's page in the tenant, which its admins can open (the user page is
        # superuser-only).
        if obj.actor_id:
            return _link(short(obj.actor_label, 20), _admin_url(obj.actor.__class__, obj.actor_id))
        return short(obj.actor_label, 20)

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
            return short(obj.target_label or obj.target_id, 24)
        return format_html('<a href="{}">{}</a>', url, short(obj.target_label or obj.target_id, 24))

    @admin.display(description="details")
    def summary(self, obj):
        return render_details(obj, getattr(obj, "reference_names", None))

    @admin.display(description="details")
    def details(self, obj):
        return render_details(obj)
