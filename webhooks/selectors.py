"""Reads for webhooks; every function starts from the tenant auth resolved."""

from webhooks.models import WebhookAttempt, WebhookEndpoint


def endpoints_for_tenant(*, tenant):
    return WebhookEndpoint.objects.for_tenant(tenant).order_by("created_at", "pk")


def endpoint_for_tenant(*, tenant, endpoint_id) -> WebhookEndpoint | None:
    return WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint_id).first()


def attempts_for_endpoint(*, tenant, endpoint_id):
    """The endpoint's attempts, newest first; None when it is not the tenant's."""
    if endpoint_for_tenant(tenant=tenant, endpoint_id=endpoint_id) is None:
        return None
    return (
        WebhookAttempt.objects.for_tenant(tenant)
        .filter(endpoint_id=endpoint_id)
        .select_related("message")
        .order_by("-attempted_at", "pk")
    )
