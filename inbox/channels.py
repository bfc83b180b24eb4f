"""The `whatsapp` outbox channel: the handover confirmation ("Connecting you to an
agent...") through the tenant's CRM integration (wire format in `inbox.whatsapp`); and
which session channels have a sender for that confirmation at all.

The integration is read when the message is sent, not when it is queued, so fixing a
broken integration and pressing "Send again" in the admin works. A worker keeps a usable
integration (and its decrypted key) for a moment (`outbox.lookups`) instead of reading
and decrypting it for every message. Nothing here logs or stores the CRM API key.
"""

from dataclasses import dataclass, field

from core.crypto import SecretDecryptionError, decrypt_secret
from inbox.models import Channel as SessionChannel
from inbox.models import CrmIntegration
from inbox.whatsapp import send_whatsapp_text
from outbox import lookups
from outbox.channels import Channel, Delivered, PermanentSendError, register
from outbox.http import thread_session

# The line operators search for after a handover; logged once per message, when it has
# finally failed (an attempt that will be retried logs a different line).
FAILURE_LOG_MESSAGE = "Handover confirmation message failed (assignment already done): %s"


def sending_integration(tenant_id) -> tuple[CrmIntegration | None, str | None]:
    """The tenant's active, complete CRM integration, or why there is none."""
    integrations = CrmIntegration.objects.for_tenant(tenant_id)
    integration = integrations.filter(is_active=True).first()
    if integration is None:
        integration = integrations.order_by("-updated_at").first()
        if integration is None:
            return None, (
                "No CRM integration is set up for this tenant: add one with apiUrl, "
                "apiKey and config.phoneNumberId, and make it active."
            )
    missing = integration.missing_parts()
    if not missing:
        return integration, None
    problems = []
    if "isActive" in missing:
        problems.append("isActive is false")
    others = [part for part in missing if part != "isActive"]
    if others:
        problems.append("missing " + ", ".join(others))
    return None, f'CRM integration "{integration.name}" cannot send: {"; ".join(problems)}.'


@dataclass(frozen=True)
class _Sender:
    """What a send needs of the tenant's integration, the key decrypted."""

    name: str
    api_url: str
    phone_number_id: str
    api_key: str = field(default="", repr=False)
    problem: str = ""  # why it cannot send (then nothing else is set)


def _load_sender(tenant_id) -> tuple[_Sender, bool]:
    integration, problem = sending_integration(tenant_id)
    if problem is not None:
        return _Sender("", "", "", problem=problem), False
    try:
        api_key = decrypt_secret(integration.api_key_encrypted)
    except SecretDecryptionError:
        problem = (
            f'CRM integration "{integration.name}" has an API key that cannot be '
            "decrypted with CRM_ENCRYPTION_KEYS: set the API key again."
        )
        return _Sender("", "", "", problem=problem), False
    sender = _Sender(integration.name, integration.api_url, integration.phone_number_id, api_key)
    return sender, True


@register
class WhatsAppChannel(Channel):
    name = "whatsapp"
    failure_log_line = FAILURE_LOG_MESSAGE

    def endpoint_key(self, *, tenant_id, target: str, payload: dict) -> str:
        # Each tenant's CRM is its own far side: a slow one only holds its own slots.
        return f"whatsapp:{tenant_id}"

    def describe(self, message) -> str:
        session_id = message.payload.get("session_id", "")
        return f"[session {session_id}, message {message.pk}, tenantId={message.tenant_id}]"

    def send(self, message, *, deadline) -> Delivered:
        text = str(message.payload.get("text") or "").strip()
        tenant_id = message.tenant_id
        sender = lookups.get(self.name, tenant_id, lambda: _load_sender(tenant_id))
        problem = sender.problem
        if not problem and not text:
            problem = "The session has no confirmation text to send."
        if problem:
            raise PermanentSendError(problem)
        # Its errors quote what the CRM answered, with the key redacted.
        answer = send_whatsapp_text(
            session=thread_session(),
            api_url=sender.api_url,
            api_key=sender.api_key,
            phone_number_id=sender.phone_number_id,
            to=message.target,
            text=text,
            idempotency_key=message.idempotency_key,
            timeout=deadline.timeout(),
        )
        return Delivered(provider_message_id=_message_id(answer))


# Session channel → the outbox channel that sends its confirmation. A session on a channel
# without an entry gets none (skipped, `no_sender_for_channel`): a web chat visitor must
# not get a WhatsApp text. A sender for another channel is an outbox channel plus one
# entry here.
CONFIRMATION_SENDERS: dict[str, str] = {
    SessionChannel.WHATSAPP: WhatsAppChannel.name,
}


def confirmation_sender(session_channel: str) -> str | None:
    """The outbox channel that sends a confirmation on `session_channel`, or None."""
    return CONFIRMATION_SENDERS.get(session_channel)


def _message_id(answer: dict) -> str:
    """The WhatsApp message id in a Cloud-API-shaped answer, if there is one."""
    messages = answer.get("messages") if isinstance(answer, dict) else None
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        return str(messages[0].get("id") or "")
    return ""
