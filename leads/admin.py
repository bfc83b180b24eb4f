from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from core.actor import Actor
from core.admin_scope import TenantScopedAdmin, TenantScopedInline, tenant_of_selection
from core.errors import DomainError
from leads.formatting import format_deadline
from leads.models import Lead, LeadReassignment, Notification, ReassignmentReason
from leads.services import close_lead, deadline_passed_phrase, reassign_lead, running_window
from outbox.admin import message_details, message_status
from teams.models import Membership
from teams.selectors import active_agents


class BreachedFilter(admin.SimpleListFilter):
    title = "SLA breached"
    parameter_name = "breached"

    def lookups(self, request, model_admin):
        return [
            ("claim", "Claim window"),
            ("contact", "Contact window"),
            ("any", "Any"),
            ("none", "None"),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "claim":
            return queryset.filter(claim_sla_breached_at__isnull=False)
        if value == "contact":
            return queryset.filter(contact_sla_breached_at__isnull=False)
        if value == "any":
            return queryset.exclude(
                claim_sla_breached_at__isnull=True, contact_sla_breached_at__isnull=True
            )
        if value == "none":
            return queryset.filter(
                claim_sla_breached_at__isnull=True, contact_sla_breached_at__isnull=True
            )
        return queryset


class ReadOnlyInline(TenantScopedInline, admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReassignmentInline(ReadOnlyInline):
    model = LeadReassignment
    fk_name = "lead"
    verbose_name_plural = "Reassignment history"
    fields = ["created_at", "from_agent", "to_agent", "reason", "stage", "reassigned_by", "notes"]
    readonly_fields = fields
    ordering = ["-created_at"]


class NotificationInline(ReadOnlyInline):
    model = Notification
    fields = [
        "created_at",
        "recipient",
        "kind",
        "title",
        "is_read",
        "email_display",
    ]
    readonly_fields = fields
    ordering = ["-created_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("email_message", "recipient__user")

    @admin.display(description="Email")
    def email_display(self, obj):
        return message_details(obj.email_message)


def passed_deadlines(leads, now) -> list[tuple[Lead, str]]:
    """The leads whose running deadline has already passed, each with e.g. "The contact
    deadline passed 12 minutes ago"."""
    passed = []
    for lead in leads:
        window, deadline = running_window(lead)
        if deadline is not None and deadline <= now:
            passed.append((lead, deadline_passed_phrase(window, deadline, now)))
    return passed


class ReassignForm(forms.Form):
    to_agent = forms.ModelChoiceField(queryset=Membership.all_tenants.none(), label="New agent")
    reason = forms.ChoiceField(choices=ReassignmentReason.choices)
    notes = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=2000
    )
    restart_window = forms.BooleanField(
        required=False,
        help_text="Only for “Reassigned by an admin”, which otherwise keeps the deadline; "
        "the other reasons always start a new window.",
    )

    def __init__(self, *args, tenant, leads, **kwargs):
        super().__init__(*args, **kwargs)
        windows = {running_window(lead)[0] for lead in leads} - {None}
        if not passed_deadlines(leads, timezone.now()):
            # Nothing is late: a manual reassignment keeps a deadline still ahead.
            del self.fields["restart_window"]
        else:
            window = windows.pop() if len(windows) == 1 else "claim or contact"
            self.fields["restart_window"].label = f"Restart the {window} window"
        self.fields["to_agent"].queryset = active_agents(tenant=tenant).order_by(
            "user__full_name", "user__email"
        )
        self.fields["to_agent"].label_from_instance = lambda m: (
            f"{m.display_name} <{m.user.email}> · {m.get_role_display()} · "
            f"{m.current_lead_count} open"
        )


@admin.register(Lead)
class LeadAdmin(TenantScopedAdmin):
    change_form_template = "admin/leads/lead/change_form.html"
    list_display = [
        "name",
        "tenant",
        "assigned_agent",
        "status",
        "time_left",
        "claim_breached_flag",
        "contact_breached_flag",
        "reassignment_count",
        "created_at",
    ]
    list_filter = [
        "status",
        BreachedFilter,
        ("assigned_agent", admin.RelatedOnlyFieldListFilter),
        ("tenant", admin.RelatedOnlyFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
        ("reassigned_at", admin.DateFieldListFilter),
    ]
    search_fields = ["name", "phone", "email"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant", "assigned_agent__user"]
    ordering = ["-created_at"]
    actions = ["reassign_selected", "close_selected"]
    inlines = [ReassignmentInline, NotificationInline]
    tenant_admins_may_add = False
    readonly_fields = [
        "id",
        "tenant",
        "status",
        "team",
        "assigned_agent",
        "assigned_at",
        "unassigned_reason",
        "previous_agent",
        "reassignment_count",
        "reassignment_reason",
        "reassigned_at",
        "claim_deadline",
        "claimed_at",
        "claim_sla_breached_at",
        "contact_deadline",
        "contacted_at",
        "contact_sla_breached_at",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["id", "tenant", "name", "phone", "email", "source", "status", "team"]}),
        (
            "Assignment",
            {
                "fields": [
                    "assigned_agent",
                    "assigned_at",
                    "unassigned_reason",
                    "previous_agent",
                    "reassignment_count",
                    "reassignment_reason",
                    "reassigned_at",
                ]
            },
        ),
        (
            "SLA timers",
            {
                "fields": [
                    "claim_deadline",
                    "claimed_at",
                    "claim_sla_breached_at",
                    "contact_deadline",
                    "contacted_at",
                    "contact_sla_breached_at",
                ]
            },
        ),
        ("Times", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="time left")
    def time_left(self, obj):
        deadline = obj.open_deadline
        if deadline is None:
            return "-"
        seconds = int((deadline - timezone.now()).total_seconds())
        if seconds < 0:
            return format_html('<span style="color:#b42318">{} min late</span>', -seconds // 60)
        return f"{seconds // 60}:{seconds % 60:02d} left"

    @admin.display(boolean=True, description="claim late")
    def claim_breached_flag(self, obj):
        return obj.claim_breached

    @admin.display(boolean=True, description="contact late")
    def contact_breached_flag(self, obj):
        return obj.contact_breached

    def has_delete_permission(self, request, obj=None):
        # Deleting would skip the agents' counters and the audit trail: close instead.
        return False

    @admin.action(description="Close selected leads")
    def close_selected(self, request, queryset):
        closed = 0
        for lead in queryset.select_related("tenant"):
            try:
                close_lead(
                    tenant=lead.tenant,
                    lead_id=lead.pk,
                    actor=Actor(label=f"admin:{request.user.email}"),
                    outcome="closed in admin",
                )
                closed += 1
            except DomainError as exc:
                self.message_user(request, f"{lead.name}: {exc.message}", messages.WARNING)
        self.message_user(request, f"Closed {closed} lead(s).", messages.SUCCESS)

    def get_urls(self):
        return [
            path(
                "<uuid:object_id>/reassign/",
                self.admin_site.admin_view(self.reassign_view),
                name="leads_lead_reassign",
            ),
            *super().get_urls(),
        ]

    # --- reassignment: one lead (button) or many (action), same service as the API ----

    def _reassign(self, request, leads, form):
        """Call the service for each lead and report each outcome."""
        data = form.cleaned_data
        done = 0
        for lead in leads:
            reassigned_by = (
                Membership.objects.for_tenant(lead.tenant_id)
                .filter(user=request.user, is_active=True)
                .first()
            )
            try:
                result = reassign_lead(
                    tenant=lead.tenant,
                    lead_id=lead.pk,
                    to_agent_id=data["to_agent"].pk,
                    reason=data["reason"],
                    notes=data["notes"],
                    reassigned_by=reassigned_by,
                    actor=Actor(label=f"admin:{request.user.email}", membership=reassigned_by),
                    restart_window=data.get("restart_window", False),
                )
                done += 1
                self._report_reassigned(request, result)
            except DomainError as exc:
                self.message_user(
                    request, f"{lead.name}: not reassigned. {exc.message}", messages.ERROR
                )
        return done

    def _report_reassigned(self, request, result):
        """One message per lead; it says what became of a deadline that had passed."""
        lead, agent = result.lead, result.lead.assigned_agent.display_name
        text = f"{lead.name}: reassigned to {agent}."
        level = messages.SUCCESS
        if result.breach_at_once:
            text += f" {result.passed_phrase()} and stays passed: {agent} is in breach at once."
            level = messages.WARNING
        elif result.window_restarted and result.reassignment.reason == ReassignmentReason.MANUAL:
            text += (
                f" The {result.window} window was restarted: new deadline "
                f"{format_deadline(result.deadline, lead.tenant)}."
            )
        return self.message_user(request, text, level)

    def _render_reassign(self, request, leads, form, *, bulk: bool):
        context = {
            **self.admin_site.each_context(request),
            "title": "Reassign leads" if bulk else f"Reassign {leads[0].name}",
            "opts": self.model._meta,
            "leads": leads,
            "form": form,
            "bulk": bulk,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "passed": passed_deadlines(leads, timezone.now()),
        }
        return TemplateResponse(request, "admin/leads/lead/reassign.html", context)

    @admin.action(description="Reassign selected leads…")
    def reassign_selected(self, request, queryset):
        leads = list(queryset.select_related("tenant", "assigned_agent__user"))
        tenant = tenant_of_selection(self, request, leads, "leads")
        if tenant is None:
            return None
        if "apply" in request.POST:
            form = ReassignForm(request.POST, tenant=tenant, leads=leads)
            if form.is_valid():
                self._reassign(request, leads, form)
                return None
        else:
            form = ReassignForm(tenant=tenant, leads=leads)
        return self._render_reassign(request, leads, form, bulk=True)

    def reassign_view(self, request, object_id):
        lead = get_object_or_404(
            self.get_queryset(request).select_related("tenant", "assigned_agent__user"),
            pk=object_id,
        )
        if not self.has_change_permission(request, lead):
            raise admin.sites.PermissionDenied
        if request.method == "POST":
            form = ReassignForm(request.POST, tenant=lead.tenant, leads=[lead])
            if form.is_valid() and self._reassign(request, [lead], form):
                return redirect(reverse("admin:leads_lead_change", args=[lead.pk]))
            # Refused (its message says why): the admin's choices stay on the page.
        else:
            form = ReassignForm(tenant=lead.tenant, leads=[lead])
        return self._render_reassign(request, [lead], form, bulk=False)


@admin.register(Notification)
class NotificationAdmin(TenantScopedAdmin):
    list_display = ["title", "recipient", "kind", "is_read", "email_display", "created_at"]
    list_filter = [
        "kind",
        "is_read",
        "email_message__status",
        ("tenant", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["title", "recipient__user__email"]
    list_select_related = ["recipient__user", "tenant", "email_message"]
    ordering = ["-created_at"]
    readonly_fields = [
        *(f.name for f in Notification._meta.fields if f.name != "email_message"),
        "email_details",
    ]

    @admin.display(description="Email", ordering="email_message__status")
    def email_display(self, obj):
        return message_status(obj.email_message)

    @admin.display(description="Email delivery")
    def email_details(self, obj):
        return message_details(obj.email_message)

    tenant_admins_may_add = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
