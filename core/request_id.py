"""Every request has an id: the caller's `X-Request-ID` when it is a sane one (a load
balancer or the client sets it to follow one call through several systems), otherwise
a new one. It is on every log line of the request (core.log_context) and in the
response's `X-Request-ID` header, so that a user reporting a problem can quote it."""

import re
import uuid

from core import log_context

HEADER = "X-Request-ID"
# Letters, digits, "-", "_", "." and ":" only, at most 128: the id is written into log
# lines and a response header, so nothing that could forge a line or a header.
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(value: str | None) -> str:
    """The incoming id if it is acceptable, else a new one."""
    if value and _VALID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_id_from(request.headers.get(HEADER))
        request.request_id = request_id
        # A fresh context: nothing from a previous request on this thread shows up here,
        # and whatever the request binds (its tenant, a session) ends with it.
        token = log_context.start(request_id=request_id)
        try:
            response = self.get_response(request)
        finally:
            log_context.reset(token)
        response[HEADER] = request_id
        return response
