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

import ipaddress
import json
import socket
from urllib.parse import quote, quote_plus, urlsplit

import requests
from django.conf import settings

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
    """Why a CRM base URL may not be called, or []: the URL is tenant-supplied, so it must
    not aim the worker at internal services (SSRF).

    https only (CRM_ALLOW_HTTP for local testing), no credentials, query or fragment, and
    no loopback, private, link-local or reserved address (CRM_ALLOW_PRIVATE_NETWORKS).
    """
    parts = urlsplit(api_url or "")
    problems = []
    allowed_schemes = {"https", "http"} if settings.CRM_ALLOW_HTTP else {"https"}
    if parts.scheme not in allowed_schemes:
        problems.append(f"apiUrl must start with {' or '.join(sorted(allowed_schemes))}://")
    if parts.username or parts.password:
        problems.append("apiUrl must not contain credentials")
    if "?" in (api_url or "") or "#" in (api_url or ""):
        problems.append("apiUrl must not have a query string or fragment")
    if not parts.hostname:
        problems.append("apiUrl has no host")
    elif not settings.CRM_ALLOW_PRIVATE_NETWORKS:
        try:
            addresses = {
                info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)
            }
        except (socket.gaierror, UnicodeError):
            addresses = set()  # unresolvable now: the send fails as a connection error
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not ip.is_global:
                problems.append(f"apiUrl resolves to a non-public address ({ip})")
                break
    return problems


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
        response = session.post(
            url, json=payload, headers=headers, timeout=timeout, allow_redirects=False
        )
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
