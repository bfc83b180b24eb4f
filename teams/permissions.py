from rest_framework.permissions import BasePermission

from teams.authentication import ApiKeyClient


class HasTenantApiKey(BasePermission):
    message = "Send the tenant API key in the X-API-Key header or the apiKey query parameter."

    def has_permission(self, request, view):
        return isinstance(request.user, ApiKeyClient)
