"""One JSON error shape for the whole API.

    {"error": {"code": "validation_error", "message": "...", "fields": {"contactId": ["..."]}}}

`code` is machine-readable and stable; `message` is for humans; `fields` appears on
validation errors and names every offending field. Each kind of `DomainError` answers
with its status from `DOMAIN_ERROR_STATUS`.

An outage (the database or the broker cannot be reached, or refuses for a moment)
answers `503 service_unavailable` with `Retry-After`, on every page: `outage_of()` says
which errors are one. Any other database error is a bug and stays a 500.
"""

import logging
import sys

import kombu.exceptions
import redis.exceptions
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.utils.log import log_response
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, Unprocessable

logger = logging.getLogger(__name__)

DOMAIN_ERROR_STATUS: dict[type[DomainError], int] = {
    InvalidInput: 400,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unprocessable: 422,
}


def domain_error_status(exc: DomainError) -> int:
    """The HTTP status of a refusal: its nearest mapped class; 400 for any other."""
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ERROR_STATUS:
            return DOMAIN_ERROR_STATUS[cls]
    return 400


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    body = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return {"error": body}


def _flatten_messages(detail) -> list[str]:
    if isinstance(detail, dict):
        return [m for value in detail.values() for m in _flatten_messages(value)]
    if isinstance(detail, list):
        return [m for value in detail for m in _flatten_messages(value)]
    return [str(detail)]


def _validation_fields(detail) -> dict:
    if isinstance(detail, dict):
        return {
            field: (
                _validation_fields(value)
                if isinstance(value, dict)
                else [str(m) for m in _flatten_messages(value)]
            )
            for field, value in detail.items()
        }
    return {"non_field_errors": [str(m) for m in _flatten_messages(detail)]}


def _summary(fields: dict, prefix: str = "") -> list[str]:
    parts = []
    for field, value in fields.items():
        name = f"{prefix}{field}"
        if isinstance(value, dict):
            parts.extend(_summary(value, prefix=f"{name}."))
        else:
            parts.append(f"{name}: {' '.join(value)}")
    return parts


# --- outages ----------------------------------------------------------------------------

# SQLSTATE classes and codes that say "not now" rather than "never": the connection
# (08), a transaction that lost a deadlock or serialization race (40), resources (53),
# operator intervention, statement timeouts and shutdowns included (57), system errors
# (58), a lock timeout (55P03). The other OperationalErrors (a statement too complex, an
# object in use) are bugs.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
TRANSIENT_SQLSTATES = frozenset({"55P03"})
# SQLite's primary result codes that are transient: BUSY, LOCKED, IOERR, FULL, CANTOPEN,
# PROTOCOL. "no such table" and syntax errors are SQLITE_ERROR: bugs.
TRANSIENT_SQLITE_CODES = frozenset({5, 6, 10, 13, 14, 15})

BROKER_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)


def _transient_database_error(exc: OperationalError) -> bool:
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate:
        return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES
    sqlite_code = getattr(cause, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return sqlite_code & 0xFF in TRANSIENT_SQLITE_CODES
    # No server-side code: the driver lost or could not open the connection (refused,
    # timed out, closed under it).
    return True


def _dependency_down(exc: BaseException) -> str | None:
    if isinstance(exc, InterfaceError) or (
        isinstance(exc, OperationalError) and _transient_database_error(exc)
    ):
        return "database"
    if isinstance(exc, BROKER_ERRORS):
        return "broker"
    return None


def _find_outage(exc: BaseException | None) -> tuple[str, BaseException] | None:
    """The outage `exc` is, or was raised while handling: the first one, which caused
    the rest. Django's session store turns a failed save into UpdateError, then
    SessionInterrupted (a 400 unless we look back); an atomic block that lost its
    connection reconnects on the way out and fails again, hiding the original error."""
    found = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        what = _dependency_down(exc)
        if what is not None:
            found = what, exc
        exc = exc.__cause__ or exc.__context__
    return found


def outage_of(exc: BaseException | None) -> str | None:
    """Which dependency `exc` says is unavailable for now: "database" or "broker"; None
    for anything else (a bug, bad input)."""
    found = _find_outage(exc)
    return found[0] if found else None


def _describe(exc: BaseException) -> str:
    """The error's class, driver class, SQLSTATE and first line: enough to tell a refused
    connection from a timeout, with no query parameters or credentials in it."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    name = type(cause).__qualname__
    module = type(cause).__module__.split(".")[0]
    sqlstate = getattr(cause, "sqlstate", None)
    first_line = (str(cause).strip().splitlines() or [""])[0][:160]
    return f"{module}.{name}" + (f" [{sqlstate}]" if sqlstate else "") + f": {first_line}"


def retry_after_seconds() -> int:
    return settings.SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS


def outage_body(what: str) -> dict:
    name = "database" if what == "database" else "message broker"
    seconds = retry_after_seconds()
    return error_body(
        "service_unavailable",
        f"The {name} is unavailable for the moment; try again in {seconds} seconds.",
    )


def _answer_outage(response, request, what: str, exc: BaseException):
    """Add Retry-After and log one line (no traceback: an outage is not a bug, and one
    lasting seconds would otherwise flood the log). Marked as logged so that Django does
    not log it again as an error."""
    response["Retry-After"] = str(retry_after_seconds())
    _, outage = _find_outage(exc)
    django_request = getattr(request, "_request", request)
    log_response(
        "Service unavailable (%s: %s): %s %s",
        what,
        _describe(outage),
        django_request.method,
        django_request.path,
        response=response,
        request=django_request,
        logger=logger,
        level="warning",
    )
    return response


def outage_response(request, exc: BaseException) -> HttpResponse | None:
    """The 503 for an outage outside DRF views (JSON under /api/, an HTML page
    elsewhere); None if `exc` is no outage."""
    what = outage_of(exc)
    if what is None:
        return None
    if _wants_json(request):
        response = JsonResponse(outage_body(what), status=503)
    else:
        # No request context: the page must not need the database (no user, no session).
        page = render_to_string("503.html", {"retry_after": retry_after_seconds()})
        response = HttpResponse(page, status=503)
    return _answer_outage(response, request, what, exc)


def api_exception_handler(exc, context):
    if isinstance(exc, DomainError):
        return Response(
            error_body(exc.code, exc.message, exc.fields), status=domain_error_status(exc)
        )
    if isinstance(exc, exceptions.ValidationError):
        fields = _validation_fields(exc.detail)
        message = "Invalid input. " + "; ".join(_summary(fields))
        return Response(error_body("validation_error", message, fields), status=400)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body("payload_too_large", f"Request body is larger than {limit} bytes."),
            status=413,
        )
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is not None:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        code = codes if isinstance(codes, str) else "error"
        response.data = error_body(code, " ".join(_flatten_messages(detail)))
        return response

    what = outage_of(exc)
    if what is not None:
        return _answer_outage(
            Response(outage_body(what), status=503), context["request"], what, exc
        )
    if isinstance(exc, DatabaseError):
        # The service's transaction has already rolled back: nothing is half-written.
        logger.exception("Database error while handling %s", context["request"].path)
        return Response(
            error_body("database_error", "The change could not be saved; nothing was changed."),
            status=500,
        )
    return None


def _wants_json(request) -> bool:
    return request.path.startswith("/api/")


def json_or_html_404(request, exception=None):
    """Unknown API paths (and malformed ids in them) answer in the API's JSON shape."""
    from django.views.defaults import page_not_found

    if _wants_json(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return page_not_found(request, exception)


def json_or_html_400(request, exception=None):
    """Also an outage in disguise: a session that could not be saved on the way out is a
    SessionInterrupted (400) by the time Django answers it."""
    from django.views.defaults import bad_request

    outage = outage_response(request, exception)
    if outage is not None:
        return outage
    if _wants_json(request):
        return JsonResponse(error_body("bad_request", "Bad request."), status=400)
    return bad_request(request, exception)


def json_or_html_500(request):
    """Also the last resort for an outage that no view caught: one raised in a middleware
    (a session saved on the way out), where Django turns it into a 500 itself."""
    from django.views.defaults import server_error

    outage = outage_response(request, sys.exc_info()[1])
    if outage is not None:
        return outage
    if _wants_json(request):
        return JsonResponse(
            error_body("server_error", "Something went wrong; nothing was changed."), status=500
        )
    return server_error(request)
