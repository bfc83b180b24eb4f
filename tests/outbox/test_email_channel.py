"""The email channel's own rules: a mail server that cannot be reached is retried, a
retry sends the very same email, and Resend's "still processing" answer is retried."""

import socket

import pytest
from anymail.exceptions import AnymailAPIError
from django.db import transaction
from django.utils import timezone

from outbox.delivery import deliver_due
from outbox.email import EmailContent, classify_send_error, register_renderer
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import queue_message

pytestmark = pytest.mark.django_db

RENDERED: list[int] = []


@register_renderer("tests.counting")
def _counting_renderer(message) -> EmailContent:
    RENDERED.append(1)
    return EmailContent(subject=f"Render number {len(RENDERED)}", text="Hello")


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
def smtp_down(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = _dead_port()
    settings.EMAIL_TIMEOUT = 2


def _queue(tenant, payload) -> OutboundMessage:
    with transaction.atomic():
        return queue_message(
            tenant=tenant, channel="email", target="agent@example.test", payload=payload
        )


def test_a_mail_server_that_cannot_be_reached_is_tried_again(tenant, smtp_down):
    message = _queue(tenant, {"subject": "Hi", "text": "Hello"})

    deliver_due()

    message.refresh_from_db()
    assert message.status == MessageStatus.PENDING
    assert message.attempts == 1
    assert "Connection" in message.last_error or "refused" in message.last_error.lower()


def test_a_retry_sends_the_email_rendered_for_the_first_attempt(
    tenant, smtp_down, settings, mailoutbox
):
    RENDERED.clear()
    message = _queue(tenant, {"renderer": "tests.counting"})
    deliver_due()  # the mail server is down: attempt 1 fails after rendering
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    OutboundMessage.all_tenants.filter(pk=message.pk).update(next_attempt_at=timezone.now())

    deliver_due()

    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert [email.subject for email in mailoutbox] == ["Render number 1"]
    assert len(RENDERED) == 1


def test_resend_still_processing_the_same_key_is_retried_other_409s_are_not():
    busy = AnymailAPIError(
        "Resend API response 409: concurrent_idempotent_requests", status_code=409
    )
    reused = AnymailAPIError("Resend API response 409: invalid_idempotent_request", status_code=409)

    assert classify_send_error(busy)[0] is True
    assert classify_send_error(reused)[0] is False
