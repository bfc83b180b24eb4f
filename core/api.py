"""One JSON error shape for the whole API.

    {"error": {"code": "validation_error", "message": "...", "fields": {"contactId": ["..."]}}}

`code` is machine-readable and stable; `message` is for humans; `fields` appears on
validation errors and names every offending field. Each kind of `DomainError` answers
with its status from `DOMAIN_ERROR_STATUS`.
"""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import DatabaseError
from django.http import Http404
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
    from django.http import JsonResponse
    from django.views.defaults import page_not_found

    if _wants_json(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return page_not_found(request, exception)


def json_or_html_500(request):
    from django.http import JsonResponse
    from django.views.defaults import server_error

    if _wants_json(request):
        return JsonResponse(
            error_body("server_error", "Something went wrong; nothing was changed."), status=500
        )
    return server_error(request)
