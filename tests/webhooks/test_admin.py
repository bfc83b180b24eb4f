"""Webhook endpoints and their delivery log in the admin."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from core.actor import Actor
from outbox.models import OutboundMessage
from tests.factories import UserFactory
from webhooks.models import WebhookAttempt, WebhookEndpoint
from webhooks.services import create_endpoint, send_test_event

pytestmark = pytest.mark.django_db


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_admin_adds_an_endpoint_and_sees_its_secret_once(owner, tenant):
    client = login(owner.user)

    response = client.post(
        reverse("admin:webhooks_webhookendpoint_add"),
        {
            "tenant": str(tenant.pk),
            "url": "https://hooks.example.com/in",
            "events": ["lead.claimed", "lead.closed"],
            "description": "CRM",
            "is_active": "on",
        },
        follow=True,
    )

    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.for_tenant(tenant).get()
    assert endpoint.events == ["lead.claimed", "lead.closed"]
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("whsec_" in text for text in shown)
    page = client.get(reverse("admin:webhooks_webhookendpoint_change", args=[endpoint.pk]))
    assert "whsec_" not in page.content.decode()


def test_an_internal_url_is_refused_on_the_form(owner, tenant, settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    client = login(owner.user)

    response = client.post(
        reverse("admin:webhooks_webhookendpoint_add"),
        {"tenant": str(tenant.pk), "url": "https://127.0.0.1/in", "is_active": "on"},
    )

    assert response.status_code == 200
    assert "non-public address" in response.content.decode()
    assert not WebhookEndpoint.objects.for_tenant(tenant).exists()


def test_endpoints_and_attempts_of_other_tenants_stay_hidden(owner, tenant, other_tenant):
    create_endpoint(tenant=tenant, actor=Actor.system(), url="https://mine.example.com/in")
    theirs, _ = create_endpoint(
        tenant=other_tenant, actor=Actor.system(), url="https://theirs.example.com/in"
    )
    client = login(owner.user)

    listing = client.get(reverse("admin:webhooks_webhookendpoint_changelist")).content.decode()

    assert "mine.example.com" in listing
    assert "theirs.example.com" not in listing
    other = client.get(reverse("admin:webhooks_webhookendpoint_change", args=[theirs.pk]))
    assert other.status_code in (302, 404)


def test_resend_queues_the_event_again_with_a_new_webhook_id(
    owner, tenant, httpserver, deliver_outbox
):
    httpserver.expect_request("/hooks").respond_with_data("ok")
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url=httpserver.url_for("/hooks")
    )
    first = send_test_event(tenant=tenant, actor=Actor.system(), endpoint_id=endpoint.pk)
    deliver_outbox()
    attempt = WebhookAttempt.objects.for_tenant(tenant).get()
    client = login(owner.user)

    client.post(
        reverse("admin:webhooks_webhookattempt_changelist"),
        {"action": "resend_selected", ACTION_CHECKBOX_NAME: [str(attempt.pk)]},
    )
    deliver_outbox()

    sent = OutboundMessage.objects.for_tenant(tenant).filter(channel="webhook")
    assert sent.count() == 2
    ids = [request.headers["webhook-id"] for request, _ in httpserver.log]
    assert len(ids) == 2
    assert ids[0] == first.payload["webhook_id"] != ids[1]


def test_saving_a_tenant_page_opened_earlier_keeps_its_webhooks_on(tenant):
    from teams.models import Tenant
    from teams.services import save_tenant_record

    stale = Tenant.objects.get(pk=tenant.pk)  # the admin page was opened now...
    create_endpoint(tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in")
    stale.name = "Acme Renamed"  # ...and saved after an endpoint was added
    root = UserFactory(is_staff=True, is_superuser=True)

    # The service behind the admin's tenant page writes only the form's changed fields.
    save_tenant_record(instance=stale, fields=["name"], actor=Actor.for_admin(root))

    tenant = Tenant.objects.get(pk=tenant.pk)
    assert tenant.name == "Acme Renamed"
    assert tenant.has_active_webhooks is True
