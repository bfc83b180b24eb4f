from rest_framework import exceptions
from rest_framework.views import APIView

from teams.authentication import TenantApiKeyAuthentication
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
