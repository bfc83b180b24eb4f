"""Writes for webhook endpoints: create, change, delete, rotate the secret, test, resend,
and disable (410 Gone, or failing for too long). Every change writes one audit row."""

import base64
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import record_activity
from core.actor import Actor
from core.crypto import encrypt_secret
from core.errors import InvalidInput, NotFound
from core.outbound import outbound_url_problems
from outbox.models import OutboundMessage
from outbox.services import build_message, queue_messages
from teams.models import Tenant
from teams.selectors import tenant_admin_emails
from teams.services import authorize_tenant_change
from webhooks.events import EVENT_TYPES, WEBHOOK_TEST, Event, message_for
from webhooks.models import WebhookEndpoint

SECRET_BYTES = 32


def new_secret() -> str:
    """`whsec_` + base64 of 32 random bytes (Standard Webhooks)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def clean_events(events) -> list[str]:
    if events is None:
        return []
    unknown = sorted({e for e in events if e not in EVENT_TYPES})
    if unknown:
        raise InvalidInput(
            code="validation_error",
            message=f"Unknown event type(s): {', '.join(unknown)}. "
            f"Known: {', '.join(EVENT_TYPES)}.",
            field="events",
        )
    return sorted(set(events), key=list(EVENT_TYPES).index)


def clean_url(url: str) -> str:
    problems = outbound_url_problems(url, field="url", allow_query=True)
    if problems:
        raise InvalidInput(code="validation_error", message="; ".join(problems) + ".", field="url")
    return url


def _refresh_tenant_flag(tenant_id) -> None:
    """Tenant.has_active_webhooks, in the transaction that changed its endpoints. The
    tenant is locked before the endpoints are counted: two changes at once then count
    one after the other, the second seeing the first's endpoint (counted first, both
    could miss each other's, and leave the flag off with an endpoint on). FOR NO KEY
    UPDATE: the tenant's other writers' foreign-key checks (FOR KEY SHARE) do not wait
    for it."""
    tenant = Tenant.objects.select_for_update(no_key=True).get(pk=tenant_id)
    active = WebhookEndpoint.objects.for_tenant(tenant_id).filter(is_active=True).exists()
    if tenant.has_active_webhooks != active:
        tenant.has_active_webhooks = active
        # save(), not update(): the processes' caches of the tenant row (API keys, routing)
        # hear of it here at once; other processes within their few seconds' lifetime.
        tenant.save(update_fields=["has_active_webhooks"])


def _endpoint(tenant, endpoint_id, *, lock: bool = False) -> WebhookEndpoint:
    endpoints = WebhookEndpoint.objects.for_tenant(tenant)
    if lock:
        endpoints = endpoints.select_for_update()
    endpoint = endpoints.filter(pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound(code="webhook_not_found", message="Webhook endpoint not found.")
    return endpoint


def _may_configure(*, actor: Actor, tenant) -> None:
    """Endpoints are tenant configuration: a superuser or the tenant's admins (the admin
    pages), the tenant's own API key (its API resolved the tenant from that key), or
    the system."""
    if actor.via.startswith("api_key:"):
        return
    authorize_tenant_change(actor=actor, tenant=tenant)


def create_endpoint(
    *,
    tenant,
    actor: Actor,
    url: str,
    events=None,
    description: str = "",
    is_active: bool = True,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint (active unless asked otherwise) and its secret, shown to the caller
    once and stored encrypted."""
    _may_configure(actor=actor, tenant=tenant)
    # Checked before the transaction: the URL check resolves the host (DNS may be slow).
    url, events = clean_url(url), clean_events(events)
    with transaction.atomic():
        return _create_endpoint(
            tenant=tenant,
            actor=actor,
            url=url,
            events=events,
            description=description,
            is_active=is_active,
        )


def _create_endpoint(*, tenant, actor, url, events, description, is_active):
    secret = new_secret()
    endpoint = WebhookEndpoint.objects.for_tenant(tenant).create(
        url=url,
        events=events,
        description=description,
        secret_encrypted=encrypt_secret(secret),
        is_active=is_active,
        disabled_reason="" if is_active else f"Added switched off by {actor.label}.",
        disabled_at=None if is_active else timezone.now(),
    )
    record_activity(
        tenant=tenant,
        action="webhook.created",
        actor=actor,
        target=endpoint,
        data={"url": endpoint.url, "events": endpoint.events},
    )
    _refresh_tenant_flag(endpoint.tenant_id)
    return endpoint, secret


def update_endpoint(*, tenant, actor: Actor, endpoint_id, **changes) -> WebhookEndpoint:
    """Change url, events, description or isActive; turning an endpoint back on clears why
    it was disabled and its run of failures."""
    _may_configure(actor=actor, tenant=tenant)
    # Checked before the transaction: the URL check resolves the host (DNS may be slow).
    if "url" in changes:
        changes["url"] = clean_url(changes["url"])
    if "events" in changes:
        changes["events"] = clean_events(changes["events"])
    with transaction.atomic():
        return _update_endpoint(tenant=tenant, actor=actor, endpoint_id=endpoint_id, **changes)


def _update_endpoint(*, tenant, actor: Actor, endpoint_id, **changes) -> WebhookEndpoint:
    endpoint = _endpoint(tenant, endpoint_id, lock=True)
    fields = ("url", "events", "description", "is_active")
    before = {key: getattr(endpoint, key) for key in fields}
    if "url" in changes:
        endpoint.url = changes["url"]
    if "events" in changes:
        endpoint.events = changes["events"]
    if "description" in changes:
        endpoint.description = changes["description"]
    if "is_active" in changes:
        active = bool(changes["is_active"])
        if active and not endpoint.is_active:
            endpoint.disabled_reason = ""
            endpoint.disabled_at = None
            endpoint.failing_since = None
        elif not active and endpoint.is_active:
            endpoint.disabled_reason = f"Turned off by {actor.label}."
            endpoint.disabled_at = timezone.now()
        endpoint.is_active = active
    endpoint.save()
    _refresh_tenant_flag(endpoint.tenant_id)
    after = {key: getattr(endpoint, key) for key in fields}
    record_activity(
        tenant=tenant,
        action="webhook.updated",
        actor=actor,
        target=endpoint,
        # Under "changes", as every configuration change: the audit log shows old → new.
        data={
            "changes": {
                key: [before[key], after[key]] for key in after if before[key] != after[key]
            }
        },
    )
    return endpoint


@transaction.atomic
def delete_endpoint(*, tenant, actor: Actor, endpoint_id) -> None:
    _may_configure(actor=actor, tenant=tenant)
    endpoint = _endpoint(tenant, endpoint_id, lock=True)
    record_activity(
        tenant=tenant,
        action="webhook.deleted",
        actor=actor,
        target=endpoint,
        data={"url": endpoint.url},
    )
    endpoint.delete()
    _refresh_tenant_flag(endpoint.tenant_id)


@transaction.atomic
def rotate_secret(*, tenant, actor: Actor, endpoint_id) -> tuple[WebhookEndpoint, str]:
    """A new secret, effective at once: every later attempt is signed with it."""
    _may_configure(actor=actor, tenant=tenant)
    endpoint = _endpoint(tenant, endpoint_id, lock=True)
    secret = new_secret()
    endpoint.secret_encrypted = encrypt_secret(secret)
    endpoint.save(update_fields=["secret_encrypted", "updated_at"])
    record_activity(tenant=tenant, action="webhook.secret_rotated", actor=actor, target=endpoint)
    return endpoint, secret


@transaction.atomic
def send_test_event(*, tenant, actor: Actor, endpoint_id) -> OutboundMessage:
    """Queue a `webhook.test` event to one endpoint, whatever events it subscribed to."""
    _may_configure(actor=actor, tenant=tenant)
    endpoint = _endpoint(tenant, endpoint_id)
    event = Event(
        tenant_id=tenant.pk,
        type=WEBHOOK_TEST,
        data={"endpointId": str(endpoint.pk), "requestedBy": actor.label},
    )
    message = message_for(endpoint, event)
    queue_messages([message])
    record_activity(
        tenant=tenant,
        action="webhook.test_sent",
        actor=actor,
        target=endpoint,
        data={"url": endpoint.url},
    )
    return message


@transaction.atomic
def resend(*, tenant, actor: Actor, message_id) -> OutboundMessage:
    """Send an event again to its endpoint, as a new delivery with a new webhook-id."""
    _may_configure(actor=actor, tenant=tenant)
    original = (
        OutboundMessage.objects.for_tenant(tenant).filter(pk=message_id, channel="webhook").first()
    )
    if original is None:
        raise NotFound(code="delivery_not_found", message="Webhook delivery not found.")
    endpoint = _endpoint(tenant, original.payload.get("endpoint_id"))
    payload = dict(original.payload)
    payload["webhook_id"] = webhook_id = f"msg_{secrets.token_hex(16)}"
    message = build_message(
        tenant=tenant,
        channel="webhook",
        kind=original.kind,
        target=endpoint.url,
        payload=payload,
        idempotency_key=webhook_id,
        ordering_key=original.ordering_key,
    )
    queue_messages([message])
    record_activity(
        tenant=tenant,
        action="webhook.resent",
        actor=actor,
        target=endpoint,
        data={"event": original.kind, "original_webhook_id": original.payload.get("webhook_id")},
    )
    return message


def disable_endpoint(
    *, endpoint: WebhookEndpoint, reason: str, notify: bool = True, via: str = ""
) -> bool:
    """Turn an endpoint off (410 Gone, or failing too long) and email the tenant's
    admins; whether it was active."""
    with transaction.atomic():
        changed = (
            WebhookEndpoint.objects.for_tenant(endpoint.tenant_id)
            .filter(pk=endpoint.pk, is_active=True)
            .update(is_active=False, disabled_reason=reason, disabled_at=timezone.now())
        )
        if not changed:
            return False
        _refresh_tenant_flag(endpoint.tenant_id)
        record_activity(
            tenant=endpoint.tenant,
            action="webhook.disabled",
            actor=Actor.system(via=via),
            target=endpoint,
            data={"reason": reason},
        )
        if notify:
            _tell_admins(endpoint, reason)
    return True


def _tell_admins(endpoint: WebhookEndpoint, reason: str) -> None:
    text = (
        f"The webhook endpoint {endpoint.url} of {endpoint.tenant.name} was turned off.\n\n"
        f"Why: {reason}\n\n"
        "Events are no longer sent to it. Fix the receiver, then turn the endpoint on again "
        "(admin: Webhook endpoints, or PATCH /api/v1/webhooks/<id> with isActive true).\n"
    )
    queue_messages(
        [
            build_message(
                tenant=endpoint.tenant_id,
                channel="email",
                kind="webhook.disabled",
                target=address,
                payload={"subject": f"Webhook endpoint turned off: {endpoint.url}", "text": text},
            )
            for address in tenant_admin_emails(endpoint.tenant_id)
        ]
    )


def disable_failing_endpoints() -> int:
    """System job across tenants: endpoints without a success for
    WEBHOOK_DISABLE_AFTER_HOURS are turned off and their admins told."""
    cutoff = timezone.now() - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS)
    failing = WebhookEndpoint.all_tenants.select_related("tenant").filter(
        is_active=True, failing_since__lt=cutoff
    )
    hours = settings.WEBHOOK_DISABLE_AFTER_HOURS
    return sum(
        disable_endpoint(
            endpoint=endpoint,
            reason=f"No delivery succeeded for {hours:g} hours "
            f"(failing since {endpoint.failing_since:%Y-%m-%d %H:%M} UTC).",
            via="job:disable_failing_endpoints",
        )
        for endpoint in failing
    )
