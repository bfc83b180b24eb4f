"""Anymail's Resend backend, plus the provider idempotency key.

Resend sends an email once per `Idempotency-Key` HTTP header (24 hours), so a retry
after a lost answer never doubles an email. Anymail puts custom headers into the email,
not the HTTP request, hence this subclass: the `email` channel sets
`message.idempotency_key`, and this backend sends it as the request header.
"""

from anymail.backends.resend import EmailBackend as AnymailResendBackend


class ResendEmailBackend(AnymailResendBackend):
    def build_message_payload(self, message, defaults):
        payload = super().build_message_payload(message, defaults)
        key = getattr(message, "idempotency_key", "")
        if key:
            payload.headers["Idempotency-Key"] = key
        return payload
