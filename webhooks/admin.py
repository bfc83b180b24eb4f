from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html
from django.utils.timesince import timesince

from core.actor import Actor
from core.admin_columns import TenantColumnMixin, short, short_date, warning
from core.admin_scope import (
    ReadOnlyAdminMixin,
    TenantScopedAdmin,
    TenantScopedInline,
    tenant_of_selection,
)
from core.errors import DomainError
from outbox.admin import message_status
from webhooks.events import EVENT_TYPES
from webhooks.models import WebhookAttempt, WebhookEndpoint
from webhooks.services import (
    clean_url,
    create_endpoint,
    delete_endpoint,
    resend,
    rotate_secret,
    send_test_event,
    update_endpoint,
)


def time_since(moment) -> str:
    # The largest unit only ("3 hours"), with a plain space.
    return timesince(moment, depth=1).replace("\xa0", " ")


def admin_actor(request) -> Actor:
    return Actor.for_admin(request.user)


def _show_secret_once(request, secret: str) -> None:
    messages.warning(
        request,
        format_html(
            "Copy the signing secret now, it will not be shown again: <code>{}</code>", secret
        ),
    )


class EndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2048, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=[(name, f"{name}: {text}") for name, text in EVENT_TYPES.items()],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every event.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["tenant", "url", "events", "description", "is_active"]

    def clean_url(self):
        try:
            return clean_url(self.cleaned_data["url"])
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None


class AttemptInline(TenantScopedInline, admin.TabularInline):
    model = WebhookAttempt
    fields = ["attempted_at", "event_type", "webhook_id", "status_code", "duration_ms", "error"]
    readonly_fields = fields
    ordering = ["-attempted_at"]
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "Latest attempts"

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("-attempted_at")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(TenantColumnMixin, TenantScopedAdmin):
    form = EndpointForm
    list_display = [
        "url_display",
        "tenant_display",
        "events_display",
        "is_active",
        "health",
    ]
    list_display_links = ["url_display"]
    list_filter = ["is_active", "tenant"]
    search_fields = ["url", "description"]
    list_select_related = ["tenant"]
    readonly_fields = ["disabled_reason", "disabled_at", "last_success_at", "failing_since"]
    inlines = [AttemptInline]
    actions = ["rotate_secrets", "send_test_events"]

    def get_inline_instances(self, request, obj=None):
        # A new endpoint has no attempts yet.
        return super().get_inline_instances(request, obj) if obj is not None else []

    @admin.display(description="URL", ordering="url")
    def url_display(self, obj):
        return short(obj.url.removeprefix("https://"), 30)

    @admin.display(description="Events")
    def events_display(self, obj):
        return short(", ".join(obj.events), 22) if obj.events else "all"

    @admin.display(description="Deliveries", ordering="failing_since")
    def health(self, obj):
        """A warning while deliveries fail; else when the last one succeeded."""
        if obj.failing_since is not None:
            return warning(
                f"failing {time_since(obj.failing_since)}",
                f"Failing since {obj.failing_since:%Y-%m-%d %H:%M UTC}",
            )
        if obj.last_success_at is None:
            return format_html('<span class="hv-muted">{}</span>', "none yet")
        return format_html(
            '<span class="hv-nowrap" title="Last success {}">ok {} ago</span>',
            f"{obj.last_success_at:%Y-%m-%d %H:%M UTC}",
            time_since(obj.last_success_at),
        )

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            update_endpoint(
                tenant=obj.tenant,
                actor=admin_actor(request),
                endpoint_id=obj.pk,
                url=data["url"],
                events=data["events"],
                description=data["description"],
                is_active=data["is_active"],
            )
            return
        endpoint, secret = create_endpoint(
            tenant=data["tenant"],
            actor=admin_actor(request),
            url=data["url"],
            events=data["events"],
            description=data["description"],
            is_active=data["is_active"],
        )
        obj.pk = endpoint.pk
        _show_secret_once(request, secret)

    def delete_model(self, request, obj):
        delete_endpoint(tenant=obj.tenant, actor=admin_actor(request), endpoint_id=obj.pk)

    def delete_queryset(self, request, queryset):
        # One service call, and one activity row, per endpoint.
        for obj in queryset:
            self.delete_model(request, obj)

    @admin.action(description="Rotate the signing secret of the selected endpoints")
    def rotate_secrets(self, request, queryset):
        rows = list(queryset)
        tenant = tenant_of_selection(self, request, rows, "endpoints")
        if tenant is None:
            return
        for row in rows:
            _, secret = rotate_secret(tenant=tenant, actor=admin_actor(request), endpoint_id=row.pk)
            messages.warning(
                request,
                format_html("New secret of {}: <code>{}</code> (shown once)", row.url, secret),
            )

    @admin.action(description="Send a webhook.test event to the selected endpoints")
    def send_test_events(self, request, queryset):
        rows = list(queryset)
        tenant = tenant_of_selection(self, request, rows, "endpoints")
        if tenant is None:
            return
        for row in rows:
            send_test_event(tenant=tenant, actor=admin_actor(request), endpoint_id=row.pk)
        self.message_user(request, f"{len(rows)} test event(s) queued.", messages.SUCCESS)


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(ReadOnlyAdminMixin, TenantColumnMixin, TenantScopedAdmin):
    list_display = [
        "attempted_display",
        "event_type",
        "endpoint_display",
        "result",
        "delivery_status",
        "short_error",
        "tenant_display",
    ]
    list_display_links = ["attempted_display"]
    list_filter = ["succeeded", "event_type", "tenant"]
    search_fields = ["webhook_id", "endpoint__url"]
    list_select_related = ["endpoint", "message", "tenant"]
    ordering = ["-attempted_at"]
    actions = ["resend_selected"]
    readonly_fields = [
        "tenant",
        "endpoint",
        "message",
        "webhook_id",
        "event_type",
        "attempted_at",
        "status_code",
        "duration_ms",
        "response_body",
        "error",
        "succeeded",
    ]

    @admin.display(description="When", ordering="attempted_at")
    def attempted_display(self, obj):
        return short_date(obj.attempted_at)

    @admin.display(description="Endpoint", ordering="endpoint__url")
    def endpoint_display(self, obj):
        return short(obj.endpoint.url.removeprefix("https://"), 24)

    @admin.display(description="Result", ordering="succeeded")
    def result(self, obj):
        """HTTP status and time; a failed attempt is a red warning, a success is not."""
        code = obj.status_code or "no answer"
        text = f"{code} · {obj.duration_ms} ms"
        if obj.succeeded:
            return format_html('<span class="hv-nowrap">{}</span>', text)
        return warning(text, "Delivery attempt failed")

    @admin.display(description="Event", ordering="message__status")
    def delivery_status(self, obj):
        return message_status(obj.message)

    @admin.display(description="Error")
    def short_error(self, obj):
        return short(obj.error, 24)

    @admin.action(description="Resend the selected events (new webhook-id)", permissions=["view"])
    def resend_selected(self, request, queryset):
        rows = list(queryset)
        tenant = tenant_of_selection(self, request, rows, "attempts")
        if tenant is None:
            return
        message_ids = {row.message_id for row in rows if row.message_id}
        for message_id in message_ids:
            resend(tenant=tenant, actor=admin_actor(request), message_id=message_id)
        self.message_user(request, f"{len(message_ids)} event(s) queued again.", messages.SUCCESS)
