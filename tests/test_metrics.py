"""GET /metrics: who may read it, and that the counters move when things happen.

Every assertion reads the page a Prometheus server would scrape. The counters are
process-wide (the default registry: no PROMETHEUS_MULTIPROC_DIR in tests), so the tests
compare a scrape before and after, never absolute values.
"""

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.db import DatabaseError
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from core.actor import Actor
from leads.services import create_lead, sweep_sla_breaches
from tests.factories import AssignmentConfigFactory, MembershipFactory
from tests.inbox.factories import CrmIntegrationFactory

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-4f1c9a"
HANDOVER_URL = "/api/v1/handover"
MESSAGES_PATH = "/api/meta/PN1/messages"


@pytest.fixture(autouse=True)
def _metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.CRM_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    settings.OUTBOX_MAX_ATTEMPTS = 3


def scrape(token=TOKEN) -> dict:
    """{(sample name, ((label, value), ...)): value} from the /metrics page."""
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before, after, name, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def handover(client, contact, expect=(200, 201), **fields):
    response = client.post(HANDOVER_URL, {"contactId": contact, **fields}, format="json")
    assert response.status_code in expect, response.content
    return response


# --- who may read it ---------------------------------------------------------------------


def test_without_a_configured_token_the_page_does_not_exist(settings):
    settings.METRICS_TOKEN = ""

    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ")
    assert response.status_code == 404
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 404
    assert b"handover_requests_total" not in response.content


def test_without_a_token_the_scraper_is_told_to_authenticate():
    response = Client().get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"
    assert b"handover_requests_total" not in response.content


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong-token", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"],
)
def test_a_wrong_token_is_refused(authorization):
    response = Client().get("/metrics", HTTP_AUTHORIZATION=authorization)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert b"handover_requests_total" not in response.content


def test_the_token_must_come_as_a_bearer_token():
    for authorization in (TOKEN, f"Basic {TOKEN}", f"Token {TOKEN}"):
        response = Client().get("/metrics", HTTP_AUTHORIZATION=authorization)
        assert response.status_code == 401, authorization


def test_the_right_token_reads_every_metric():
    samples = scrape()
    names = {name for name, _ in samples}

    for expected in (
        "handover_requests_total",
        "lead_sla_breaches_total",
        "outbound_backlog_due",
        "outbound_backlog_oldest_seconds",
        "http_requests_total",
    ):
        assert expected in names, expected
    # Known label values are there before the first event, at zero or more.
    assert ("lead_sla_breaches_total", (("stage", "claim"),)) in samples
    assert ("handover_requests_total", (("outcome", "error"),)) in samples


# --- handovers ---------------------------------------------------------------------------


def test_handover_outcomes_and_unassigned_reasons_are_counted(tenant, tenant_client):
    before = scrape()

    first = handover(tenant_client, "c1", sendHandoverMessage=False)  # no agents at all
    handover(tenant_client, "c1", sendHandoverMessage=False)  # same open session
    key = {"HTTP_IDEMPOTENCY_KEY": "k-1"}
    tenant_client.post(HANDOVER_URL, {"contactId": "c2"}, format="json", **key)
    replay = tenant_client.post(HANDOVER_URL, {"contactId": "c2"}, format="json", **key)
    missing_team = handover(
        tenant_client, "c3", expect=(404,), teamId="0b6f2a52-9f0e-4c1e-9d8f-2f3f6a1f8c11"
    )
    invalid = handover(tenant_client, "", expect=(400,))

    after = scrape()
    assert first.status_code == 201 and first.json()["unassignedReason"] == "no_agents"
    assert replay["Idempotent-Replayed"] == "true"
    assert missing_team.json()["error"]["code"] == "team_not_found"
    assert invalid.status_code == 400
    assert moved(before, after, "handover_requests_total", outcome="created") == 2
    assert moved(before, after, "handover_requests_total", outcome="reused") == 1
    assert moved(before, after, "handover_requests_total", outcome="replayed") == 1
    assert moved(before, after, "handover_requests_total", outcome="rejected") == 2
    assert moved(before, after, "handover_requests_total", outcome="error") == 0
    # Every routing attempt that found nobody; the replay routed nothing.
    assert moved(before, after, "handover_unassigned_total", reason="no_agents") == 3
    assert moved(before, after, "routing_duration_seconds_count") == 3


def test_a_handover_that_fails_on_our_side_is_counted_as_error(tenant, tenant_client, monkeypatch):
    def broken_database(**kwargs):
        raise DatabaseError("deadlock detected")

    monkeypatch.setattr("inbox.api.handover", broken_database)
    before = scrape()

    response = handover(tenant_client, "c1", expect=(500,))

    after = scrape()
    assert response.json()["error"]["code"] == "database_error"
    assert moved(before, after, "handover_requests_total", outcome="error") == 1
    assert moved(before, after, "handover_requests_total", outcome="rejected") == 0
    assert moved(before, after, "handover_requests_total", outcome="created") == 0


def test_an_assigned_handover_is_not_counted_as_unassigned_and_reasons_are_apart(
    tenant, tenant_client
):
    before = scrape()
    config = AssignmentConfigFactory(tenant=tenant, strategy="manual")
    handover(tenant_client, "manual-1", sendHandoverMessage=False)
    config.strategy = "round_robin"
    config.save()  # as the admin saves it: the routing cache lets go of the old one
    MembershipFactory(tenant=tenant)
    assigned = handover(tenant_client, "assigned-1", sendHandoverMessage=False)

    after = scrape()
    assert assigned.json()["status"] == "assigned"
    assert moved(before, after, "handover_requests_total", outcome="created") == 2
    assert moved(before, after, "handover_unassigned_total", reason="manual_strategy") == 1
    assert moved(before, after, "handover_unassigned_total", reason="no_agents") == 0


def test_request_metrics_label_the_url_pattern_not_the_path(tenant, tenant_client):
    session_id = handover(tenant_client, "c1", sendHandoverMessage=False).json()["sessionId"]
    before = scrape()

    for _ in range(2):
        assert tenant_client.get(f"/api/v1/sessions/{session_id}").status_code == 200
    assert tenant_client.get("/api/v1/no-such-thing/123").status_code == 404

    after = scrape()
    route = "/api/v1/sessions/<uuid:session_id>"
    assert moved(before, after, "http_requests_total", method="GET", route=route, status="200") == 2
    assert (
        moved(before, after, "http_request_duration_seconds_count", method="GET", route=route) == 2
    )
    assert (
        moved(before, after, "http_requests_total", method="GET", route="<unmatched>", status="404")
        == 1
    )
    labelled = [dict(labels) for _, labels in after]
    assert not [labels for labels in labelled if session_id in labels.get("route", "")], (
        "an id in a label is a time series per object"
    )
    assert not [labels for labels in labelled if "123" in labels.get("route", "")]


# --- SLA breaches ------------------------------------------------------------------------


def test_a_breach_sweep_counts_each_breach_by_stage(tenant, time_machine):
    agent = MembershipFactory(tenant=tenant)
    time_machine.move_to("2026-03-02 10:00Z", tick=False)
    for name in ("one", "two"):
        create_lead(
            tenant=tenant,
            actor=Actor.system(),
            name=name,
            phone="+440000",
            assigned_agent_id=agent.pk,
        )
    before = scrape()
    time_machine.shift(timedelta(minutes=6))  # the 5-minute claim window has passed

    assert sweep_sla_breaches() == {"claim": 2, "contact": 0}
    assert sweep_sla_breaches() == {"claim": 0, "contact": 0}

    after = scrape()
    assert moved(before, after, "lead_sla_breaches_total", stage="claim") == 2
    assert moved(before, after, "lead_sla_breaches_total", stage="contact") == 0


# --- outbound messages -------------------------------------------------------------------


@pytest.fixture
def crm(tenant, httpserver):
    MembershipFactory(tenant=tenant)
    return CrmIntegrationFactory(tenant=tenant, api_url=httpserver.url_for("/"))


def test_a_failed_and_a_sent_message_are_counted_by_channel(
    tenant, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_oneshot_request(MESSAGES_PATH, method="POST").respond_with_data(
        "bad phone number", status=400
    )
    httpserver.expect_oneshot_request(MESSAGES_PATH, method="POST").respond_with_json(
        {"messages": [{"id": "wamid.1"}]}
    )
    before = scrape()

    handover(tenant_client, "+4915100000001")
    assert deliver_outbox() == 1  # the CRM refuses it: failed for good
    handover(tenant_client, "+4915100000002")
    assert deliver_outbox() == 1  # accepted

    after = scrape()
    assert len(httpserver.log) == 2
    assert moved(before, after, "outbound_messages_total", channel="whatsapp", status="failed") == 1
    assert moved(before, after, "outbound_messages_total", channel="whatsapp", status="sent") == 1
    assert moved(before, after, "outbound_messages_total", channel="whatsapp", status="retry") == 0


def test_a_retry_is_counted_as_retry_not_as_an_outcome(
    tenant, tenant_client, crm, httpserver, deliver_outbox
):
    httpserver.expect_oneshot_request(MESSAGES_PATH, method="POST").respond_with_data(
        "overloaded", status=503
    )
    before = scrape()

    handover(tenant_client, "+4915100000003")
    assert deliver_outbox() == 1

    after = scrape()
    assert moved(before, after, "outbound_messages_total", channel="whatsapp", status="retry") == 1
    assert moved(before, after, "outbound_messages_total", channel="whatsapp", status="failed") == 0


def test_the_backlog_gauges_show_a_due_message_and_how_long_it_waited(
    tenant, tenant_client, crm, httpserver, deliver_outbox, time_machine
):
    httpserver.expect_request(MESSAGES_PATH, method="POST").respond_with_json({})
    time_machine.move_to("2026-03-02 10:00Z", tick=False)
    assert value(scrape(), "outbound_backlog_due") == 0
    assert value(scrape(), "outbound_backlog_oldest_seconds") == 0

    handover(tenant_client, "+4915100000004")
    time_machine.shift(timedelta(minutes=7))  # nobody sent it: the worker is down

    samples = scrape()
    assert value(samples, "outbound_backlog_due") == 1
    assert value(samples, "outbound_backlog_oldest_seconds") == 420

    assert deliver_outbox() == 1
    samples = scrape()
    assert value(samples, "outbound_backlog_due") == 0
    assert value(samples, "outbound_backlog_oldest_seconds") == 0
