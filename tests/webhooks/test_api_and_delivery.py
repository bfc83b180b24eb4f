"""Webhook endpoints through the API, and signed delivery to a local receiver."""

import base64
import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from standardwebhooks import Webhook, WebhookVerificationError
from werkzeug import Response

from audit.models import ActivityLog
from core.actor import Actor
from outbox.models import MessageStatus, OutboundMessage
from teams.models import Tenant
from webhooks.events import Event, emit
from webhooks.models import WebhookAttempt, WebhookEndpoint
from webhooks.services import create_endpoint, disable_failing_endpoints

pytestmark = pytest.mark.django_db
URL = "/api/v1/webhooks"


def create(client, **body):
    return client.post(URL, {"url": "https://hooks.example.com/in", **body}, format="json")


def make_due():
    OutboundMessage.all_tenants.filter(status=MessageStatus.PENDING).update(
        next_attempt_at=timezone.now()
    )


def send_event(tenant, event_type="lead.claimed", subject="lead-1", data=None):
    with transaction.atomic():
        emit(
            [
                Event(
                    tenant_id=tenant.pk,
                    type=event_type,
                    data=data or {"id": subject},
                    subject_id=subject,
                )
            ]
        )


@pytest.fixture
def receiver(httpserver):
    """A local receiver; `received` holds (headers, body) of every request."""
    received = []

    def handler(request):
        received.append((dict(request.headers), request.get_data(as_text=True)))
        status = receiver.answers.pop(0) if receiver.answers else 200
        return Response("thanks" if status < 300 else "no", status=status)

    receiver.answers = []
    receiver.received = received
    receiver.url = httpserver.url_for("/hooks")
    httpserver.expect_request("/hooks", method="POST").respond_with_handler(handler)
    return receiver


# --- API --------------------------------------------------------------------------------


def test_creating_an_endpoint_shows_its_secret_once_and_stores_it_encrypted(tenant_client, tenant):
    response = create(tenant_client, events=["lead.claimed"], description="CRM sync")

    assert response.status_code == 201
    body = response.json()
    assert body["url"] == "https://hooks.example.com/in"
    assert body["events"] == ["lead.claimed"]
    assert body["isActive"] is True
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) >= 24
    endpoint = WebhookEndpoint.objects.for_tenant(tenant).get(pk=body["id"])
    assert body["secret"] not in endpoint.secret_encrypted
    assert "secret" not in tenant_client.get(f"{URL}/{body['id']}").json()
    assert tenant.__class__.objects.get(pk=tenant.pk).has_active_webhooks is True


def test_events_omitted_means_every_event(tenant_client):
    assert create(tenant_client).json()["events"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["lead.claimed", "lead.teleported"]}, "events"),
        ({"events": "lead.claimed"}, "events"),
        ({"url": "ftp://hooks.example.com/in"}, "url"),
        ({"url": "https://user:pw@hooks.example.com/in"}, "url"),
        ({"url": ""}, "url"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(tenant_client, tenant, body, field):
    response = create(tenant_client, **body)

    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not WebhookEndpoint.objects.for_tenant(tenant).exists()


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.com/in", "https://127.0.0.1/in", "https://10.1.2.3/x", "https://[::1]/"],
)
def test_internal_or_plain_http_addresses_are_refused(tenant_client, settings, url):
    settings.OUTBOUND_ALLOW_HTTP = False
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False

    response = create(tenant_client, url=url)

    assert response.status_code == 400
    assert "url" in response.json()["error"]["fields"]


def test_list_get_patch_delete(tenant_client, tenant):
    first = create(tenant_client).json()
    create(tenant_client, url="https://hooks.example.com/two")

    listed = tenant_client.get(URL).json()
    assert listed["count"] == 2
    assert listed["results"][0]["id"] == first["id"]

    patched = tenant_client.patch(
        f"{URL}/{first['id']}", {"events": ["lead.closed"], "isActive": False}, format="json"
    )
    assert patched.status_code == 200
    assert patched.json()["events"] == ["lead.closed"]
    assert patched.json()["isActive"] is False

    assert tenant_client.delete(f"{URL}/{first['id']}").status_code == 204
    assert tenant_client.get(f"{URL}/{first['id']}").status_code == 404
    actions = set(ActivityLog.objects.for_tenant(tenant).values_list("action", flat=True))
    assert {"webhook.created", "webhook.updated", "webhook.deleted"} <= actions


def test_another_tenants_endpoint_is_a_404_everywhere(tenant_client, other_tenant):
    theirs, _ = create_endpoint(
        tenant=other_tenant, actor=Actor.system(), url="https://hooks.example.com/theirs"
    )
    base = f"{URL}/{theirs.pk}"

    assert tenant_client.get(base).status_code == 404
    assert tenant_client.patch(base, {"isActive": False}, format="json").status_code == 404
    assert tenant_client.delete(base).status_code == 404
    assert tenant_client.post(f"{base}/rotate-secret").status_code == 404
    assert tenant_client.post(f"{base}/test").status_code == 404
    assert tenant_client.get(f"{base}/deliveries").status_code == 404
    theirs.refresh_from_db()
    assert theirs.is_active is True


def test_the_api_needs_the_tenant_key(api_client):
    assert api_client.get(URL).status_code == 401


# --- delivery ---------------------------------------------------------------------------


def test_a_delivery_is_signed_so_the_library_verifies_it(tenant, receiver, deliver_outbox):
    endpoint, secret = create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    send_event(tenant, data={"id": "lead-1", "status": "claimed"})

    deliver_outbox()

    [(headers, body)] = receiver.received
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "lead.claimed"
    assert payload["data"] == {"id": "lead-1", "status": "claimed"}
    assert headers["Webhook-Id"].startswith("msg_")
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
    attempt = WebhookAttempt.objects.for_tenant(tenant).get()
    assert (attempt.status_code, attempt.succeeded, attempt.response_body) == (200, True, "thanks")
    endpoint.refresh_from_db()
    assert endpoint.last_success_at is not None


def test_a_receiver_failing_twice_gets_the_same_webhook_id_three_times(
    tenant, receiver, deliver_outbox
):
    create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    receiver.answers = [503, 500]
    send_event(tenant)

    for _ in range(3):
        deliver_outbox()
        make_due()

    ids = [headers["Webhook-Id"] for headers, _ in receiver.received]
    assert len(ids) == 3 and len(set(ids)) == 1
    bodies = {body for _, body in receiver.received}
    assert len(bodies) == 1  # the very same bytes each time
    message = OutboundMessage.all_tenants.get(channel="webhook")
    assert message.status == MessageStatus.SENT
    log = tenant_client_deliveries(tenant)
    assert [a.status_code for a in log] == [200, 500, 503]


def tenant_client_deliveries(tenant):
    return list(WebhookAttempt.objects.for_tenant(tenant).order_by("-attempted_at"))


def test_the_first_retry_comes_within_30_seconds_and_retries_last_a_day(monkeypatch):
    from outbox.channels import get_channel
    from outbox.delivery import retry_delay_seconds

    channel = get_channel("webhook")
    assert retry_delay_seconds(1, channel) <= 30  # with the largest jitter
    monkeypatch.setattr("outbox.delivery.random.uniform", lambda low, high: low)
    waits = [retry_delay_seconds(n, channel) for n in range(1, channel.max_attempts)]
    assert sum(waits) >= 24 * 3600  # with no jitter at all


def test_a_4xx_fails_at_once_and_410_disables_the_endpoint(
    tenant, owner, receiver, mailoutbox, deliver_outbox
):
    endpoint, _ = create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    receiver.answers = [400, 410]
    send_event(tenant, subject="a")
    deliver_outbox()
    assert OutboundMessage.all_tenants.get(channel="webhook").status == MessageStatus.FAILED

    send_event(tenant, subject="b")
    deliver_outbox()

    endpoint.refresh_from_db()
    assert endpoint.is_active is False
    assert "410" in endpoint.disabled_reason
    assert Tenant.objects.get(pk=tenant.pk).has_active_webhooks is False
    disabled = ActivityLog.objects.for_tenant(tenant).get(action="webhook.disabled")
    assert (disabled.actor_label, disabled.via) == ("system", "job:outbox_delivery")
    # Nothing more is queued for it, and the admins were told.
    send_event(tenant, subject="c")
    assert OutboundMessage.all_tenants.filter(channel="webhook").count() == 2
    deliver_outbox()
    assert any("turned off" in m.subject for m in mailoutbox if owner.user.email in m.to)


def test_an_inactive_endpoint_gets_nothing_and_tenants_never_see_each_other(
    tenant, other_tenant, receiver, deliver_outbox
):
    mine, _ = create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    create_endpoint(tenant=other_tenant, actor=Actor.system(), url=receiver.url + "?tenant=other")
    send_event(tenant, data={"who": "mine"})
    deliver_outbox()
    assert [json.loads(b)["data"] for _, b in receiver.received] == [{"who": "mine"}]

    WebhookEndpoint.objects.for_tenant(tenant).filter(pk=mine.pk).update(is_active=False)
    send_event(tenant, data={"who": "mine again"})
    deliver_outbox()
    assert len(receiver.received) == 1


def test_rotating_the_secret_makes_the_new_one_valid_and_the_old_one_invalid(
    tenant, tenant_client, receiver, deliver_outbox
):
    created = tenant_client.post(URL, {"url": receiver.url}, format="json").json()
    rotated = tenant_client.post(f"{URL}/{created['id']}/rotate-secret").json()
    assert rotated["secret"] != created["secret"]

    send_event(tenant)
    deliver_outbox()

    [(headers, body)] = receiver.received
    Webhook(rotated["secret"]).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(created["secret"]).verify(body, headers)


def test_the_test_event_and_the_delivery_log_through_the_api(
    tenant_client, receiver, deliver_outbox
):
    created = tenant_client.post(
        URL, {"url": receiver.url, "events": ["lead.closed"]}, format="json"
    ).json()

    answer = tenant_client.post(f"{URL}/{created['id']}/test")
    assert answer.status_code == 202
    deliver_outbox()

    [(headers, body)] = receiver.received
    assert json.loads(body)["type"] == "webhook.test"
    assert headers["Webhook-Id"] == answer.json()["webhookId"]
    log = tenant_client.get(f"{URL}/{created['id']}/deliveries").json()
    assert log["count"] == 1
    [row] = log["results"]
    assert row["statusCode"] == 200
    assert row["eventType"] == "webhook.test"
    assert row["responseBody"] == "thanks"
    assert row["messageStatus"] == "sent"


def test_an_endpoint_failing_for_three_days_is_turned_off_and_admins_are_told(
    tenant, owner, mailoutbox, deliver_outbox
):
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )
    WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint.pk).update(
        failing_since=timezone.now() - timedelta(hours=71)
    )
    assert disable_failing_endpoints() == 0

    WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint.pk).update(
        failing_since=timezone.now() - timedelta(hours=73)
    )
    assert disable_failing_endpoints() == 1

    endpoint.refresh_from_db()
    assert endpoint.is_active is False
    assert "72 hours" in endpoint.disabled_reason
    disabled = ActivityLog.objects.for_tenant(tenant).get(action="webhook.disabled")
    assert (disabled.actor_label, disabled.via) == ("system", "job:disable_failing_endpoints")
    deliver_outbox()
    [email] = [m for m in mailoutbox if owner.user.email in m.to]
    assert endpoint.url in email.body


@pytest.mark.parametrize("change", ["turned off", "deleted"])
def test_events_queued_before_an_endpoint_was_turned_off_or_deleted_are_skipped(
    tenant, receiver, deliver_outbox, change
):
    endpoint, _ = create_endpoint(tenant=tenant, actor=Actor.system(), url=receiver.url)
    send_event(tenant)
    if change == "deleted":
        WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint.pk).delete()
    else:
        WebhookEndpoint.objects.for_tenant(tenant).filter(pk=endpoint.pk).update(is_active=False)

    deliver_outbox()

    message = OutboundMessage.all_tenants.get(channel="webhook")
    assert message.status == MessageStatus.SKIPPED
    assert receiver.received == []


@pytest.mark.django_db
def test_only_admins_the_tenants_key_or_the_system_may_configure_endpoints(tenant, api_key):
    from core.errors import Forbidden
    from teams.models import Role
    from tests.factories import MembershipFactory
    from webhooks import services

    member = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.com/in"
    )
    as_member = Actor.for_membership(member, via="admin")
    ref = {"tenant": tenant, "endpoint_id": endpoint.pk}

    refused = [
        lambda: create_endpoint(tenant=tenant, actor=as_member, url="https://x.example.com/"),
        lambda: services.update_endpoint(actor=as_member, description="mine", **ref),
        lambda: services.rotate_secret(actor=as_member, **ref),
        lambda: services.send_test_event(actor=as_member, **ref),
        lambda: services.delete_endpoint(actor=as_member, **ref),
    ]
    for attempt in refused:
        with pytest.raises(Forbidden):
            attempt()
    assert WebhookEndpoint.objects.for_tenant(tenant).get().description == ""

    services.update_endpoint(actor=Actor.for_membership(admin, via="admin"), description="a", **ref)
    services.update_endpoint(actor=Actor.for_api_key(api_key[0]), description="b", **ref)
    assert WebhookEndpoint.objects.for_tenant(tenant).get().description == "b"
