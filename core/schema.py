"""The API as its OpenAPI schema describes it: errors and what input is refused.

Every /api/ operation answers errors in one shape (core.api). `ErrorDocumentingSchema`
adds to each operation the refusals any operation of its kind can give: 406 and 503
(with `Retry-After`) always, 400 when it reads a body or query parameters, 401 when it
needs credentials, 404 when its path names something, 413 and 415 when it reads a body,
429 (with `Retry-After`) when its security scheme is throttled (the subclass says which).
The refusals only some operations give (403, a 404 without a path parameter, 409, 422)
each view declares with `error_responses`.

It also says what DRF's request fields refuse beyond their type (blank or NUL strings,
non-UUID strings, emails Django rejects), and `requires_any_of` states a "this or that"
rule, so that a request the schema allows is one the API accepts.
"""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, extend_schema_field, extend_schema_serializer
from rest_framework import serializers

RETRY_AFTER_STATUSES = ("429", "503")


@extend_schema_field(
    {
        "type": "object",
        "description": "Each offending field (or `non_field_errors`) with its messages; a "
        "nested object for a field of a list or object.",
        "additionalProperties": {
            "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]
        },
    }
)
class FieldMessagesField(serializers.DictField):
    pass


class ErrorDetail(serializers.Serializer):
    code = serializers.CharField(help_text="Stable, machine-readable: `validation_error`, …")
    message = serializers.CharField(help_text="For humans; may change.")
    fields = FieldMessagesField(required=False)


@extend_schema_serializer(component_name="Error")
class ErrorResponse(serializers.Serializer):
    error = ErrorDetail()


def requires_any_of(*field_names: str):
    """Class decorator: the serializer's `validate` refuses a body in which none of
    `field_names` has a value; its schema says so (`anyOf` of `required`)."""

    def decorate(serializer_class):
        serializer_class.schema_requires_any_of = field_names
        return serializer_class

    return decorate


def error_responses(descriptions: dict[int, str]) -> dict[int, OpenApiResponse]:
    """`{status: description}` as responses in the error shape, for `extend_schema`."""
    return {
        status: OpenApiResponse(ErrorResponse, description=description)
        for status, description in descriptions.items()
    }


RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 0},
        "required": True,
    }
}

DESCRIPTIONS = {
    400: "Invalid input (`validation_error` names every offending field in `fields`; "
    "`invalid_json`: the body is not JSON).",
    401: "Credentials missing or not accepted; `code` says which.",
    403: "The credentials are valid but may not do this (for a logged-in user: also a "
    "missing or wrong CSRF token).",
    404: "What the path names does not exist in the caller's tenant (`*_not_found`), or the "
    "path itself is malformed (`not_found`).",
    406: "The `Accept` header allows no JSON (`not_acceptable`).",
    413: "The body is larger than the server accepts (`payload_too_large`).",
    415: "The body is not `application/json` (`unsupported_media_type`).",
    429: "Too many requests (`too_many_attempts`: failed API-key attempts from this "
    "address; `rate_limited`: this key's request rate). Wait `Retry-After` seconds.",
    503: "The service is briefly unavailable (`service_unavailable`); nothing was changed. "
    "Wait `Retry-After` seconds.",
}

URI_TOO_LONG = (
    "The URL is longer than the HTTP server accepts (gunicorn: a request line of more than "
    "4094 bytes); answered by the server itself, not in the API's error shape."
)

# What DRF's CharField refuses, as patterns: the NUL character always; with
# allow_blank=False also a value that is empty once trimmed. The whitespace is spelled
# out as Python's str.strip() knows it: a schema's `\s` is ECMA-262's, which leaves out
# \x1c-\x1f and \x85, so a name of just those would pass the schema and be refused.
PYTHON_WHITESPACE = (
    r"\t\n\u000b\u000c\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029"
    r"\u202f\u205f\u3000"
)
NO_NUL = r"^[^\u0000]*$"
NOT_BLANK = rf"^[^\u0000]*[^\u0000{PYTHON_WHITESPACE}][^\u0000]*$"
NOT_EMPTY = r"^[^\u0000]+$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_ATOM = r"[-!#$%&'*+/=?^_`{}|~0-9A-Za-z]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z][A-Za-z-]{{0,61}}[A-Za-z]$"
BLANK_STRING = {"type": "string", "maxLength": 0}


def _describe_string_input(field: serializers.CharField, schema: dict) -> None:
    if schema.get("type") != "string" or "pattern" in schema or "enum" in schema:
        return
    if isinstance(field, serializers.EmailField):
        # Django's EmailValidator is stricter than the `email` format: a TLD of 2+ letters.
        schema["pattern"] = EMAIL_PATTERN
        return
    if field.allow_blank:
        schema["pattern"] = NO_NUL
    else:
        schema["minLength"] = max(schema.get("minLength", 0), 1)
        schema["pattern"] = NOT_BLANK if field.trim_whitespace else NOT_EMPTY


class ErrorDocumentingSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus every operation's standard error responses and
    the input rules of request fields."""

    # Security schemes whose operations are rate limited (429); set by the subclass
    # that knows the API's authentication.
    throttled_security_schemes: frozenset[str] = frozenset()

    def _is_api_operation(self) -> bool:
        # Not the mocked views of the documented outgoing webhooks: their "responses"
        # are what the tenant's receiver answers.
        return self.path.startswith("/api/")

    def _has_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None

    def standard_error_statuses(self, parameters: list[dict]) -> list[int]:
        security = {name for requirement in self.get_auth() for name in requirement}
        locations = {parameter["in"] for parameter in parameters}
        statuses = [406, 503]
        if self._has_body() or "query" in locations:
            statuses.append(400)
        if security:
            statuses.append(401)
        if "path" in locations:
            statuses.append(404)
        if self._has_body():
            statuses += [413, 415]
        if security & self.throttled_security_schemes:
            statuses.append(429)
        return sorted(statuses)

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction == "request" and isinstance(field, serializers.CharField):
            _describe_string_input(field, schema)
        if direction == "request" and isinstance(field, serializers.UUIDField):
            # `format` alone is an annotation in OpenAPI 3.1: validators need not check it.
            schema.setdefault("pattern", UUID_PATTERN)
        return schema

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        names = getattr(serializer, "schema_requires_any_of", ())
        if direction == "request" and names:
            schema["anyOf"] = [
                {"required": [name], "properties": {name: {"pattern": NOT_BLANK}}} for name in names
            ]
        return schema

    def _insert_field_validators(self, field, schema):
        super()._insert_field_validators(field, schema)
        # drf-spectacular offers a blank-allowed string as `oneOf: [constraints, ""]`;
        # "" can match both (our patterns allow it), which `oneOf` forbids.
        if BLANK_STRING in schema.get("oneOf", []):
            schema["anyOf"] = schema.pop("oneOf")

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if not self._is_api_operation():
            return responses
        parameters = self._get_parameters()
        for status in self.standard_error_statuses(parameters):
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(
                    OpenApiResponse(ErrorResponse, description=DESCRIPTIONS[status]), str(status)
                )
        if any(parameter["in"] == "query" for parameter in parameters):
            # Refused by the HTTP server (gunicorn: a request line over 4094 bytes) before
            # the API sees the request, so not in the API's error shape.
            responses.setdefault("414", {"description": URI_TOO_LONG})
        return dict(sorted(responses.items()))

    def _get_response_headers_for_code(self, status_code, direction="response"):
        headers = super()._get_response_headers_for_code(status_code, direction)
        if self._is_api_operation() and str(status_code) in RETRY_AFTER_STATUSES:
            headers = {**RETRY_AFTER_HEADER, **headers}
        return headers
