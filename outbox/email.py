"""The `email` channel: one email through Django's email backend (anymail/Resend in
production, the console in embedded mode).

What an email says is decided when it is sent, by a renderer that the app which queued it
registered under a name (the lead notification emails: `leads`). A renderer returns an
`EmailContent`, or raises `SkipMessage` when nobody needs the email any more. A message
can also carry its content in its payload (``subject``, ``text``, ``html``).
"""

import contextlib
import logging
import smtplib
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import requests
from anymail.exceptions import AnymailError, AnymailRecipientsRefused
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection

from outbox.channels import (
    Channel,
    Delivered,
    PermanentSendError,
    TransientSendError,
    register,
)
from outbox.http import mount_deadline_adapter


@dataclass(frozen=True)
class EmailContent:
    subject: str
    text: str
    html: str = ""
    to: str = ""  # defaults to the message's target
    metadata: dict = field(default_factory=dict)


def email_to(
    address: str,
    render: Callable[[], tuple[str, str, str]],
    *,
    what: str,
    metadata: dict,
    logger: logging.Logger,
) -> EmailContent:
    """The email of a notice to `address`, with `render()` giving (subject, text, html).
    No address, or a template that cannot render, is a permanent failure: retrying would
    change nothing. `what` names the notice in the caller's `logger` ("notification
    <id>")."""
    address = (address or "").strip()
    if not address:
        raise PermanentSendError("The recipient has no email address.")
    try:
        subject, text, html = render()
    except Exception as exc:  # a template bug must not be retried forever
        logger.exception("Could not render the email of %s", what)
        raise PermanentSendError(
            f"The email could not be rendered: {type(exc).__name__}: {exc}"
        ) from None
    return EmailContent(subject=subject, text=text, html=html, to=address, metadata=metadata)


Renderer = Callable[[object], EmailContent]
_renderers: dict[str, Renderer] = {}
_failure_lines: dict[str, str] = {}


def register_renderer(name: str, *, failure_log_line: str = "") -> Callable[[Renderer], Renderer]:
    """Decorator: `function(message) -> EmailContent` renders the emails whose payload
    names it; `failure_log_line` is logged (once) when such an email finally fails."""

    def decorator(function: Renderer) -> Renderer:
        _renderers[name] = function
        if failure_log_line:
            _failure_lines[name] = failure_log_line
        return function

    return decorator


_local = threading.local()


def _connection():
    """This thread's open email connection: with anymail it keeps one HTTP session (and
    its kept-alive TCP/TLS connection) for every email the thread sends."""
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = get_connection(fail_silently=False)
        connection.open()
        session = getattr(connection, "session", None)
        if session is not None:  # requests-based anymail backends: cut by the deadline
            mount_deadline_adapter(session)
        _local.connection = connection
    return connection


def _drop_connection() -> None:
    connection = getattr(_local, "connection", None)
    _local.connection = None
    if connection is not None:
        with contextlib.suppress(Exception):  # closing a broken connection may fail too
            connection.close()


@register
class EmailChannel(Channel):
    name = "email"
    failure_log_line = "Email failed: %s"

    def endpoint_key(self, *, tenant_id, target: str, payload: dict) -> str:
        # One mail provider serves every tenant; its slots are capped like any endpoint.
        return "email"

    def failure_line(self, message) -> str:
        return _failure_lines.get(message.payload.get("renderer", ""), self.failure_log_line)

    def content(self, message) -> EmailContent:
        renderer_name = message.payload.get("renderer")
        if renderer_name:
            renderer = _renderers.get(renderer_name)
            if renderer is None:
                raise PermanentSendError(f'No email renderer "{renderer_name}" is registered.')
            return renderer(message)
        try:
            return EmailContent(
                subject=message.payload["subject"],
                text=message.payload["text"],
                html=message.payload.get("html", ""),
            )
        except KeyError as exc:
            raise PermanentSendError(f"The email has no {exc.args[0]}.") from None

    def send(self, message, *, deadline) -> Delivered:
        content = self._frozen_content(message)
        address = (content.to or message.target or "").strip()
        if not address:
            raise PermanentSendError("The recipient has no email address.")
        email = EmailMultiAlternatives(
            subject=content.subject,
            body=content.text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[address],
        )
        if content.html:
            email.attach_alternative(content.html, "text/html")
        # Anymail sends metadata along (Resend: X-Metadata); other backends ignore it.
        # Sorted: the kept content comes back from the database with its keys reordered,
        # and a retry must send the very same bytes.
        email.metadata = dict(sorted({"message_id": str(message.pk), **content.metadata}.items()))
        # Read by outbox.email_backends.ResendEmailBackend (the Idempotency-Key header).
        email.idempotency_key = message.idempotency_key
        email.extra_headers["Resend-Idempotency-Key"] = message.idempotency_key
        try:
            # Opening may already talk to the server (SMTP connects and logs in here).
            email.connection = _connection()
            email.send(fail_silently=False)
        except Exception as exc:
            _drop_connection()
            transient, description = classify_send_error(exc)
            if transient:
                raise TransientSendError(description) from None
            raise PermanentSendError(description) from None
        status = getattr(email, "anymail_status", None)
        return Delivered(provider_message_id=str(getattr(status, "message_id", "") or ""))

    def _frozen_content(self, message) -> EmailContent:
        """What the email says, rendered at its first attempt and kept on the message: a
        retry sends the very same email (a provider refuses an idempotency key reused
        with another body), and skip rules are not asked again once it may have gone."""
        frozen = message.payload.get("rendered")
        if frozen:
            return EmailContent(**frozen)
        content = self.content(message)
        payload = {**message.payload, "rendered": asdict(content)}
        type(message).all_tenants.filter(pk=message.pk).update(payload=payload)
        message.payload = payload
        return content


def classify_send_error(exc: BaseException) -> tuple[bool, str]:
    """(transient, description) of an error raised while sending.

    Transient: the mail service could not be reached or timed out, or answered 429 or
    5xx (Anymail/Resend, raw requests errors, SMTP 4xx and dropped connections, socket
    errors). Everything else is permanent: a 4xx refusal, refused recipients, a bad
    configuration, a bug.
    """
    description = _describe(exc)
    if isinstance(exc, AnymailRecipientsRefused):
        return False, description
    if isinstance(exc, AnymailError):
        status = exc.status_code
        if status == 409 and "concurrent_idempotent_requests" in description:
            return True, description  # Resend: the first request is still being processed
        if status is not None:
            return (status == 429 or status >= 500), description
        # No answer at all: anymail wraps the requests error (and is also an instance
        # of its type).
        return _is_network_error(exc) or _is_network_error(exc.__cause__), description
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(400 <= code < 500 for code in codes), description
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return True, description
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500, description
    if isinstance(exc, smtplib.SMTPException):
        return False, description
    return _is_network_error(exc), description


def _is_network_error(exc) -> bool:
    if exc is None:
        return False
    if isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | requests.exceptions.ContentDecodingError,
    ):
        return True  # no answer, or one that broke off half-way
    if isinstance(exc, requests.RequestException):
        return False  # e.g. an HTTPError carrying a 4xx
    # socket.timeout, ConnectionRefusedError, gaierror, ...: all OSError.
    return isinstance(exc, OSError)


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # anymail's __str__ reads attributes a hand-made error may lack
        text = " ".join(str(arg) for arg in getattr(exc, "args", ()))
    text = " ".join(text.split())
    name = type(exc).__name__
    return redact_email_secrets(f"{name}: {text}" if text else name)


def redact_email_secrets(text: str) -> str:
    for secret in (settings.RESEND_API_KEY, getattr(settings, "EMAIL_HOST_PASSWORD", "")):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text
