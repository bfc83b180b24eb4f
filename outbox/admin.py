from django.contrib import admin, messages
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from core.actor import Actor
from core.admin_columns import TenantColumnMixin, short, short_date
from core.admin_scope import TenantScopedAdmin, tenant_of_selection
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import send_again

STATUS_COLOURS = {
    MessageStatus.PENDING: "#8a6d00",
    MessageStatus.SENDING: "#205493",
    MessageStatus.SENT: "#2e7d32",
    MessageStatus.FAILED: "#b71c1c",
    MessageStatus.SKIPPED: "#666",
}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def message_status(message: OutboundMessage | None) -> str:
    """A message's status as a coloured word, for every admin page that shows one."""
    if message is None:
        return "—"
    return format_html(
        '<strong style="color:{}">{}</strong>',
        STATUS_COLOURS.get(message.status, "inherit"),
        message.get_status_display(),
    )


def message_details(message: OutboundMessage | None) -> str:
    """Status, attempts, times and last error of a message, linked to its own page."""
    if message is None:
        return "No message was asked for."
    try:
        url = reverse("admin:outbox_outboundmessage_change", args=[message.pk])
    except NoReverseMatch:
        url = ""
    when = message.finished_at or message.next_attempt_at
    return format_html(
        "{} · attempt {} of {} · {} {}<br>{}{}",
        message_status(message),
        message.attempts,
        message.max_attempts,
        "finished" if message.finished_at else "next try",
        when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else "",
        message.last_error or "",
        format_html(' <a href="{}">Open the message</a>', url) if url else "",
    )


@admin.register(OutboundMessage)
class OutboundMessageAdmin(TenantColumnMixin, TenantScopedAdmin):
    list_display = [
        "created_display",
        "kind_display",
        "target_display",
        "status_display",
        "attempts_display",
        "short_error",
        "tenant_display",
    ]
    list_display_links = ["created_display"]
    list_filter = ["status", "channel", "kind", "tenant"]
    search_fields = ["target", "idempotency_key", "provider_message_id", "=id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    actions = ["send_selected_again"]
    tenant_admins_may_add = False
    tenant_admins_may_delete = False
    fields = [
        "tenant",
        "channel",
        "kind",
        "target",
        "status",
        "attempts",
        "max_attempts",
        "next_attempt_at",
        "lease_expires_at",
        "last_attempt_at",
        "finished_at",
        "last_error",
        "provider_message_id",
        "idempotency_key",
        "payload",
        "created_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        # Read-only page; "Send again" is an action, which needs view permission only.
        return False

    @admin.display(description="Status", ordering="status")
    def status_display(self, obj):
        return message_status(obj)

    @admin.display(description="Created", ordering="created_at")
    def created_display(self, obj):
        return short_date(obj.created_at)

    @admin.display(description="Message", ordering="kind")
    def kind_display(self, obj):
        return format_html(
            '<span title="{} · {}">{}</span>',
            obj.channel,
            obj.kind,
            _cut(obj.kind, 20),
        )

    @admin.display(description="To", ordering="target")
    def target_display(self, obj):
        return short(obj.target, 14)

    @admin.display(description="Tries", ordering="attempts")
    def attempts_display(self, obj):
        return format_html(
            '<span class="hv-nowrap">{} of {}</span>', obj.attempts, obj.max_attempts
        )

    @admin.display(description="Error")
    def short_error(self, obj):
        return short(obj.last_error or "", 20)

    @admin.action(description="Send selected failed messages again", permissions=["view"])
    def send_selected_again(self, request, queryset):
        rows = list(queryset)
        tenant = tenant_of_selection(self, request, rows, "messages")
        if tenant is None:
            return
        actor = Actor.for_admin(request.user)
        count = send_again(tenant=tenant, message_ids=[row.pk for row in rows], actor=actor)
        skipped = len(rows) - count
        text = f"{count} message(s) will be sent again within seconds."
        if skipped:
            text += f" {skipped} were not failed and were left as they are."
        self.message_user(request, text, messages.SUCCESS if count else messages.WARNING)
