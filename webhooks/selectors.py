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


_ENDPOINT = WebhookEndpoint._meta
# Read inside another statement (the handover's pick), so that what it writes and
# whether the tenant has endpoints come from one snapshot, never from a cached tenant.
_ACTIVE_ENDPOINT_EXISTS = (
    f"EXISTS (SELECT 1 FROM {_ENDPOINT.db_table}"  # noqa: S608 (names from the model)
    f" WHERE {_ENDPOINT.get_field('tenant').column} = %s"
    f" AND {_ENDPOINT.get_field('is_active').column})"
)
_ACTIVE_ENDPOINT_EXISTS_BESIDES = (
    f"{_ACTIVE_ENDPOINT_EXISTS[:-1]} AND NOT ({_ENDPOINT.pk.column} = ANY(%s::uuid[])))"
)


def active_endpoint_exists_sql(*, tenant, besides=()) -> tuple[str, list]:
    """SQL (and its parameters) true when the tenant has an active endpoint, other than
    the endpoints `besides` (ids: those a write read a moment before, to write events
    for). With none besides, no array to adapt: a handover without webhooks reads this
    twice."""
    tenant_id = getattr(tenant, "pk", tenant)
    if not besides:
        return _ACTIVE_ENDPOINT_EXISTS, [tenant_id]
    return _ACTIVE_ENDPOINT_EXISTS_BESIDES, [tenant_id, list(besides)]
