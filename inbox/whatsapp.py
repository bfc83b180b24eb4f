"""Sends a WhatsApp text message through a tenant's CRM.

Wire format (one request per message)::

    POST {api_url without trailing "/"}/api/meta/{phone_number_id}/messages
    Authorization: Bearer <CRM API key>
    Content-Type: application/json
    Accept: application/json
    Idempotency-Key: <the same for every attempt of one message>

    {
      "messaging_product": "whatsapp",
      "recipient_type": "individual",
      "to": "<contactId>",
      "type": "text",
      "text": {"preview_url": false, "body": "<message text>"}
    }

``phone_number_id`` is the integration's ``config.phoneNumberId`` (percent-encoded in
the path, which leaves the usual digits unchanged). Redirects are not followed.

Outcomes:

* 2xx: success; the response JSON (an object) is returned, ``{}`` if there is none.
* connection error, timeout, HTTP 429 or 5xx: `TransientSendError` (worth retrying).
* any other status (4xx, 3xx): `PermanentSendError` (a retry would fail the same way).

Error messages carry the status and the start of the response body; never the API key
(it is redacted even if the CRM echoes it back).
"""

import json
from urllib.parse import quote, quote_plus

import requests

from core.outbound import outbound_url_problems
from outbox import http
from outbox.channels import PermanentSendError, TransientSendError

RESPONSE_BODY_LIMIT = 300


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by a placeholder: as it is, and
    as a CRM may echo it (percent-encoded in a URL, escaped in JSON)."""
    if secret:
        forms = {
            secret,
            quote(secret, safe=""),
            quote(secret),
            quote_plus(secret),
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
        }
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "[redacted]")
    return text


def crm_url_problems(api_url: str) -> list[str]:
    """Why a CRM base URL may not be called, or [] (see `core.outbound`)."""
    return outbound_url_problems(api_url, field="apiUrl")


def messages_url(*, api_url: str, phone_number_id: str) -> str:
    return f"{api_url.rstrip('/')}/api/meta/{quote(str(phone_number_id), safe='')}/messages"


def _body_excerpt(response: requests.Response, api_key: str) -> str:
    text = response.text or ""
    if len(text) > RESPONSE_BODY_LIMIT:
        text = text[:RESPONSE_BODY_LIMIT] + "…"
    return redact(text, api_key) or "(empty body)"


def send_whatsapp_text(
    *,
    session: requests.Session,
    api_url: str,
    api_key: str,
    phone_number_id: str,
    to: str,
    text: str,
    idempotency_key: str,
    timeout: tuple[float, float],
) -> dict:
    """Send `text` to the WhatsApp contact `to`; the CRM's JSON answer, or raise SendError.

    Every attempt of one message carries the same `Idempotency-Key`, so a CRM that honours
    it sends the message once even when our first attempt lost its answer.
    """
    problems = crm_url_problems(api_url)
    if problems:
        raise PermanentSendError("CRM integration refused: " + "; ".join(problems) + ".")
    url = messages_url(api_url=api_url, phone_number_id=phone_number_id)
    payload = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": False, "body": text},
    }
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Idempotency-Key": idempotency_key,
    }
    try:
        response = http.post(session, url, json=payload, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise TransientSendError(f"CRM request timeout: no answer in time from {url}.") from None
    except requests.ConnectionError as exc:
        raise TransientSendError(
            redact(f"Could not connect to the CRM ({url}): {exc}", api_key)
        ) from None
    except (
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    ) as exc:
        # The answer broke off half-way (or the send deadline cut it): worth another try.
        raise TransientSendError(
            redact(f"The CRM's answer broke off ({url}): {exc}", api_key)
        ) from None
    except requests.exceptions.InvalidHeader:
        # Its message quotes the header value, i.e. the key: say what is wrong instead.
        raise PermanentSendError(
            "The CRM API key contains characters that are not allowed in an HTTP header."
        ) from None
    except requests.RequestException as exc:
        raise PermanentSendError(
            redact(f"Invalid CRM request ({type(exc).__name__}): {exc}", api_key)
        ) from None

    status = response.status_code
    if 200 <= status < 300:
        try:
            data = response.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {"response": data}
    detail = f"CRM answered HTTP {status} for {url}: {_body_excerpt(response, api_key)}"
    if status == 429 or status >= 500:
        raise TransientSendError(detail)
    if 300 <= status < 400:
        location = redact(response.headers.get("Location", ""), api_key)
        raise PermanentSendError(
            f"CRM answered HTTP {status} (redirect to {location or 'nowhere'}) for {url}: "
            "set apiUrl to the final address."
        )
    raise PermanentSendError(detail)
