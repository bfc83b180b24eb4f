from rest_framework import exceptions
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.utils.urls import remove_query_param
from rest_framework.views import APIView

from teams.authentication import API_KEY_QUERY_PARAM, TenantApiKeyAuthentication
from teams.permissions import HasTenantApiKey


class TenantApiView(APIView):
    """Base for endpoints called by external systems with a tenant API key.

    `self.tenant` is the tenant the key belongs to; every query in the view starts there.
    """

    authentication_classes = [TenantApiKeyAuthentication]
    permission_classes = [HasTenantApiKey]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.tenant = request.user.tenant

    def permission_denied(self, request, message=None, code=None):
        if request.authenticators and not request.successful_authenticator:
            raise exceptions.NotAuthenticated(
                detail="Send the tenant API key in the X-API-Key header or the apiKey "
                "query parameter.",
                code="api_key_missing",
            )
        super().permission_denied(request, message=message, code=code)


class TenantApiPagination(LimitOffsetPagination):
    """limit/offset pages whose next/previous links never repeat an `apiKey` back."""

    default_limit = 50
    max_limit = 500

    def get_limit(self, request):
        limit = self._query_int(request, self.limit_query_param, minimum=1)
        return self.default_limit if limit is None else min(limit, self.max_limit)

    def get_offset(self, request):
        return self._query_int(request, self.offset_query_param, minimum=0) or 0

    @staticmethod
    def _query_int(request, name, *, minimum):
        # DRF falls back to the default on a bad value; we refuse it, as the schema says.
        raw = request.query_params.get(name)
        if not raw:  # empty counts as omitted, as for every query parameter of the API
            return None
        value = int(raw) if raw.isascii() and raw.isdigit() else None
        if value is None or value < minimum:
            raise exceptions.ValidationError(
                {name: [f"Must be a whole number, at least {minimum}."]}
            )
        return value

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] = (
                    f"Rows per page: {self.default_limit} if omitted, at most {self.max_limit} "
                    "(a larger limit gives that many)."
                )
            else:
                parameter["schema"]["minimum"] = 0
        return parameters

    def get_next_link(self):
        link = super().get_next_link()
        return remove_query_param(link, API_KEY_QUERY_PARAM) if link else link

    def get_previous_link(self):
        link = super().get_previous_link()
        return remove_query_param(link, API_KEY_QUERY_PARAM) if link else link

    def get_paginated_response_schema(self, schema):
        # As returned: all four keys always, the links null at either end (OpenAPI 3.1
        # spells that with a type list, not `nullable`).
        described = super().get_paginated_response_schema(schema)
        for link in ("next", "previous"):
            described["properties"][link].pop("nullable")
            described["properties"][link]["type"] = ["string", "null"]
        described["required"] = ["count", "next", "previous", "results"]
        return described
