from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from core.actor import Actor
from core.admin_scope import TenantScopedAdmin, tenant_of_selection
from core.errors import DomainError
from inbox.diagnostics import diagnose_handover
from inbox.integrations import set_crm_api_key
from inbox.models import CrmIntegration, HandoverRequest, InboxSession
from inbox.services import assign_session_to, close_session, run_session_assignment
from inbox.whatsapp import crm_url_problems
from outbox.admin import message_details, message_status
from teams.models import Membership
from teams.selectors import active_agents


def admin_actor(request) -> Actor:
    return Actor(label=f"admin:{request.user.email}")


@admin.register(InboxSession)
class InboxSessionAdmin(TenantScopedAdmin):
    list_display = [
        "contact_display",
        "channel",
        "tenant",
        "status",
        "assigned_agent",
        "unassigned_reason",
        "confirmation_display",
        "created_at",
    ]
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
        "last_assignment_attempt",
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
                    "last_assignment_attempt",
                ]
            },
        ),
        (
            "Confirmation message",
            {"fields": ["confirmation_display", "confirmation_details"]},
        ),
        ("Times", {"fields": ["created_at", "updated_at", "closed_at"]}),
    ]

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

    @admin.display(description="contact", ordering="contact_id")
    def contact_display(self, obj):
        if obj.contact_name:
            return format_html("{} <small>{}</small>", obj.contact_name, obj.contact_id)
        return obj.contact_id

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
        }
        return TemplateResponse(request, "admin/inbox/inboxsession/why_unassigned.html", context)

    @admin.action(description="Assign to…")
    def assign_to(self, request, queryset):
        sessions = list(queryset.select_related("tenant", "assigned_agent__user"))
        tenant = tenant_of_selection(self, request, sessions, "sessions")
        if tenant is None:
            return None
        form = AssignForm(request.POST if "apply" in request.POST else None, tenant=tenant)
        if "apply" in request.POST and form.is_valid():
            agent = form.cleaned_data["agent"]
            for session in sessions:
                try:
                    assign_session_to(
                        tenant=tenant,
                        session_id=session.pk,
                        agent=agent,
                        actor=admin_actor(request),
                    )
                    self.message_user(
                        request, f"{session}: assigned to {agent.display_name}.", messages.SUCCESS
                    )
                except DomainError as exc:
                    self.message_user(request, f"{session}: {exc.message}", messages.ERROR)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Assign sessions",
            "opts": self.model._meta,
            "sessions": sessions,
            "form": form,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/inbox/inboxsession/assign.html", context)

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

    def __init__(self, *args, tenant, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = active_agents(tenant=tenant).order_by(
            "user__full_name", "user__email"
        )
        self.fields["agent"].label_from_instance = lambda m: (
            f"{m.display_name} <{m.user.email}> · {m.get_role_display()}"
            f"{'' if m.is_available else ' · away'}"
        )


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
class CrmIntegrationAdmin(TenantScopedAdmin):
    form = CrmIntegrationForm
    list_display = ["name", "tenant", "is_active", "api_url", "has_key", "phone_number", "missing"]
    list_filter = ["is_active", "tenant"]
    search_fields = ["name", "api_url", "tenant__name"]
    list_select_related = ["tenant"]
    autocomplete_fields = ["tenant"]
    readonly_fields = ["created_at", "updated_at"]

    @admin.display(boolean=True, description="API key set")
    def has_key(self, obj):
        return obj.has_api_key

    @admin.display(description="phoneNumberId")
    def phone_number(self, obj):
        return obj.phone_number_id

    @admin.display(description="missing for sending")
    def missing(self, obj):
        return ", ".join(obj.missing_parts()) or "-"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("api_key"):
            set_crm_api_key(integration=obj, plaintext=form.cleaned_data["api_key"])


@admin.register(HandoverRequest)
class HandoverRequestAdmin(TenantScopedAdmin):
    list_display = ["key", "tenant", "response_status", "session", "created_at"]
    list_filter = ["tenant", "response_status"]
    search_fields = ["key"]
    readonly_fields = [f.name for f in HandoverRequest._meta.fields]
    list_select_related = ["tenant", "session"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
