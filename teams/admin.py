from axes.utils import reset as reset_login_attempts
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from core.actor import Actor
from core.admin_columns import date_column, tenant_column, text_column
from core.admin_scope import TenantScopedAdmin, TenantScopedInline
from core.errors import DomainError
from teams.models import (
    ApiKey,
    AssignmentConfig,
    Membership,
    Presence,
    PresenceSource,
    Team,
    TeamHoliday,
    TeamMember,
    TeamOpeningHours,
    TeamRole,
    TeamSchedule,
    Tenant,
    User,
)
from teams.services import (
    RowChanges,
    authorize_tenant_change,
    create_api_key,
    delete_tenant_record,
    revoke_api_key,
    save_record_with_presence,
    save_tenant_record,
    set_agent_presence,
)

# config/redistribute.py: an agent's open conversations and leads, and the button that
# moves them. It shows both kinds of work, so it lives above inbox and leads; this app
# only links to it by name.
REDISTRIBUTE_URL_NAME = "admin-redistribute-agent"


def admin_actor(request, tenant=None) -> Actor:
    """The person at the keyboard, via the admin (a superuser too: never "system")."""
    membership = None
    if tenant is not None and getattr(tenant, "pk", None):
        membership = Membership.all_tenants.filter(tenant_id=tenant.pk, user=request.user).first()
    return Actor.for_admin(request.user, membership=membership)


def _model_fields(model, names) -> list[str]:
    concrete = {f.name for f in model._meta.concrete_fields}
    return [name for name in names if name in concrete]


def inline_row_changes(formset) -> RowChanges:
    """An inline formset's edits, unsaved, for the service to apply with its parent."""
    formset.save(commit=False)
    model = formset.model
    new_fields = _model_fields(model, formset.form.base_fields)
    saved = [(row, new_fields) for row in formset.new_objects]
    saved += [(row, _model_fields(model, changed)) for row, changed in formset.changed_objects]
    return RowChanges(
        label=str(model._meta.verbose_name_plural), saved=saved, deleted=formset.deleted_objects
    )


def redistribute_url(agent: Membership, next_url: str = "") -> str:
    url = reverse(REDISTRIBUTE_URL_NAME, args=[agent.pk])
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


def offer_redistribution(request, agents: list[Membership]) -> None:
    """After agents went away (offline or deactivated) in a list or on a tenant's page:
    a link per agent to their open work and its Redistribute button."""
    unique = list({agent.pk: agent for agent in agents}.values())
    messages.warning(
        request,
        format_html(
            "Gone offline or deactivated: {}. Open work stays with them until it is moved; "
            "each link shows it, with a button that redistributes it.",
            format_html_join(
                ", ",
                '<a href="{}">{}</a>',
                (
                    (redistribute_url(agent), agent.display_name or agent.user.email)
                    for agent in unique
                ),
            ),
        ),
    )


class OneDoorAdmin(TenantScopedAdmin):
    """Every save and delete of this admin goes through the app's service, which checks
    who may make the change and writes exactly one activity row for it (the record and
    its inline rows together). tests/audit/test_audit_completeness.py holds every
    registered admin to this."""

    def save_model(self, request, obj, form, change):
        # Written in save_related, with the inline rows, as one change.
        pass

    def save_related(self, request, form, formsets, change):
        obj = form.instance
        names = form.changed_data if change else list(form.fields)
        rows = [inline_row_changes(formset) for formset in formsets]
        self._call_service(
            self.save_record, request, form, _model_fields(type(obj), names), rows, change
        )

    def save_record(self, request, form, fields, rows, change):
        obj = form.instance
        save_tenant_record(
            instance=obj, fields=fields, actor=admin_actor(request, obj.tenant), rows=rows
        )

    def delete_model(self, request, obj):
        self._call_service(
            delete_tenant_record, instance=obj, actor=admin_actor(request, obj.tenant)
        )

    def delete_queryset(self, request, queryset):
        # One service call, and one activity row, per deleted record.
        for obj in queryset:
            self.delete_model(request, obj)

    @staticmethod
    def _call_service(function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DomainError as exc:
            raise PermissionDenied(exc.message) from exc


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = [
        text_column("email", "Email", 30),
        text_column("full_name", "Name", 22),
        "is_staff",
        "is_superuser",
        "is_active",
    ]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "full_name"]
    readonly_fields = ["last_login", "date_joined"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Personal info", {"fields": ["full_name"]}),
        (
            "Permissions",
            {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]},
        ),
        ("Important dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "full_name", "password1", "password2"]}),
    ]
    actions = ["unlock_login"]

    @admin.action(description="Unlock login (forget failed login attempts)", permissions=["change"])
    def unlock_login(self, request, queryset):
        # Failed attempts are kept per email in lower case (config.lockout.username).
        # An address that is locked on its own is unlocked under "Access attempts".
        users = list(queryset)
        cleared = sum(reset_login_attempts(username=user.email.lower()) for user in users)
        self.message_user(
            request,
            f"Unlocked the login of {len(users)} user(s): {cleared} failed-attempt record(s) "
            "removed. They can log in again now.",
            messages.SUCCESS,
        )


class MembershipInline(TenantScopedInline, admin.TabularInline):
    model = Membership
    fk_name = "tenant"
    extra = 0
    fields = [
        "user",
        "role",
        "is_active",
        "presence",
        "presence_source",
        "capacity",
        "current_lead_count",
    ]
    readonly_fields = ["presence_source", "current_lead_count"]
    autocomplete_fields = ["user"]
    show_change_link = True


@admin.register(Tenant)
class TenantAdmin(OneDoorAdmin):
    tenant_path = "pk"
    tenant_admins_may_add = False
    tenant_admins_may_delete = False

    def has_delete_permission(self, request, obj=None):
        # Deleting a tenant would erase its audit trail with it: deactivate it instead.
        return False

    def save_record(self, request, form, fields, rows, change):
        obj = form.instance
        # Only the form's changed fields are written (the service's rule): the webhooks
        # app owns `has_active_webhooks`, and a stale page must not write it back.
        actor = admin_actor(request, obj if change else None)
        gone = save_record_with_presence(instance=obj, fields=fields, actor=actor, rows=rows)
        if gone:
            offer_redistribution(request, gone)

    list_display = [
        text_column("name", "Tenant", 28),
        text_column("timezone", "Time zone", 20),
        "windows",
        "auto_reassign_on_breach",
        "is_active",
    ]

    @admin.display(description="Claim / contact")
    def windows(self, obj):
        return f"{obj.claim_window_minutes} / {obj.contact_window_minutes} min"

    list_filter = ["is_active", "auto_reassign_on_breach"]
    search_fields = ["name", "slug", "id"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["id", "created_at"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(OneDoorAdmin):
    ordering = ["tenant__name", "user__email"]
    list_display = [
        text_column("user__full_name", "Agent", 22),
        tenant_column,
        "role",
        "is_active",
        "presence_column",
        "load",
    ]

    @admin.display(description="Leads / cap", ordering="current_lead_count")
    def load(self, obj):
        cap = "no cap" if obj.capacity is None else obj.capacity
        return f"{obj.current_lead_count} / {cap}"

    @admin.display(description="Presence", ordering="presence")
    def presence_column(self, obj):
        # Who set it matters: only presence set on the agent pages lapses to away.
        if not obj.presence_source:
            return obj.get_presence_display()
        return f"{obj.get_presence_display()} ({obj.get_presence_source_display().lower()})"

    list_filter = ["presence", "role", "is_active", "tenant"]
    search_fields = ["user__email", "user__full_name", "id", "tenant__name"]
    list_select_related = ["user", "tenant"]
    autocomplete_fields = ["user", "tenant"]
    readonly_fields = [
        "id",
        "presence_source",
        "presence_changed_at",
        "last_seen_at",
        "current_lead_count",
        "open_session_count",
        "last_assigned_at",
        "created_at",
    ]
    actions = ["set_online", "set_away", "set_offline"]

    def save_record(self, request, form, fields, rows, change):
        """Presence goes through `set_agent_presence` (source "admin"), which records
        its own activity row like every presence change; the other fields through the
        one door. A save that changes both writes one row for each change."""
        obj = form.instance
        gone = save_record_with_presence(
            instance=obj, fields=fields, actor=admin_actor(request, obj.tenant), rows=rows
        )
        request.agent_went_away = bool(gone)

    def response_change(self, request, obj):
        response = super().response_change(request, obj)
        if getattr(request, "agent_went_away", False) and isinstance(
            response, HttpResponseRedirect
        ):
            # On to their open work (the page goes on to where the save would have gone
            # when there is none).
            return HttpResponseRedirect(redistribute_url(obj, response.url))
        return response

    @admin.action(description="Set selected agents online", permissions=["change"])
    def set_online(self, request, queryset):
        return self._set_presence(request, queryset, Presence.ONLINE)

    @admin.action(description="Set selected agents away", permissions=["change"])
    def set_away(self, request, queryset):
        return self._set_presence(request, queryset, Presence.AWAY)

    @admin.action(description="Set selected agents offline", permissions=["change"])
    def set_offline(self, request, queryset):
        return self._set_presence(request, queryset, Presence.OFFLINE)

    def _set_presence(self, request, queryset, presence: str):
        """One service call, and one activity row, per agent whose presence changed."""
        agents = list(queryset.select_related("user", "tenant"))
        changed = 0
        for agent in agents:
            actor = admin_actor(request, agent.tenant)
            self._call_service(authorize_tenant_change, actor=actor, tenant=agent.tenant)
            before = agent.presence
            set_agent_presence(
                membership=agent, presence=presence, actor=actor, source=PresenceSource.ADMIN
            )
            changed += before != presence
        label = Presence(presence).label.lower()
        self.message_user(
            request,
            f"Set {changed} agent(s) {label}"
            + (f"; {len(agents) - changed} already were." if changed < len(agents) else "."),
            messages.SUCCESS,
        )
        if presence != Presence.OFFLINE or not agents:
            return None
        if len(agents) == 1:
            return HttpResponseRedirect(redistribute_url(agents[0], request.get_full_path()))
        offer_redistribution(request, agents)
        return None


class TeamMemberInline(TenantScopedInline, admin.TabularInline):
    model = TeamMember
    extra = 0
    fields = ["membership", "role"]
    autocomplete_fields = ["membership"]

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        if obj is not None:
            # Only the team's own tenant's agents and roles can be chosen.
            fields = formset.form.base_fields
            fields["membership"].queryset = Membership.objects.for_tenant(obj.tenant)
            fields["role"].queryset = TeamRole.objects.for_tenant(obj.tenant)
        return formset


@admin.register(Team)
class TeamAdmin(OneDoorAdmin):
    ordering = ["tenant__name", "name"]
    list_display = [
        text_column("name", "Team", 26),
        tenant_column,
        "is_default",
        "member_count",
        "strategy",
    ]
    list_filter = ["is_default", "tenant"]
    search_fields = ["name", "id", "tenant__name"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]
    readonly_fields = ["id", "created_at"]
    inlines = [TeamMemberInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(member_total=Count("members", distinct=True))
            .select_related("assignment_config")
        )

    @admin.display(description="members", ordering="member_total")
    def member_count(self, obj):
        return obj.member_total

    @admin.display(description="strategy")
    def strategy(self, obj):
        config = getattr(obj, "assignment_config", None)
        return config.get_strategy_display() if config else "tenant default"


@admin.register(TeamRole)
class TeamRoleAdmin(OneDoorAdmin):
    list_display = [
        text_column("name", "Role", 24),
        tenant_column,
        text_column("description", "Description", 40),
    ]
    list_filter = ["tenant"]
    search_fields = ["name", "tenant__name"]
    autocomplete_fields = ["tenant"]


@admin.register(TeamMember)
class TeamMemberAdmin(OneDoorAdmin):
    list_display = [
        text_column("membership__user__full_name", "Member", 22),
        text_column("team__name", "Team", 22),
        text_column("role__name", "Role", 18),
        tenant_column,
    ]
    list_filter = ["tenant", "team"]
    search_fields = ["membership__user__email", "team__name"]
    list_select_related = ["membership__user", "membership__tenant", "team", "role", "tenant"]
    autocomplete_fields = ["tenant", "team", "membership"]


class OpeningHoursInline(TenantScopedInline, admin.TabularInline):
    model = TeamOpeningHours
    extra = 0
    fields = ["weekday", "opens_at", "closes_at"]


class HolidayInline(TenantScopedInline, admin.TabularInline):
    model = TeamHoliday
    extra = 0
    fields = ["date", "name"]


@admin.register(TeamSchedule)
class TeamScheduleAdmin(OneDoorAdmin):
    list_display = [
        text_column("team__name", "Team", 24),
        tenant_column,
        text_column("timezone", "Time zone", 20),
        "is_enabled",
    ]
    list_filter = ["is_enabled", "tenant"]
    search_fields = ["team__name", "tenant__name"]
    list_select_related = ["team", "tenant"]
    autocomplete_fields = ["tenant", "team"]
    inlines = [OpeningHoursInline, HolidayInline]


@admin.register(AssignmentConfig)
class AssignmentConfigAdmin(OneDoorAdmin):
    list_display = [
        text_column("team__name", "Team", 20, empty="(whole tenant)"),
        tenant_column,
        "strategy",
        "is_enabled",
        "waterfall_display",
    ]
    list_filter = ["strategy", "is_enabled", "tenant"]
    search_fields = ["tenant__name", "team__name"]
    list_select_related = ["tenant", "team"]
    autocomplete_fields = ["tenant", "team"]

    @admin.display(description="waterfall")
    def waterfall_display(self, obj):
        return " → ".join(obj.waterfall)


@admin.register(ApiKey)
class ApiKeyAdmin(OneDoorAdmin):
    ordering = ["-created_at"]
    list_display = [
        text_column("name", "Name", 24),
        "prefix_display",
        tenant_column,
        "is_active",
        date_column("last_used_at", "Last used"),
    ]
    list_filter = ["is_active", "tenant"]
    search_fields = ["name", "prefix", "tenant__name"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]
    fields = ["tenant", "name", "prefix", "is_active", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "is_active", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_selected"]

    @admin.display(description="prefix", ordering="prefix")
    def prefix_display(self, obj):
        return format_html("<code>{}…</code>", obj.prefix)

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "tenant"] if obj else self.readonly_fields

    def save_record(self, request, form, fields, rows, change):
        obj = form.instance
        if change:
            super().save_record(request, form, fields, rows, change)
            return
        api_key, plaintext = create_api_key(
            tenant=obj.tenant,
            name=obj.name,
            actor=admin_actor(request, obj.tenant),
            created_by=request.user,
        )
        obj.pk = api_key.pk
        obj.prefix = api_key.prefix
        messages.warning(
            request,
            format_html(
                "Copy the new API key now, it will not be shown again: <code>{}</code>", plaintext
            ),
        )

    @admin.action(description="Revoke selected API keys")
    def revoke_selected(self, request, queryset):
        revoked = 0
        for api_key in queryset.filter(is_active=True):
            self._call_service(
                revoke_api_key, api_key=api_key, actor=admin_actor(request, api_key.tenant)
            )
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
