"""The outbox state machine, with a probe channel whose behaviour each message chooses.

The probe stands in for a provider at the channel boundary (the real channels have their
own tests against local HTTP servers); it records every send it was asked to make.
"""

import logging
import threading
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from audit.models import ActivityLog
from core.actor import Actor
from outbox.channels import (
    Channel,
    Delivered,
    PermanentSendError,
    SkipMessage,
    TransientSendError,
    register,
)
from outbox.delivery import attempt, claim_due, deliver_due, retry_delay_seconds
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import OutboxUsageError, queue_message, send_again

SENT: list[tuple[str, str]] = []  # (message id, idempotency key) of every send
_lock = threading.Lock()


@register
class ProbeChannel(Channel):
    name = "probe"
    max_attempts = 3
    failure_log_line = "Probe message failed for good: %s"

    def endpoint_key(self, *, tenant_id, target, payload):
        return f"probe:{payload.get('endpoint', 'one')}"

    def send(self, message, *, deadline):
        with _lock:
            SENT.append((str(message.pk), message.idempotency_key))
        behave = message.payload.get("behave", "ok")
        if behave == "transient":
            raise TransientSendError("provider answered HTTP 503")
        if behave == "permanent":
            raise PermanentSendError("provider answered HTTP 400")
        if behave == "skip":
            raise SkipMessage("nobody needs it any more")
        if behave == "crash":
            raise ZeroDivisionError("bug in a channel")
        return Delivered(provider_message_id=f"prov-{message.pk}")


@pytest.fixture(autouse=True)
def _clear_probe():
    SENT.clear()
    yield
    SENT.clear()


def _queue(tenant, **payload) -> OutboundMessage:
    with transaction.atomic():
        return queue_message(
            tenant=tenant, channel="probe", kind="probe.test", target="x", payload=payload
        )


def _reload(message) -> OutboundMessage:
    return OutboundMessage.all_tenants.get(pk=message.pk)


def _make_due(message):
    OutboundMessage.all_tenants.filter(pk=message.pk).update(next_attempt_at=timezone.now())


pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_a_message_is_only_written_inside_the_transaction_of_its_change(tenant):
    with pytest.raises(OutboxUsageError):
        queue_message(tenant=tenant, channel="probe", target="x", payload={})
    assert OutboundMessage.all_tenants.count() == 0


def test_a_message_rolled_back_with_its_change_is_never_sent(tenant):
    with pytest.raises(RuntimeError), transaction.atomic():
        queue_message(tenant=tenant, channel="probe", target="x", payload={})
        raise RuntimeError("the change failed")
    assert deliver_due() == 0
    assert SENT == []


def test_a_due_message_is_sent_once_and_its_outcome_stored(tenant):
    message = _queue(tenant)
    assert deliver_due() == 1
    assert deliver_due() == 0  # nothing left: a sent message is never claimed again
    message = _reload(message)
    assert message.status == MessageStatus.SENT
    assert message.attempts == 1
    assert message.provider_message_id == f"prov-{message.pk}"
    assert message.finished_at is not None
    assert message.lease_expires_at is None
    assert [(str(message.pk), message.idempotency_key)] == SENT
    assert not ActivityLog.objects.for_tenant(tenant).filter(action__startswith="message.").exists()


def test_a_transient_failure_waits_for_the_backoff_then_gives_up_with_one_failure_line(
    tenant, caplog
):
    message = _queue(tenant, behave="transient")
    caplog.set_level(logging.INFO, logger="outbox")
    assert deliver_due() == 1
    message = _reload(message)
    assert message.status == MessageStatus.PENDING
    assert message.attempts == 1
    assert message.next_attempt_at > timezone.now()  # backoff: not due again yet
    assert deliver_due() == 0
    for _ in range(2):
        _make_due(message)
        deliver_due()
    message = _reload(message)
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 3
    assert "Gave up after 3 attempts." in message.last_error
    failure_lines = [r for r in caplog.records if "Probe message failed for good" in r.getMessage()]
    retry_lines = [r for r in caplog.records if "next try at" in r.getMessage()]
    assert len(failure_lines) == 1
    assert len(retry_lines) == 2
    # Every attempt carried the same idempotency key.
    assert {key for _, key in SENT} == {message.idempotency_key}
    assert len(SENT) == 3


def test_a_permanent_failure_fails_at_once(tenant, caplog):
    message = _queue(tenant, behave="permanent")
    deliver_due()
    message = _reload(message)
    assert message.status == MessageStatus.FAILED
    assert message.attempts == 1
    assert message.last_error == "provider answered HTTP 400"
    assert "Probe message failed for good" in caplog.text
    failed = ActivityLog.objects.for_tenant(tenant).get(action="message.failed")
    assert failed.data["error"] == "provider answered HTTP 400"


def test_a_message_nobody_needs_is_skipped_with_the_reason(tenant):
    message = _queue(tenant, behave="skip")
    deliver_due()
    message = _reload(message)
    assert message.status == MessageStatus.SKIPPED
    assert message.last_error == "nobody needs it any more"


def test_a_crashing_channel_fails_the_message_instead_of_leaving_it_sending(tenant):
    message = _queue(tenant, behave="crash")
    deliver_due()
    message = _reload(message)
    assert message.status == MessageStatus.FAILED
    assert "ZeroDivisionError" in message.last_error


def test_backoff_doubles_and_is_capped(settings):
    settings.OUTBOX_RETRY_BASE_SECONDS = 5
    settings.OUTBOX_RETRY_MAX_DELAY_SECONDS = 300
    assert 5 <= retry_delay_seconds(1) <= 5.5
    assert 10 <= retry_delay_seconds(2) <= 11
    assert 300 <= retry_delay_seconds(30) <= 330


def test_a_send_whose_worker_died_is_claimed_again_after_its_lease_with_the_same_key(tenant):
    message = _queue(tenant)
    (_claimed,) = claim_due(limit=5)  # this worker "dies" here, mid-send
    assert _reload(message).status == MessageStatus.SENDING
    assert claim_due(limit=5) == []  # the lease protects it from a second sender
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert deliver_due() == 1
    message = _reload(message)
    assert message.status == MessageStatus.SENT
    assert message.attempts == 2
    assert [(str(message.pk), message.idempotency_key)] == SENT


def test_a_dead_worker_with_the_attempts_spent_fails_the_message_without_sending(tenant):
    message = _queue(tenant)
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        status=MessageStatus.SENDING,
        attempts=3,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    deliver_due()
    message = _reload(message)
    assert message.status == MessageStatus.FAILED
    assert "Gave up after 3 attempts." in message.last_error
    assert SENT == []


def test_an_outcome_from_a_claim_that_lost_its_row_is_not_stored(tenant):
    message = _queue(tenant)
    (stale,) = claim_due(limit=1)
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    (fresh,) = claim_due(limit=1)
    attempt(stale)  # the first worker comes back late
    assert _reload(message).status == MessageStatus.SENDING  # still the second claim's
    attempt(fresh)
    assert _reload(message).status == MessageStatus.SENT


def test_one_endpoint_never_takes_more_than_its_share_of_slots(tenant, settings):
    settings.OUTBOX_ENDPOINT_CONCURRENCY = 2
    for _ in range(6):
        _queue(tenant, endpoint="slow")
    others = [_queue(tenant, endpoint=f"fast-{n}") for n in range(3)]
    claimed = claim_due(limit=10)
    by_endpoint = [m.endpoint_key for m in claimed]
    assert by_endpoint.count("probe:slow") == 2
    assert {m.pk for m in others} <= {m.pk for m in claimed}
    # While those two are in flight, the slow endpoint gets no further slot.
    assert [m.endpoint_key for m in claim_due(limit=10)] == []


def test_send_again_gives_a_failed_message_new_attempts_and_keeps_its_history(tenant, owner):
    message = _queue(tenant, behave="permanent")
    deliver_due()
    with transaction.atomic():
        count = send_again(
            tenant=tenant, message_ids=[message.pk], actor=Actor.for_membership(owner)
        )
    assert count == 1
    message = _reload(message)
    assert message.status == MessageStatus.PENDING
    assert message.attempts == 1
    assert message.max_attempts == 4
    assert ActivityLog.objects.for_tenant(tenant).filter(action="message.resent").count() == 1
    deliver_due()
    assert len(SENT) == 2


def test_send_again_ignores_other_tenants_and_messages_that_did_not_fail(
    tenant, other_tenant, owner
):
    theirs = _queue(other_tenant, behave="permanent")
    pending = _queue(tenant)
    deliver_due(limit=1)  # only the first (theirs) is handled
    with transaction.atomic():
        count = send_again(
            tenant=tenant, message_ids=[theirs.pk, pending.pk], actor=Actor.for_membership(owner)
        )
    assert count == 0
    assert _reload(theirs).status == MessageStatus.FAILED


def test_messages_of_one_ordering_key_go_one_at_a_time_oldest_first(tenant):
    def queue(behave):
        with transaction.atomic():
            return queue_message(
                tenant=tenant,
                channel="probe",
                target="x",
                payload={"behave": behave},
                ordering_key="lead-1",
            )

    first, second, third = queue("transient"), queue("ok"), queue("ok")
    unrelated = _queue(tenant)

    deliver_due()
    # The first failed for now: the later ones of its key wait, the unrelated one went.
    assert [m for m, _ in SENT] == [str(first.pk), str(unrelated.pk)]
    assert _reload(second).status == MessageStatus.PENDING

    OutboundMessage.all_tenants.filter(pk=first.pk).update(payload={"behave": "ok"})
    _make_due(first)
    deliver_due()
    assert [m for m, _ in SENT][2:] == [str(first.pk), str(second.pk), str(third.pk)]


def test_a_message_finally_failing_tells_whoever_listens_in_its_transaction(tenant):
    from outbox.signals import message_failed

    heard = []

    def listener(sender, message, error, **kwargs):
        heard.append((message.pk, error, transaction.get_connection().in_atomic_block))

    message_failed.connect(listener)
    try:
        message = _queue(tenant, behave="permanent")
        deliver_due()
    finally:
        message_failed.disconnect(listener)
    assert heard == [(message.pk, "provider answered HTTP 400", True)]


def test_the_purge_keeps_messages_a_session_still_shows(tenant):
    from outbox.services import purge_finished_messages
    from tests.inbox.factories import InboxSessionFactory

    session = InboxSessionFactory(tenant=tenant)
    loose = _queue(tenant)
    long_ago = timezone.now() - timedelta(days=400)
    OutboundMessage.all_tenants.update(status=MessageStatus.SENT, finished_at=long_ago)

    assert purge_finished_messages(older_than_days=90) == 1

    assert not OutboundMessage.all_tenants.filter(pk=loose.pk).exists()
    session.refresh_from_db()
    assert session.confirmation_status == "sent"


def test_messages_are_created_in_order_even_on_a_clock_that_does_not_move(tenant):
    import time_machine

    with time_machine.travel("2030-01-01 00:00:00", tick=False):
        first, second = _queue(tenant), _queue(tenant)
    assert first.created_at < second.created_at
    # Back in the present, a message is stamped with the present again.
    assert abs((_queue(tenant).created_at - timezone.now()).total_seconds()) < 5


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_stores_an_outcome_and_claims_the_next_message_in_one_call(tenant):
    first, second = _queue(tenant), _queue(tenant, behave="transient")
    (claimed,) = claim_due(limit=1)
    assert claimed.pk == first.pk

    followers: list = []
    attempt(claimed, followers=followers)

    assert _reload(first).status == MessageStatus.SENT
    assert [m.pk for m in followers] == [second.pk]
    assert _reload(second).status == MessageStatus.SENDING
    assert followers[0].claim_token == _reload(second).claim_token
    # A retry's outcome is stored the same way; nothing else is due, nothing is claimed.
    more: list = []
    attempt(followers[0], followers=more)
    assert _reload(second).status == MessageStatus.PENDING
    assert _reload(second).attempts == 1
    assert more == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_outcome_from_a_lost_claim_is_not_stored_when_claiming_the_next_either(tenant):
    message = _queue(tenant)
    (stale,) = claim_due(limit=1)
    OutboundMessage.all_tenants.filter(pk=message.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    (fresh,) = claim_due(limit=1)
    followers: list = []
    attempt(stale, followers=followers)
    assert _reload(message).status == MessageStatus.SENDING
    assert _reload(message).claim_token == fresh.claim_token
    assert followers == []


def test_a_lookup_is_kept_for_a_moment_and_only_when_usable(settings):
    from outbox import lookups

    settings.OUTBOX_LOOKUP_CACHE_SECONDS = 60
    lookups.clear()
    loads = []

    def load(value, keep):
        def loader():
            loads.append(value)
            return value, keep

        return loader

    assert lookups.get("probe", 1, load("a", True)) == "a"
    assert lookups.get("probe", 1, load("b", True)) == "a"  # kept
    assert lookups.get("probe", 2, load("broken", False)) == "broken"
    assert lookups.get("probe", 2, load("fixed", True)) == "fixed"  # a problem is not kept
    lookups.forget("probe", 1)
    assert lookups.get("probe", 1, load("c", True)) == "c"
    settings.OUTBOX_LOOKUP_CACHE_SECONDS = 0
    lookups.clear()
    assert lookups.get("probe", 1, load("d", True)) == "d"
    assert lookups.get("probe", 1, load("e", True)) == "e"
    assert loads == ["a", "broken", "fixed", "c", "d", "e"]
