from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from core.schema import ErrorDocumentingSchema


class TenantApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "teams.authentication.TenantApiKeyAuthentication"
    name = "TenantApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "Tenant API key (wk_…). The `apiKey` query parameter works too.",
        }


class SessionLoginScheme(SessionScheme):
    target_class = "teams.authentication.SessionAuthentication401"


class ApiSchema(ErrorDocumentingSchema):
    """The API's schema class: operations with a tenant API key are rate limited."""

    throttled_security_schemes = frozenset({TenantApiKeyScheme.name})
