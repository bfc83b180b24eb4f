"""Guards of the outbox the state-machine tests do not reach: claims under other
transactions (PostgreSQL, real threads), a send cut by its deadline, the purge's floor,
and send again under two admins at once."""

import dataclasses
import threading
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from audit.models import ActivityLog
from core.actor import Actor
from outbox.channels import Channel, Delivered, PermanentSendError, register
from outbox.delivery import Followers, attempt, claim_due, deliver_due
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import queue_message, send_again
from tests.db_locks import in_thread, lock_waits
from tests.e2e.processes import wait_until

pytestmark = pytest.mark.django_db


@register
class GuardProbeChannel(Channel):
    name = "guard-probe"
    max_attempts = 3

    def endpoint_key(self, *, tenant_id, target, payload):
        return f"guard-probe:{payload.get('endpoint', 'one')}"

    def send(self, message, *, deadline):
        if message.payload.get("behave") == "outlast the deadline":
            time.sleep(message.payload["sleep"])  # the watchdog cuts the connection...
            raise PermanentSendError("connection closed")  # ...which looks permanent
        if message.payload.get("behave") == "database blip":
            raise OperationalError("could not read what to send")
        if message.payload.get("behave") == "long error":
            raise PermanentSendError("x" * 5000)
        if message.payload.get("behave") == "permanent":
            raise PermanentSendError("provider answered HTTP 400")
        return Delivered()


def _queue(tenant, **payload) -> OutboundMessage:
    with transaction.atomic():
        return queue_message(tenant=tenant, channel="guard-probe", target="x", payload=payload)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_claim_passes_over_a_message_locked_elsewhere_instead_of_waiting(tenant):
    locked, free = _queue(tenant, endpoint="a"), _queue(tenant, endpoint="b")
    holding, release, errors = threading.Event(), threading.Event(), []

    def hold_the_row():
        with transaction.atomic():
            OutboundMessage.all_tenants.select_for_update().get(pk=locked.pk)
            holding.set()
            release.wait(10)

    holder = in_thread(hold_the_row, errors)
    holding.wait(10)
    claimed = []
    claimer = in_thread(lambda: claimed.extend(claim_due(limit=10)), errors)
    try:
        claimer.join(5)
        assert not claimer.is_alive(), "the claim waited for a row another transaction holds"
    finally:
        release.set()
        holder.join(10)
        claimer.join(10)

    assert errors == []
    assert [m.pk for m in claimed] == [free.pk]
    assert OutboundMessage.all_tenants.get(pk=locked.pk).status == MessageStatus.PENDING


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_claiming_at_once_keep_an_endpoint_to_its_share(tenant, settings):
    settings.OUTBOX_ENDPOINT_CONCURRENCY = 2
    for _ in range(6):
        _queue(tenant, endpoint="slow")
    first_claimed, release, errors = threading.Event(), threading.Event(), []
    claims = {}

    def first_worker():  # claims, and has not committed yet
        try:
            with transaction.atomic():
                claims["first"] = claim_due(limit=10)
                first_claimed.set()
                release.wait(10)
        finally:
            first_claimed.set()

    def second_worker():  # the worker's own path: outside a transaction
        claims["second"] = claim_due(limit=10)

    first = in_thread(first_worker, errors)
    first_claimed.wait(10)
    # Meanwhile a retry of the endpoint falls due, older than everything the first took:
    # a second claim that does not wait for the first would see a free endpoint and take it.
    retry = _queue(tenant, endpoint="slow")
    OutboundMessage.all_tenants.filter(pk=retry.pk).update(
        next_attempt_at=timezone.now() - timedelta(hours=1)
    )
    second = in_thread(second_worker, errors)
    try:
        wait_until(
            lambda: lock_waits() > 0 or not second.is_alive(),
            timeout=10,
            what="the second claim waits or ends",
        )
    finally:
        release.set()
        first.join(10)
        second.join(10)

    assert errors == []
    assert len(claims["first"]) == 2
    assert claims["second"] == []
    in_flight = OutboundMessage.all_tenants.filter(
        status=MessageStatus.SENDING, lease_expires_at__gt=timezone.now()
    )
    assert in_flight.count() == 2


def test_a_send_cut_at_its_deadline_is_tried_again_not_failed(tenant, settings):
    settings.OUTBOX_SEND_DEADLINE_SECONDS = 0.2
    message = _queue(tenant, behave="outlast the deadline", sleep=0.6)

    deliver_due()

    message = OutboundMessage.all_tenants.get(pk=message.pk)
    assert message.status == MessageStatus.PENDING
    assert message.last_error.startswith("No complete answer within the 0.2 s deadline.")
    assert message.next_attempt_at > timezone.now()


def test_a_purge_asked_for_zero_days_still_keeps_the_last_day(tenant):
    from outbox.services import purge_finished_messages

    message = _queue(tenant)
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        status=MessageStatus.SENT, finished_at=timezone.now() - timedelta(hours=1)
    )

    assert purge_finished_messages(older_than_days=0) == 0

    assert OutboundMessage.all_tenants.filter(pk=message.pk).exists()


def _failed_email(tenant) -> OutboundMessage:
    with transaction.atomic():
        message = queue_message(
            tenant=tenant, channel="email", kind="test.email", target="a@example.test", payload={}
        )
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        status=MessageStatus.FAILED, attempts=6, max_attempts=6, last_error="HTTP 400"
    )
    return message


@pytest.mark.django_db(transaction=True)
def test_send_again_works_when_the_caller_has_no_transaction_of_its_own(tenant, owner):
    """The admin action calls it outside a transaction (no ATOMIC_REQUESTS)."""
    message = _failed_email(tenant)

    assert (
        send_again(tenant=tenant, message_ids=[message.pk], actor=Actor.for_membership(owner)) == 1
    )

    assert OutboundMessage.all_tenants.get(pk=message.pk).status == MessageStatus.PENDING


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_admins_sending_a_failed_message_again_at_once_queue_it_once(tenant, owner):
    message = _failed_email(tenant)
    actor = Actor.for_membership(owner)
    first_done, release = threading.Event(), threading.Event()
    results, errors = {}, []

    def first_admin():
        try:
            with transaction.atomic():
                results["first"] = send_again(tenant=tenant, message_ids=[message.pk], actor=actor)
                first_done.set()
                release.wait(10)
        except Exception as exc:
            errors.append(exc)
        finally:
            first_done.set()
            connection.close()

    def second_admin():
        try:
            results["second"] = send_again(tenant=tenant, message_ids=[message.pk], actor=actor)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=first_admin)
    first.start()
    first_done.wait(10)
    second = threading.Thread(target=second_admin)
    second.start()
    # The second waits for the first's row (its lock, or at the latest its write).
    wait_until(lambda: lock_waits() > 0, timeout=10, what="the second send again waits")
    release.set()
    first.join(10)
    second.join(10)

    assert errors == []
    assert results == {"first": 1, "second": 0}
    message = OutboundMessage.all_tenants.get(pk=message.pk)
    assert message.max_attempts == 12  # one fresh budget, not two
    assert ActivityLog.objects.for_tenant(tenant).filter(action="message.resent").count() == 1


def test_a_failure_from_a_claim_that_lost_its_row_is_neither_announced_nor_audited(tenant):
    from outbox.signals import message_failed

    message = _queue(tenant, behave="permanent")
    (stale,) = claim_due(limit=1)
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    claim_due(limit=1)  # another worker has it now
    heard = []

    def listener(sender, message, error, **kwargs):
        heard.append(message.pk)

    message_failed.connect(listener)
    try:
        attempt(stale)  # the first worker comes back late, with a failure
    finally:
        message_failed.disconnect(listener)

    assert OutboundMessage.all_tenants.get(pk=message.pk).status == MessageStatus.SENDING
    assert heard == []
    assert not ActivityLog.objects.for_tenant(tenant).filter(action="message.failed").exists()


@pytest.mark.django_db(transaction=True)
def test_a_final_failure_is_stored_announced_and_audited_in_one_transaction(tenant):
    from outbox.signals import message_failed

    message = _queue(tenant, behave="permanent")
    heard = []

    def listener(sender, message, error, **kwargs):
        heard.append(connection.in_atomic_block)

    message_failed.connect(listener)
    try:
        deliver_due()
    finally:
        message_failed.disconnect(listener)

    assert heard == [True]
    assert OutboundMessage.all_tenants.get(pk=message.pk).status == MessageStatus.FAILED


@pytest.mark.django_db(transaction=True)
def test_a_database_blip_while_storing_the_outcome_is_retried_not_lost(tenant, monkeypatch):
    from outbox import delivery

    message = _queue(tenant)
    real = delivery._update_if_still_claimed
    blips = []

    def blip_once(message, fields):
        if not blips:
            blips.append(1)
            raise OperationalError("server closed the connection unexpectedly")
        return real(message, fields)

    monkeypatch.setattr(delivery, "_update_if_still_claimed", blip_once)

    deliver_due()

    assert blips == [1]
    assert OutboundMessage.all_tenants.get(pk=message.pk).status == MessageStatus.SENT


def test_a_busy_endpoints_backlog_does_not_hold_up_other_endpoints(tenant, settings):
    settings.OUTBOX_ENDPOINT_CONCURRENCY = 1
    for _ in range(20):
        _queue(tenant, endpoint="slow")
    (in_flight,) = claim_due(limit=1)
    assert in_flight.endpoint_key == "guard-probe:slow"
    other = _queue(tenant, endpoint="fast")  # newer than the whole backlog

    assert [m.pk for m in claim_due(limit=1)] == [other.pk]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_stopping_worker_claims_no_next_message_with_its_last_outcome(tenant):
    first, second = _queue(tenant), _queue(tenant)
    (claimed,) = claim_due(limit=1)
    followers = Followers(wanted=lambda: False)  # the worker is stopping

    attempt(claimed, followers=followers)

    assert followers == []
    assert OutboundMessage.all_tenants.get(pk=first.pk).status == MessageStatus.SENT
    assert OutboundMessage.all_tenants.get(pk=second.pk).status == MessageStatus.PENDING


def test_a_very_long_error_is_stored_clipped(tenant):
    message = _queue(tenant, behave="long error")

    deliver_due()

    message = OutboundMessage.all_tenants.get(pk=message.pk)
    assert message.status == MessageStatus.FAILED
    assert len(message.last_error) <= 1000
    assert message.last_error.endswith("…")


def test_a_database_blip_while_preparing_a_send_is_tried_again(tenant):
    message = _queue(tenant, behave="database blip")

    deliver_due()

    message = OutboundMessage.all_tenants.get(pk=message.pk)
    assert message.status == MessageStatus.PENDING
    assert message.last_error.startswith("Database error while preparing")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_message_sent_while_a_claim_was_choosing_it_is_not_claimed_again(tenant, monkeypatch):
    """A worker's lease ran out mid-send, so the message is due again; a claim reads it
    as due, and before the claim locks it the slow worker stores that it was sent. The
    claim re-checks the row it locked and leaves it: sent once, not twice."""
    from outbox import delivery

    message = _queue(tenant)
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        status=MessageStatus.SENDING,
        attempts=1,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    rows = delivery._rows()
    # The claim naps between its snapshot (it chose the message) and its row lock.
    napping = rows.claim_sql.replace(
        "SELECT id FROM ranked WHERE", "SELECT id FROM ranked, (SELECT pg_sleep(1)) AS nap WHERE"
    )
    assert napping != rows.claim_sql
    monkeypatch.setattr(delivery, "_rows", lambda: dataclasses.replace(rows, claim_sql=napping))
    claimed, errors = [], []

    def claim():
        with transaction.atomic():
            claimed.extend(claim_due(limit=10))

    claimer = in_thread(claim, errors)
    wait_until(_a_claim_is_napping, timeout=10, what="the claim has chosen its messages")
    OutboundMessage.all_tenants.filter(pk=message.pk).update(  # the slow worker's outcome
        status=MessageStatus.SENT, lease_expires_at=None, finished_at=timezone.now()
    )
    claimer.join(10)

    assert errors == [] and claimed == []
    stored = OutboundMessage.all_tenants.get(pk=message.pk)
    assert (stored.status, stored.attempts) == (MessageStatus.SENT, 1)


def _a_claim_is_napping() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'PgSleep'"
        )
        return cursor.fetchone()[0] > 0
