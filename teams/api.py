from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from teams.api_base import TenantApiView


class WhoAmIApi(TenantApiView):
    """Tells an API caller which tenant its key belongs to (a cheap way to test a key)."""

    @extend_schema(
        summary="Which tenant does this API key belong to?",
        responses=inline_serializer(
            "WhoAmI",
            {
                "tenant": inline_serializer(
                    "WhoAmITenant", {"id": serializers.UUIDField(), "name": serializers.CharField()}
                ),
                "apiKey": inline_serializer(
                    "WhoAmIKey",
                    {"prefix": serializers.CharField(), "name": serializers.CharField()},
                ),
            },
        ),
    )
    def get(self, request):
        api_key = request.auth
        return Response(
            {
                "tenant": {"id": str(self.tenant.id), "name": self.tenant.name},
                "apiKey": {"prefix": api_key.prefix, "name": api_key.name},
            }
        )
