"""The `webhook` outbox channel: POST an event to a tenant's endpoint, signed as the
Standard Webhooks specification says (with the `standardwebhooks` library).

2xx delivered; network errors, timeouts, 429 and 5xx are retried (for a day: see
WEBHOOK_*); other answers fail; 410 Gone also disables the endpoint. Every attempt is
logged (`WebhookAttempt`: time, status, duration, first KB of the answer, error).
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
        endpoint = (
            WebhookEndpoint.objects.for_tenant(message.tenant_id)
            .filter(pk=payload.get("endpoint_id"))
            .first()
        )
        if endpoint is None:
            raise SkipMessage("The endpoint was deleted.")
        if not endpoint.is_active:
            raise SkipMessage("The endpoint is disabled.")
        problems = outbound_url_problems(endpoint.url, field="url", allow_query=True)
        if problems:
            raise PermanentSendError("Endpoint refused: " + "; ".join(problems) + ".")
        try:
            secret = decrypt_secret(endpoint.secret_encrypted)
        except SecretDecryptionError:
            raise PermanentSendError(
                "The endpoint's signing secret cannot be decrypted with CRM_ENCRYPTION_KEYS: "
                "rotate the secret."
            ) from None

        webhook_id = payload["webhook_id"]
        body = payload["body"]
        sent_at = datetime.now(tz=UTC)
        signature = Webhook(secret).sign(msg_id=webhook_id, timestamp=sent_at, data=body)
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
            response = thread_session().post(
                endpoint.url,
                data=body.encode(),
                headers=headers,
                timeout=deadline.timeout(),
                allow_redirects=False,
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
    endpoint's row is not written for every event); a failure starts a run."""
    attempt.succeeded = succeeded
    attempt.save(force_insert=True)
    now = attempt.attempted_at
    endpoints = WebhookEndpoint.objects.for_tenant(endpoint.tenant_id).filter(pk=endpoint.pk)
    if succeeded:
        endpoints.filter(
            Q(failing_since__isnull=False)
            | Q(last_success_at__isnull=True)
            | Q(last_success_at__lt=now - timedelta(minutes=1))
        ).update(failing_since=None, last_success_at=now)
    else:
        endpoints.filter(failing_since=None).update(failing_since=now)
