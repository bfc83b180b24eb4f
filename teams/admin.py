from axes.utils import reset as reset_login_attempts
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Count
from django.utils.html import format_html

from core.actor import Actor
from core.admin_scope import TenantScopedAdmin, TenantScopedInline
from teams.models import (
    ApiKey,
    AssignmentConfig,
    Membership,
    Team,
    TeamHoliday,
    TeamMember,
    TeamOpeningHours,
    TeamRole,
    TeamSchedule,
    Tenant,
    User,
)
from teams.services import announce_agent_available, create_api_key, revoke_api_key


def admin_actor(request) -> Actor:
    return Actor(label=f"admin:{request.user.email}")


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "full_name", "is_staff", "is_superuser", "is_active", "date_joined"]
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
    fields = ["user", "role", "is_active", "is_available", "capacity", "current_lead_count"]
    readonly_fields = ["current_lead_count"]
    autocomplete_fields = ["user"]
    show_change_link = True


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    tenant_path = "pk"
    tenant_admins_may_add = False
    tenant_admins_may_delete = False

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            return
        # Only the fields of the form: `has_active_webhooks` belongs to the webhooks app,
        # and a page opened before an endpoint changed must not write back a stale flag.
        obj.save(update_fields=form.changed_data)

    list_display = [
        "name",
        "slug",
        "timezone",
        "claim_window_minutes",
        "contact_window_minutes",
        "auto_reassign_on_breach",
        "is_active",
        "created_at",
    ]
    list_filter = ["is_active", "auto_reassign_on_breach"]
    search_fields = ["name", "slug", "id"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["id", "created_at"]
    inlines = [MembershipInline]

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        for inline_form in formset.forms:
            membership = inline_form.instance
            turned_on = {"is_available", "is_active"} & set(inline_form.changed_data)
            if membership.pk and turned_on and membership.is_available and membership.is_active:
                announce_agent_available(membership=membership)


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    ordering = ["tenant__name", "user__email"]
    list_display = [
        "user",
        "tenant",
        "role",
        "is_active",
        "is_available",
        "capacity",
        "current_lead_count",
        "last_assigned_at",
    ]
    list_filter = ["role", "is_active", "is_available", "tenant"]
    search_fields = ["user__email", "user__full_name", "id", "tenant__name"]
    list_select_related = ["user", "tenant"]
    autocomplete_fields = ["user", "tenant"]
    readonly_fields = ["id", "current_lead_count", "last_assigned_at", "created_at"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        turned_on = {"is_available", "is_active"} & set(form.changed_data)
        if turned_on and obj.is_available and obj.is_active:
            announce_agent_available(membership=obj)


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
class TeamAdmin(TenantScopedAdmin):
    ordering = ["tenant__name", "name"]
    list_display = ["name", "tenant", "is_default", "member_count", "strategy", "created_at"]
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

    def save_formset(self, request, form, formset, change):
        for member in formset.save(commit=False):
            member.tenant = form.instance.tenant
            member.save()
        for deleted in formset.deleted_objects:
            deleted.delete()


@admin.register(TeamRole)
class TeamRoleAdmin(TenantScopedAdmin):
    list_display = ["name", "tenant", "description"]
    list_filter = ["tenant"]
    search_fields = ["name", "tenant__name"]
    autocomplete_fields = ["tenant"]


@admin.register(TeamMember)
class TeamMemberAdmin(TenantScopedAdmin):
    list_display = ["membership", "team", "role", "tenant", "created_at"]
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
class TeamScheduleAdmin(TenantScopedAdmin):
    list_display = ["team", "tenant", "timezone", "is_enabled"]
    list_filter = ["is_enabled", "tenant"]
    search_fields = ["team__name", "tenant__name"]
    list_select_related = ["team", "tenant"]
    autocomplete_fields = ["tenant", "team"]
    inlines = [OpeningHoursInline, HolidayInline]

    def save_formset(self, request, form, formset, change):
        for row in formset.save(commit=False):
            row.tenant = form.instance.tenant
            row.save()
        for deleted in formset.deleted_objects:
            deleted.delete()


@admin.register(AssignmentConfig)
class AssignmentConfigAdmin(TenantScopedAdmin):
    list_display = ["__str__", "tenant", "team", "strategy", "is_enabled", "waterfall_display"]
    list_filter = ["strategy", "is_enabled", "tenant"]
    search_fields = ["tenant__name", "team__name"]
    list_select_related = ["tenant", "team"]
    autocomplete_fields = ["tenant", "team"]

    @admin.display(description="waterfall")
    def waterfall_display(self, obj):
        return " → ".join(obj.waterfall)


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedAdmin):
    ordering = ["-created_at"]
    list_display = ["name", "prefix_display", "tenant", "is_active", "created_at", "last_used_at"]
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

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, plaintext = create_api_key(
            tenant=obj.tenant, name=obj.name, actor=admin_actor(request), created_by=request.user
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
            revoke_api_key(api_key=api_key, actor=admin_actor(request))
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
