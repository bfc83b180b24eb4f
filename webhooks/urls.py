from django.urls import path

from webhooks.api import (
    DeliveriesApi,
    RotateSecretApi,
    TestWebhookApi,
    WebhookDetailApi,
    WebhooksApi,
)

urlpatterns = [
    path("webhooks", WebhooksApi.as_view(), name="api-webhooks"),
    path("webhooks/<uuid:endpoint_id>", WebhookDetailApi.as_view(), name="api-webhook"),
    path(
        "webhooks/<uuid:endpoint_id>/rotate-secret",
        RotateSecretApi.as_view(),
        name="api-webhook-rotate-secret",
    ),
    path("webhooks/<uuid:endpoint_id>/test", TestWebhookApi.as_view(), name="api-webhook-test"),
    path(
        "webhooks/<uuid:endpoint_id>/deliveries",
        DeliveriesApi.as_view(),
        name="api-webhook-deliveries",
    ),
]
