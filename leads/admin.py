from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from core.actor import Actor
from core.admin_columns import TenantColumnMixin, short, short_date, warning
from core.admin_scope import (
    ReadOnlyAdminMixin,
    TenantScopedAdmin,
    TenantScopedInline,
    tenant_of_selection,
)
from core.errors import DomainError
from leads.formatting import format_deadline, time_to_deadline
from leads.models import Lead, LeadReassignment, LeadStatus, Notification, ReassignmentReason
from leads.services import close_lead, deadline_passed_phrase, reassign_lead, running_window
from outbox.admin import message_details, message_status
from teams.admin import OneDoorAdmin
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


class ReadOnlyInline(ReadOnlyAdminMixin, TenantScopedInline, admin.TabularInline):
    extra = 0
    can_delete = False


class ReassignmentInline(ReadOnlyInline):
    model = LeadReassignment
    fk_name = "lead"
    verbose_name_plural = "Reassignment history"
    # Django's tabular inline captions each row with str(row), which names the new agent
    # by id; this copy says "Alice Agent → Tom Target".
    template = "admin/leads/lead/reassignment_inline.html"
    fields = ["created_at", "from_agent", "to_agent", "reason", "stage", "reassigned_by", "notes"]
    readonly_fields = fields
    ordering = ["-created_at"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("from_agent__user", "to_agent__user", "reassigned_by__user")
        )


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
        # Moving a lead to the agent who holds it is refused anyway: not on offer.
        holders = {lead.assigned_agent_id for lead in leads} - {None}
        self.fields["to_agent"].queryset = (
            active_agents(tenant=tenant)
            .exclude(pk__in=holders)
            .order_by("user__full_name", "user__email")
        )
        self.fields["to_agent"].error_messages["invalid_choice"] = (
            "Choose an agent from the list: the agent holding the lead is not on offer, "
            "nor is one who left."
        )
        self.fields["to_agent"].label_from_instance = agent_with_lead_load


def capacity_text(capacity) -> str:
    return "no cap" if capacity is None else f"cap {capacity}"


def agent_with_lead_load(membership) -> str:
    """ "Alice Agent — 3 leads / cap 5 · away": whom to pick at a glance."""
    count = membership.current_lead_count
    text = (
        f"{membership.display_name} — {count} lead{'' if count == 1 else 's'} / "
        f"{capacity_text(membership.capacity)}"
    )
    return text if membership.is_online else f"{text} · {membership.get_presence_display().lower()}"


@admin.register(Lead)
class LeadAdmin(TenantColumnMixin, OneDoorAdmin):
    change_form_template = "admin/leads/lead/change_form.html"
    list_display = [
        "name_display",
        "status_display",
        "agent_display",
        "tenant_display",
        "due",
        "sla_marks",
        "row_actions",
    ]
    list_display_links = ["name_display"]
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

    @admin.display(description="Lead", ordering="name")
    def name_display(self, obj):
        return short(obj.name, 24)

    @admin.display(description="Status", ordering="status")
    def status_display(self, obj):
        # "New (waiting to be claimed)" in the tooltip, "New" in the cell.
        return format_html(
            '<span title="{}">{}</span>', obj.get_status_display(), obj.status.capitalize()
        )

    @admin.display(description="Agent", ordering="assigned_agent__user__full_name")
    def agent_display(self, obj):
        if obj.assigned_agent is None:
            return warning("nobody", "No agent holds this lead")
        return short(obj.assigned_agent.display_name, 18)

    @admin.display(description="Due")
    def due(self, obj):
        deadline = obj.open_deadline
        if deadline is None:
            return ""
        window = "claim" if obj.status == LeadStatus.NEW else "contact"
        now = timezone.now()
        text = time_to_deadline(deadline, now)
        css = "hv-late" if deadline <= now else "hv-left"
        return format_html(
            '<span class="{}" title="{} deadline {}">{}</span>',
            css,
            window.capitalize(),
            format_deadline(deadline, obj.tenant),
            text,
        )

    @admin.display(description="Missed")
    def sla_marks(self, obj):
        """A red warning per missed window; nothing for a lead on time."""
        missed = [
            window
            for window, breached in (
                ("claim", obj.claim_breached),
                ("contact", obj.contact_breached),
            )
            if breached
        ]
        if not missed:
            return ""
        label = " and ".join(missed).capitalize() + " deadline missed"
        return warning(", ".join(missed), label)

    @admin.display(description="")
    def row_actions(self, obj):
        if not obj.is_open:
            return ""
        url = reverse("admin:leads_lead_reassign", args=[obj.pk])
        return format_html('<a href="{}" class="hv-row-action">Reassign</a>', url)

    def has_delete_permission(self, request, obj=None):
        # Deleting would skip the agents' counters and the audit trail: close instead.
        return False

    def has_add_permission(self, request):
        # Leads come in through the API (create_lead): routing, counters and timers.
        return False

    @admin.action(description="Close selected leads")
    def close_selected(self, request, queryset):
        closed = 0
        for lead in queryset.select_related("tenant"):
            try:
                close_lead(
                    tenant=lead.tenant,
                    lead_id=lead.pk,
                    actor=Actor.for_admin(request.user),
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
                    actor=Actor.for_admin(request.user, membership=reassigned_by),
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
            "cancel_url": (
                reverse("admin:leads_lead_changelist")
                if bulk
                else reverse("admin:leads_lead_change", args=[leads[0].pk])
            ),
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
            if form.is_valid() and self._reassign(request, leads, form):
                return None
            # Invalid, or every lead refused (the messages say why): the choices stay.
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
class NotificationAdmin(TenantColumnMixin, TenantScopedAdmin):
    list_display = [
        "title_display",
        "recipient_display",
        "read_display",
        "email_display",
        "created_display",
        "tenant_display",
    ]
    list_display_links = ["title_display"]
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

    @admin.display(description="Notification", ordering="title")
    def title_display(self, obj):
        return short(obj.title, 34)

    @admin.display(description="To", ordering="recipient__user__full_name")
    def recipient_display(self, obj):
        return short(obj.recipient.display_name, 18)

    @admin.display(description="Read", ordering="is_read")
    def read_display(self, obj):
        # Unread is the state worth a look; read shows nothing.
        return "" if obj.is_read else format_html('<strong class="hv-nowrap">{}</strong>', "unread")

    @admin.display(description="Email", ordering="email_message__status")
    def email_display(self, obj):
        return message_status(obj.email_message)

    @admin.display(description="Created", ordering="created_at")
    def created_display(self, obj):
        return short_date(obj.created_at)

    @admin.display(description="Email delivery")
    def email_details(self, obj):
        return message_details(obj.email_message)

    tenant_admins_may_add = False

    def has_delete_permission(self, request, obj=None):
        # Written by the lead services; an agent marks one read, nobody deletes one.
        return False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(LeadReassignment)
class LeadReassignmentAdmin(ReadOnlyAdminMixin, TenantColumnMixin, TenantScopedAdmin):
    """Every move of every lead, newest first: read-only, written by the reassign service."""

    list_display = [
        "created_display",
        "lead_display",
        "move_display",
        "reason_display",
        "by_display",
        "tenant_display",
    ]
    list_display_links = ["created_display"]
    list_filter = ["reason", "stage", ("tenant", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["lead__name", "from_agent__user__full_name", "to_agent__user__full_name"]
    date_hierarchy = "created_at"
    list_select_related = [
        "lead",
        "tenant",
        "from_agent__user",
        "to_agent__user",
        "reassigned_by__user",
    ]
    ordering = ["-created_at"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in LeadReassignment._meta.fields]

    @admin.display(description="When", ordering="created_at")
    def created_display(self, obj):
        return short_date(obj.created_at)

    @admin.display(description="Lead", ordering="lead__name")
    def lead_display(self, obj):
        url = reverse("admin:leads_lead_change", args=[obj.lead_id])
        return format_html('<a href="{}">{}</a>', url, short(obj.lead.name, 22))

    @admin.display(description="From → to")
    def move_display(self, obj):
        return format_html(
            "{} → {}", short(_agent_name(obj.from_agent), 14), short(_agent_name(obj.to_agent), 14)
        )

    @admin.display(description="Reason", ordering="reason")
    def reason_display(self, obj):
        return short(obj.get_reason_display(), 16)

    @admin.display(description="By")
    def by_display(self, obj):
        return short(_agent_name(obj.reassigned_by) if obj.reassigned_by else "system", 14)


def _agent_name(membership) -> str:
    return membership.display_name if membership is not None else "nobody"
