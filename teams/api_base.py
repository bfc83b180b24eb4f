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

    def get_next_link(self):
        link = super().get_next_link()
        return remove_query_param(link, API_KEY_QUERY_PARAM) if link else link

    def get_previous_link(self):
        link = super().get_previous_link()
        return remove_query_param(link, API_KEY_QUERY_PARAM) if link else link
