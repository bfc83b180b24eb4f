"""The webhooks API (tenant API key): endpoints, their secrets, tests and delivery logs."""

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response

from core.actor import Actor
from core.errors import NotFound
from teams.api_base import TenantApiPagination, TenantApiView
from webhooks.events import EVENT_TYPES
from webhooks.selectors import attempts_for_endpoint, endpoint_for_tenant, endpoints_for_tenant
from webhooks.services import (
    create_endpoint,
    delete_endpoint,
    rotate_secret,
    send_test_event,
    update_endpoint,
)

# What `clean_url` accepts, as far as a pattern can say it: https, a host, no
# credentials, no fragment. Whether the host is public is checked when the endpoint is
# saved; a development server with OUTBOUND_ALLOW_HTTP takes http:// too.
URL_PATTERN = r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?][^\s#\u0000]*)?$"


@extend_schema_field({"type": "string", "pattern": URL_PATTERN, "maxLength": 2048})
class EndpointUrlField(serializers.CharField):
    pass


@extend_schema_field({"type": "string", "enum": list(EVENT_TYPES)})
class EventTypeField(serializers.CharField):
    """Checked by `clean_events`, which names every unknown type in one message."""


class EndpointInput(serializers.Serializer):
    url = EndpointUrlField(max_length=2048)
    events = serializers.ListField(
        child=EventTypeField(max_length=64),
        required=False,
        allow_empty=True,
        help_text=f"Event types; omitted or empty: all. Known: {', '.join(EVENT_TYPES)}.",
    )
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)


class EndpointPatch(EndpointInput):
    url = EndpointUrlField(max_length=2048, required=False)
    isActive = serializers.BooleanField(required=False)


class EndpointOutput(serializers.Serializer):
    id = serializers.UUIDField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.CharField())
    description = serializers.CharField()
    isActive = serializers.BooleanField(source="is_active")
    disabledReason = serializers.CharField(source="disabled_reason")
    lastSuccessAt = serializers.DateTimeField(source="last_success_at", allow_null=True)
    failingSince = serializers.DateTimeField(source="failing_since", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")


class EndpointWithSecretOutput(EndpointOutput):
    secret = serializers.CharField(help_text="whsec_…: shown only in this answer.")


class AttemptOutput(serializers.Serializer):
    id = serializers.UUIDField()
    webhookId = serializers.CharField(source="webhook_id")
    eventType = serializers.CharField(source="event_type")
    attemptedAt = serializers.DateTimeField(source="attempted_at")
    statusCode = serializers.IntegerField(source="status_code", allow_null=True)
    durationMs = serializers.IntegerField(source="duration_ms")
    responseBody = serializers.CharField(source="response_body")
    error = serializers.CharField()
    succeeded = serializers.BooleanField()
    messageStatus = serializers.CharField(source="message.status", default=None)


class TestOutput(serializers.Serializer):
    webhookId = serializers.CharField()
    status = serializers.CharField()


def _with_secret(endpoint, secret: str) -> dict:
    return {**EndpointOutput(endpoint).data, "secret": secret}


class WebhooksApi(TenantApiView):
    pagination_class = TenantApiPagination

    @extend_schema(summary="List webhook endpoints", responses=EndpointOutput(many=True))
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            endpoints_for_tenant(tenant=self.tenant), request, view=self
        )
        return paginator.get_paginated_response(EndpointOutput(page, many=True).data)

    @extend_schema(
        summary="Add a webhook endpoint",
        description="Events are POSTed to `url`, signed as Standard Webhooks specifies "
        "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). The `secret` is shown "
        "only in this answer.",
        request=EndpointInput,
        responses={201: EndpointWithSecretOutput},
    )
    def post(self, request):
        payload = EndpointInput(data=request.data)
        payload.is_valid(raise_exception=True)
        endpoint, secret = create_endpoint(
            tenant=self.tenant, actor=Actor.for_api_key(request.auth), **payload.validated_data
        )
        return Response(_with_secret(endpoint, secret), status=201)


class WebhookDetailApi(TenantApiView):
    def _endpoint(self, endpoint_id):
        endpoint = endpoint_for_tenant(tenant=self.tenant, endpoint_id=endpoint_id)
        if endpoint is None:
            raise NotFound(code="webhook_not_found", message="Webhook endpoint not found.")
        return endpoint

    @extend_schema(summary="A webhook endpoint", responses=EndpointOutput)
    def get(self, request, endpoint_id):
        return Response(EndpointOutput(self._endpoint(endpoint_id)).data)

    @extend_schema(
        summary="Change a webhook endpoint",
        description="`isActive: true` turns a disabled endpoint back on.",
        request=EndpointPatch,
        responses=EndpointOutput,
    )
    def patch(self, request, endpoint_id):
        payload = EndpointPatch(data=request.data, partial=True)
        payload.is_valid(raise_exception=True)
        changes = dict(payload.validated_data)
        if "isActive" in changes:
            changes["is_active"] = changes.pop("isActive")
        endpoint = update_endpoint(
            tenant=self.tenant,
            actor=Actor.for_api_key(request.auth),
            endpoint_id=endpoint_id,
            **changes,
        )
        return Response(EndpointOutput(endpoint).data)

    @extend_schema(summary="Delete a webhook endpoint", responses={204: None})
    def delete(self, request, endpoint_id):
        delete_endpoint(
            tenant=self.tenant, actor=Actor.for_api_key(request.auth), endpoint_id=endpoint_id
        )
        return Response(status=204)


class RotateSecretApi(TenantApiView):
    @extend_schema(
        summary="Rotate an endpoint's signing secret",
        description="Every later delivery is signed with the new secret, shown only here.",
        request=None,
        responses=EndpointWithSecretOutput,
    )
    def post(self, request, endpoint_id):
        endpoint, secret = rotate_secret(
            tenant=self.tenant, actor=Actor.for_api_key(request.auth), endpoint_id=endpoint_id
        )
        return Response(_with_secret(endpoint, secret))


class TestWebhookApi(TenantApiView):
    @extend_schema(
        summary="Send a webhook.test event to an endpoint",
        request=None,
        responses={202: TestOutput},
    )
    def post(self, request, endpoint_id):
        message = send_test_event(
            tenant=self.tenant, actor=Actor.for_api_key(request.auth), endpoint_id=endpoint_id
        )
        return Response(
            {"webhookId": message.payload["webhook_id"], "status": message.status}, status=202
        )


class DeliveriesApi(TenantApiView):
    pagination_class = TenantApiPagination

    @extend_schema(
        summary="An endpoint's delivery log, newest first",
        description="One row per attempt: time, HTTP status, duration, the first KB of the "
        "answer, the error.",
        responses=AttemptOutput(many=True),
    )
    def get(self, request, endpoint_id):
        attempts = attempts_for_endpoint(tenant=self.tenant, endpoint_id=endpoint_id)
        if attempts is None:
            raise NotFound(code="webhook_not_found", message="Webhook endpoint not found.")
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(attempts, request, view=self)
        return paginator.get_paginated_response(AttemptOutput(page, many=True).data)
