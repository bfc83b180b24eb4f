"""The `webhook` outbox channel: POST an event to a tenant's endpoint, signed as the
Standard Webhooks specification says (with the `standardwebhooks` library).

2xx delivered; network errors, timeouts, 429 and 5xx are retried (for a day: see
WEBHOOK_*); other answers fail; 410 Gone also disables the endpoint. Every attempt is
logged (`WebhookAttempt`: time, status, duration, first KB of the answer, error).

A worker keeps an active endpoint and its signer for a moment (`outbox.lookups`): turning
an endpoint off or rotating its secret reaches a running worker within
OUTBOX_LOOKUP_CACHE_SECONDS; a 410 forgets it at once.
"""

import time
from datetime import UTC, datetime, timedelta

import requests
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from standardwebhooks import Webhook

from core.crypto import SecretDecryptionError, decrypt_secret
from core.outbound import outbound_url_problems
from outbox import http, lookups, statements
from outbox.channels import (
    Channel,
    Delivered,
    PermanentSendError,
    SkipMessage,
    TransientSendError,
    register,
)
from outbox.http import thread_session
from webhooks.models import WebhookAttempt, WebhookEndpoint
from webhooks.services import disable_endpoint

RESPONSE_LOG_LIMIT = 1024
SUCCESS_REFRESH = timedelta(minutes=1)


def _load_endpoint(tenant_id, endpoint_id):
    """(endpoint, signer) or (None, why it is not sent: a SendError or SkipMessage);
    whether to keep it."""
    endpoint = WebhookEndpoint.objects.for_tenant(tenant_id).filter(pk=endpoint_id).first()
    if endpoint is None:
        return (None, SkipMessage("The endpoint was deleted.")), False
    if not endpoint.is_active:
        return (None, SkipMessage("The endpoint is disabled.")), False
    try:
        secret = decrypt_secret(endpoint.secret_encrypted)
    except SecretDecryptionError:
        return (
            None,
            PermanentSendError(
                "The endpoint's signing secret cannot be decrypted with CRM_ENCRYPTION_KEYS: "
                "rotate the secret."
            ),
        ), False
    return (endpoint, Webhook(secret)), True


@register
class WebhookChannel(Channel):
    name = "webhook"
    failure_log_line = "Webhook delivery failed: %s"

    @property
    def max_attempts(self):
        return settings.WEBHOOK_MAX_ATTEMPTS

    @property
    def retry_base_seconds(self):
        return settings.WEBHOOK_RETRY_BASE_SECONDS

    @property
    def retry_max_delay_seconds(self):
        return settings.WEBHOOK_RETRY_MAX_DELAY_SECONDS

    def endpoint_key(self, *, tenant_id, target: str, payload: dict) -> str:
        return f"webhook:{payload.get('endpoint_id', target)}"

    def describe(self, message) -> str:
        return (
            f"[{message.payload.get('type')} {message.payload.get('webhook_id')}, endpoint "
            f"{message.payload.get('endpoint_id')}, tenantId={message.tenant_id}]"
        )

    def send(self, message, *, deadline) -> Delivered:
        payload = message.payload
        tenant_id, endpoint_id = message.tenant_id, payload.get("endpoint_id")
        endpoint, signer = lookups.get(
            self.name, (tenant_id, endpoint_id), lambda: _load_endpoint(tenant_id, endpoint_id)
        )
        if endpoint is None:
            raise signer  # why it is not sent
        problems = outbound_url_problems(endpoint.url, field="url", allow_query=True)
        if problems:
            raise PermanentSendError("Endpoint refused: " + "; ".join(problems) + ".")

        webhook_id = payload["webhook_id"]
        body = payload["body"]
        sent_at = datetime.now(tz=UTC)
        signature = signer.sign(msg_id=webhook_id, timestamp=sent_at, data=body)
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signature,
            "Content-Type": "application/json",
            "User-Agent": "Handover-Webhooks/1.0",
        }
        attempt = WebhookAttempt(
            tenant_id=message.tenant_id,
            endpoint=endpoint,
            message_id=message.pk,
            webhook_id=webhook_id,
            event_type=payload.get("type", ""),
            attempted_at=timezone.now(),
        )
        started = time.monotonic()
        try:
            response = http.post(
                thread_session(),
                endpoint.url,
                data=body.encode(),
                headers=headers,
                timeout=deadline.timeout(),
                stream=True,
            )
            try:
                text = _first_kilobyte(response)
            finally:
                response.close()
        except requests.RequestException as exc:
            attempt.duration_ms = _ms(started)
            attempt.error = f"{type(exc).__name__}: {exc}"[:1000]
            if deadline.expired:
                attempt.error = f"No complete answer within {deadline.seconds:g} s."
            _record(attempt, endpoint, succeeded=False)
            raise TransientSendError(attempt.error) from None

        attempt.duration_ms = _ms(started)
        attempt.status_code = response.status_code
        attempt.response_body = text
        status = response.status_code
        if 200 <= status < 300:
            _record(attempt, endpoint, succeeded=True)
            return Delivered(provider_message_id=webhook_id)
        detail = f"The endpoint answered HTTP {status}."
        attempt.error = detail
        _record(attempt, endpoint, succeeded=False)
        if status == 410:
            lookups.forget(self.name, (tenant_id, endpoint_id))
            disable_endpoint(
                endpoint=endpoint,
                reason="The endpoint answered 410 Gone.",
                via="job:outbox_delivery",
            )
            raise PermanentSendError(f"{detail} The endpoint is disabled.")
        if status == 429 or status >= 500:
            raise TransientSendError(detail)
        raise PermanentSendError(detail)


def _first_kilobyte(response) -> str:
    chunks, size = [], 0
    for chunk in response.iter_content(256):
        chunks.append(chunk)
        size += len(chunk)
        if size >= RESPONSE_LOG_LIMIT:
            break
    return b"".join(chunks)[:RESPONSE_LOG_LIMIT].decode("utf-8", "replace")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _record(attempt: WebhookAttempt, endpoint: WebhookEndpoint, *, succeeded: bool) -> None:
    """Log the attempt, and keep the endpoint's health: a success clears the run of
    failures (and refreshes `last_success_at` at most once a minute, so that a busy
    endpoint's row is not written for every event); a failure starts a run.

    `endpoint` may have been read a moment ago (`outbox.lookups`): a success that finds it
    healthy and refreshed within the minute writes nothing to it. A run of failures that
    another worker started since is cleared by the next success after the next read."""
    attempt.succeeded = succeeded
    statements.insert_row(attempt)  # one prepared INSERT for every attempt
    now = attempt.attempted_at
    if succeeded:
        fresh = endpoint.last_success_at is not None and (
            endpoint.last_success_at >= now - SUCCESS_REFRESH
        )
        if endpoint.failing_since is None and fresh:
            return
        WebhookEndpoint.objects.for_tenant(endpoint.tenant_id).filter(pk=endpoint.pk).filter(
            Q(failing_since__isnull=False)
            | Q(last_success_at__isnull=True)
            | Q(last_success_at__lt=now - SUCCESS_REFRESH)
        ).update(failing_since=None, last_success_at=now)
        endpoint.failing_since, endpoint.last_success_at = None, now
    else:
        endpoints = WebhookEndpoint.objects.for_tenant(endpoint.tenant_id).filter(pk=endpoint.pk)
        endpoints.filter(failing_since=None).update(failing_since=now)
        lookups.forget(WebhookChannel.name, (endpoint.tenant_id, str(endpoint.pk)))
