"""`Tenant.has_active_webhooks` under two endpoint changes at once (PostgreSQL, real
threads): the SLA sweep trusts the flag, so it must never say "none" while an endpoint
is on."""

import threading

import pytest
from django.db import connection, transaction

from core.actor import Actor
from teams.models import Tenant
from tests.db_locks import in_thread
from tests.e2e.processes import wait_until
from webhooks.models import WebhookEndpoint
from webhooks.services import create_endpoint, update_endpoint

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SYSTEM = Actor.system()


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def _adding_an_endpoint(tenant, added: threading.Event, release: threading.Event):
    """Work for a thread: add an endpoint and hold the change uncommitted until
    `release` (`added` once it is made)."""

    def add_one():
        try:
            with transaction.atomic():
                create_endpoint(tenant=tenant, actor=SYSTEM, url="https://new.example.com/in")
                added.set()
                release.wait(10)
        finally:
            added.set()

    return add_one


@pytest.mark.parametrize("second", ["turns the old one off", "adds another"])
def test_two_endpoint_changes_at_once_leave_the_flag_as_the_endpoints_are(tenant, second):
    """One admin adds an endpoint while another turns the only other one off (or adds
    one too): whichever commits second must see the first's endpoint, and neither waits
    for the other forever."""
    old, _ = create_endpoint(tenant=tenant, actor=SYSTEM, url="https://old.example.com/in")
    added, release = threading.Event(), threading.Event()
    errors: list = []

    def change_another():
        if second == "adds another":
            create_endpoint(tenant=tenant, actor=SYSTEM, url="https://other.example.com/in")
        else:
            update_endpoint(tenant=tenant, actor=SYSTEM, endpoint_id=old.pk, is_active=False)

    adder = in_thread(_adding_an_endpoint(tenant, added, release), errors)
    try:
        assert added.wait(10)
        other = in_thread(change_another, errors)
        wait_until(_waiting_on_a_lock, timeout=10, what="the second change waits for the first")
    finally:
        release.set()
    adder.join(10)
    other.join(10)

    assert not adder.is_alive() and not other.is_alive()
    assert not errors, errors
    active = WebhookEndpoint.objects.for_tenant(tenant).filter(is_active=True).count()
    assert active == (3 if second == "adds another" else 1)
    assert Tenant.objects.get(pk=tenant.pk).has_active_webhooks is True


def test_an_endpoint_change_holds_no_handover_of_the_tenant(tenant, api_key):
    """While a change to the tenant's endpoints is uncommitted, the tenant's handovers go
    on: its lock on the tenant row does not block their foreign-key checks of it."""
    from rest_framework.test import APIClient

    from tests.factories import MembershipFactory

    MembershipFactory(tenant=tenant)
    added, release = threading.Event(), threading.Event()
    errors: list = []
    answers: list = []

    def hand_over():
        client = APIClient()
        client.credentials(HTTP_X_API_KEY=api_key[1])
        answers.append(client.post("/api/v1/handover", {"contactId": "+4915"}, format="json"))

    adder = in_thread(_adding_an_endpoint(tenant, added, release), errors)
    try:
        assert added.wait(10)
        handover = in_thread(hand_over, errors)
        handover.join(5)
        finished_meanwhile = not handover.is_alive()
    finally:
        release.set()
    adder.join(10)
    handover.join(10)

    assert not errors, errors
    assert finished_meanwhile, "the handover waited for the endpoint change to commit"
    assert answers[0].status_code == 201, answers[0].content
