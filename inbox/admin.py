from datetime import datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from core.actor import Actor
from core.admin_columns import TenantColumnMixin, short, short_date, warning
from core.admin_scope import TenantScopedAdmin, tenant_of_selection
from core.errors import DomainError
from inbox.diagnostics import diagnose_handover
from inbox.integrations import save_crm_integration
from inbox.models import CrmIntegration, HandoverRequest, InboxSession, SessionStatus
from inbox.selectors import open_sessions_per_agent
from inbox.services import assign_session_to, close_session, run_session_assignment
from inbox.whatsapp import crm_url_problems
from outbox.admin import message_details, message_status
from teams.admin import OneDoorAdmin
from teams.admin import admin_actor as person_in_admin
from teams.models import Membership, Strategy, Team
from teams.routing.reasons import UnassignedReason
from teams.selectors import active_agents


def admin_actor(request) -> Actor:
    return Actor.for_admin(request.user)


@admin.register(InboxSession)
class InboxSessionAdmin(TenantColumnMixin, TenantScopedAdmin):
    list_display = [
        "contact_display",
        "status",
        "agent_display",
        "confirmation_status",
        "age",
        "tenant_display",
        "row_actions",
    ]
    list_display_links = ["contact_display"]
    list_filter = [
        "status",
        ("assigned_agent", admin.EmptyFieldListFilter),
        "unassigned_reason",
        "confirmation_message__status",
        "channel",
        "tenant",
    ]
    search_fields = ["contact_id", "contact_name", "id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant", "assigned_agent__user", "team", "confirmation_message"]
    ordering = ["-created_at"]
    actions = ["run_assignment_again", "assign_to", "close_selected"]
    change_form_template = "admin/inbox/inboxsession/change_form.html"
    tenant_admins_may_delete = False
    readonly_fields = [
        "id",
        "tenant",
        "contact_id",
        "contact_name",
        "channel",
        "context",
        "status",
        "team",
        "assigned_agent",
        "assigned_at",
        "strategy",
        "unassigned_reason",
        "routing_attempt",
        "confirmation_display",
        "confirmation_details",
        "created_at",
        "updated_at",
        "closed_at",
    ]
    fieldsets = [
        (None, {"fields": ["id", "tenant", "contact_id", "contact_name", "channel", "context"]}),
        (
            "Assignment",
            {
                "fields": [
                    "status",
                    "team",
                    "assigned_agent",
                    "assigned_at",
                    "strategy",
                    "unassigned_reason",
                    "routing_attempt",
                ]
            },
        ),
        (
            "Confirmation message",
            {"fields": ["confirmation_display", "confirmation_details"]},
        ),
        ("Times", {"fields": ["created_at", "updated_at", "closed_at"]}),
    ]

    def has_delete_permission(self, request, obj=None):
        # Deleting would skip the agent's counters and the audit trail: close instead.
        return False

    def has_add_permission(self, request):
        return False

    @admin.display(description="Confirmation", ordering="confirmation_message__status")
    def confirmation_display(self, obj):
        if obj.confirmation_message is None:
            return _skipped(obj)
        return message_status(obj.confirmation_message)

    @admin.display(description="Delivery")
    def confirmation_details(self, obj):
        if obj.confirmation_message is None:
            return _skipped(obj)
        return message_details(obj.confirmation_message)

    @admin.display(description="Contact", ordering="contact_id")
    def contact_display(self, obj):
        if obj.contact_name:
            return format_html(
                '<span title="{} · {} · {}">{}</span>',
                obj.contact_name,
                obj.contact_id,
                obj.get_channel_display(),
                _cut(obj.contact_name, 22),
            )
        return short(obj.contact_id, 22)

    @admin.display(description="Agent", ordering="assigned_agent__user__full_name")
    def agent_display(self, obj):
        if obj.assigned_agent is not None:
            return short(obj.assigned_agent.display_name, 18)
        if obj.status != SessionStatus.OPEN:
            return ""
        reason = obj.get_unassigned_reason_display() if obj.unassigned_reason else "not routed"
        return warning("unassigned", f"Unassigned: {reason}")

    @admin.display(description="Confirmation", ordering="confirmation_message__status")
    def confirmation_status(self, obj):
        if obj.confirmation_message is None:
            return format_html('<span class="hv-muted" title="{}">skipped</span>', _skipped(obj))
        return message_status(obj.confirmation_message)

    @admin.display(description="Age", ordering="-created_at")
    def age(self, obj):
        return format_html(
            '<span class="hv-nowrap" title="{}">{}</span>',
            f"{timezone.localtime(obj.created_at):%Y-%m-%d %H:%M}",
            age_text(obj.created_at, timezone.now()),
        )

    @admin.display(description="")
    def row_actions(self, obj):
        if obj.assigned_agent_id or obj.status != SessionStatus.OPEN:
            return ""
        url = reverse("admin:inbox_inboxsession_why_unassigned", args=[obj.pk])
        return format_html('<a href="{}" class="hv-row-action">Why?</a>', url)

    @admin.display(description="Last routing attempt")
    def routing_attempt(self, obj):
        return routing_attempt_table(obj.last_assignment_attempt, tenant=obj.tenant)

    @admin.action(description="Run assignment again")
    def run_assignment_again(self, request, queryset):
        assigned = unassigned = skipped = 0
        for session in queryset.select_related("tenant"):
            result = run_session_assignment(
                tenant=session.tenant,
                session_id=session.pk,
                actor=admin_actor(request),
                trigger="admin",
            )
            if result is None:
                skipped += 1
            elif result.assigned_agent_id:
                assigned += 1
            else:
                unassigned += 1
        self.message_user(
            request,
            f"Assigned {assigned}; still unassigned {unassigned}; skipped {skipped} "
            "(closed or already assigned).",
            messages.SUCCESS if assigned else messages.WARNING,
        )

    def get_urls(self):
        return [
            path(
                "<uuid:object_id>/why-unassigned/",
                self.admin_site.admin_view(self.why_unassigned_view),
                name="inbox_inboxsession_why_unassigned",
            ),
            *super().get_urls(),
        ]

    def why_unassigned_view(self, request, object_id):
        session = get_object_or_404(
            self.get_queryset(request).select_related("tenant", "team", "assigned_agent__user"),
            pk=object_id,
        )
        report = diagnose_handover(tenant=session.tenant, team=session.team, session=session)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Why is {session} unassigned?",
            "opts": self.model._meta,
            "session": session,
            "report": report,
            "verdict_reason": _label(UnassignedReason, report.verdict.get("reason")),
            "verdict_strategy": _label(Strategy, report.verdict.get("strategy")),
            "verdict_tier": TIER_NAMES.get(report.verdict.get("tier"), report.verdict.get("tier")),
            "attempt": routing_attempt_table(
                session.last_assignment_attempt, tenant=session.tenant
            ),
        }
        return TemplateResponse(request, "admin/inbox/inboxsession/why_unassigned.html", context)

    @admin.action(description="Assign to…")
    def assign_to(self, request, queryset):
        sessions = list(queryset.select_related("tenant", "assigned_agent__user"))
        tenant = tenant_of_selection(self, request, sessions, "sessions")
        if tenant is None:
            return None
        applying = "apply" in request.POST
        form = AssignForm(request.POST if applying else None, tenant=tenant, sessions=sessions)
        if applying and form.is_valid() and self._assign(request, tenant, sessions, form):
            return None
        # First visit, invalid choice, or every session refused: the form stays.
        context = {
            **self.admin_site.each_context(request),
            "title": "Assign sessions",
            "opts": self.model._meta,
            "sessions": sessions,
            "form": form,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "cancel_url": reverse("admin:inbox_inboxsession_changelist"),
        }
        return TemplateResponse(request, "admin/inbox/inboxsession/assign.html", context)

    def _assign(self, request, tenant, sessions, form) -> int:
        agent = form.cleaned_data["agent"]
        assigned = 0
        for session in sessions:
            try:
                assign_session_to(
                    tenant=tenant, session_id=session.pk, agent=agent, actor=admin_actor(request)
                )
                assigned += 1
                self.message_user(
                    request, f"{session}: assigned to {agent.display_name}.", messages.SUCCESS
                )
            except DomainError as exc:
                self.message_user(request, f"{session}: {exc.message}", messages.ERROR)
        return assigned

    @admin.action(description="Close selected sessions")
    def close_selected(self, request, queryset):
        closed = 0
        for session in queryset.select_related("tenant"):
            try:
                close_session(
                    tenant=session.tenant, session_id=session.pk, actor=admin_actor(request)
                )
                closed += 1
            except DomainError as exc:
                self.message_user(request, f"{session}: {exc.message}", messages.ERROR)
        self.message_user(request, f"Closed {closed} session(s).", messages.SUCCESS)


def _skipped(session: InboxSession) -> str:
    """No message was queued for the session, and why (when the handover said so)."""
    if session.confirmation_skipped_reason:
        return f"Skipped: {session.get_confirmation_skipped_reason_display()}"
    return "Skipped"


class AssignForm(forms.Form):
    agent = forms.ModelChoiceField(queryset=Membership.all_tenants.none())

    def __init__(self, *args, tenant, sessions, **kwargs):
        super().__init__(*args, **kwargs)
        # The agent who already holds a session is not offered for it.
        holders = {session.assigned_agent_id for session in sessions} - {None}
        agents = (
            active_agents(tenant=tenant)
            .exclude(pk__in=holders)
            .order_by("user__full_name", "user__email")
        )
        open_sessions = open_sessions_per_agent(tenant)(list(agents))
        field = self.fields["agent"]
        field.queryset = agents
        field.error_messages["invalid_choice"] = (
            "Choose an agent from the list: the agent holding the session is not on offer, "
            "nor is one who left."
        )
        field.label_from_instance = lambda m: agent_with_session_load(m, open_sessions.get(m.pk, 0))


def agent_with_session_load(membership, open_sessions: int) -> str:
    """ "Alice Agent — 2 open sessions / cap 5 · away": whom to pick at a glance."""
    cap = "no cap" if membership.capacity is None else f"cap {membership.capacity}"
    plural = "" if open_sessions == 1 else "s"
    text = f"{membership.display_name} — {open_sessions} open session{plural} / {cap}"
    return text if membership.is_online else f"{text} · {membership.get_presence_display().lower()}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def age_text(created_at, now) -> str:
    """How long ago, in the largest unit that fits: "12 min", "3 h", "2 d"."""
    minutes = int((now - created_at).total_seconds()) // 60
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 60 * 48:
        return f"{minutes // 60} h"
    return f"{minutes // (60 * 24)} d"


TIER_NAMES = {
    "team": "The session's team",
    "default_team": "The default team",
    "member": "Members",
    "admin": "Admins",
    "super_admin": "Super admins",
}


# Why routing skipped a tier, as stored by the engine, in words.
SKIP_NOTES = {
    "no teamId": "the handover named no team",
    "no default team": "the tenant has no default team",
    "team closed": "the team is closed by its schedule",
}


def routing_attempt_table(record: dict | None, *, tenant) -> str:
    """The stored routing attempt as two small tables (what was decided; each tier of the
    waterfall and its agents), in words and names rather than the stored JSON."""
    if not record:
        return "No routing attempt yet."
    agent = None
    if record.get("agentId"):
        agent = (
            Membership.objects.for_tenant(tenant)
            .select_related("user")
            .filter(pk=record["agentId"])
            .first()
        )
    team_ids = {record.get("teamId")} | {t.get("teamId") for t in record.get("tiers") or []}
    teams = {
        str(team.pk): team.name
        for team in Team.objects.for_tenant(tenant).filter(pk__in=team_ids - {None})
    }
    reason = record.get("reason")
    summary = [
        ("When", _when(record.get("at"))),
        ("Outcome", "Assigned" if record.get("outcome") == "assigned" else "Unassigned"),
        (
            "Agent",
            agent.display_name
            if agent
            else ("(no longer exists)" if record.get("agentId") else "-"),
        ),
        ("Strategy", _label(Strategy, record.get("strategy"))),
        (
            "Settings from",
            {"team": "the team", "tenant": "the tenant", "default": "the defaults"}.get(
                record.get("config"), record.get("config") or "-"
            ),
        ),
        ("Team", teams.get(record.get("teamId"), "-") if record.get("teamId") else "-"),
        ("Tier that decided", TIER_NAMES.get(record.get("tier"), record.get("tier") or "-")),
        ("Available agents", record.get("availableAgents", "-")),
        ("Reason", _label(UnassignedReason, reason) if reason else "-"),
    ]
    rows = format_html_join(
        "", '<tr><th scope="row">{}</th><td>{}</td></tr>', ((k, v) for k, v in summary)
    )
    tiers = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                TIER_NAMES.get(t.get("tier"), t.get("tier")),
                t.get("agents", 0),
                SKIP_NOTES.get(t.get("skipped"), t.get("skipped"))
                or (f"team {teams.get(t['teamId'], t['teamId'])}" if t.get("teamId") else ""),
            )
            for t in record.get("tiers") or []
        ),
    )
    return format_html(
        '<table class="hv-table routing-attempt"><tbody>{}</tbody></table>'
        '<table class="hv-table routing-tiers"><thead><tr><th>Tier tried</th>'
        "<th>Agents</th><th>Note</th></tr></thead><tbody>{}</tbody></table>",
        rows,
        tiers or format_html('<tr><td colspan="3">No tier was tried.</td></tr>'),
    )


def _label(choices, value) -> str:
    if not value:
        return "-"
    try:
        return choices(value).label
    except ValueError:
        return value


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M:%S %Z}"


class CrmIntegrationForm(forms.ModelForm):
    api_url = forms.URLField(
        label="API URL",
        required=False,
        assume_scheme="https",
        help_text="Base URL of the CRM, e.g. https://crm.example.com",
    )
    api_key = forms.CharField(
        label="CRM API key",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted and never shown again. Leave empty to keep the current key.",
    )

    class Meta:
        model = CrmIntegration
        fields = ["tenant", "name", "is_active", "api_url", "config"]

    def clean_api_url(self):
        api_url = self.cleaned_data["api_url"]
        if api_url:
            problems = crm_url_problems(api_url)
            if problems:
                raise forms.ValidationError(problems)
        return api_url


@admin.register(CrmIntegration)
class CrmIntegrationAdmin(TenantColumnMixin, OneDoorAdmin):
    form = CrmIntegrationForm
    list_display = ["name_display", "tenant_display", "is_active", "url_display", "missing"]
    list_display_links = ["name_display"]
    list_filter = ["is_active", "tenant"]
    search_fields = ["name", "api_url", "tenant__name"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]
    readonly_fields = ["created_at", "updated_at"]

    @admin.display(description="Name", ordering="name")
    def name_display(self, obj):
        return short(obj.name, 24)

    @admin.display(description="API URL", ordering="api_url")
    def url_display(self, obj):
        return short(obj.api_url, 26)

    @admin.display(description="Can send?")
    def missing(self, obj):
        # Nothing shown when it can send; what is missing (API key, phoneNumberId...) if not.
        parts = obj.missing_parts()
        if not parts:
            return ""
        return warning("missing " + ", ".join(parts), "Cannot send: missing " + ", ".join(parts))

    def save_record(self, request, form, fields, rows, change):
        save_crm_integration(
            integration=form.instance,
            fields=fields,
            api_key=form.cleaned_data.get("api_key"),
            actor=person_in_admin(request, form.instance.tenant),
        )


@admin.register(HandoverRequest)
class HandoverRequestAdmin(TenantColumnMixin, TenantScopedAdmin):
    list_display = [
        "key_display",
        "response_status",
        "session_display",
        "tenant_display",
        "created_display",
    ]
    list_display_links = ["key_display"]
    list_filter = ["tenant", "response_status"]
    search_fields = ["key"]
    readonly_fields = [f.name for f in HandoverRequest._meta.fields]
    list_select_related = ["tenant", "session"]

    @admin.display(description="Idempotency key", ordering="key")
    def key_display(self, obj):
        return short(obj.key, 26)

    @admin.display(description="Session")
    def session_display(self, obj):
        return short(obj.session, 24) if obj.session else "-"

    @admin.display(description="Received", ordering="created_at")
    def created_display(self, obj):
        return short_date(obj.created_at)

    def has_delete_permission(self, request, obj=None):
        # The idempotency record of a handover: it expires on its own, and is not
        # deleted by hand (a retried request would then hand over twice).
        return False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
