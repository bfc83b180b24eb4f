"""The SLA sweep on PostgreSQL: a batch's rows built by the database, and a backlog
shared with helper threads.

On PostgreSQL the server builds a batch's notices, their emails and its audit rows
(`_insert_breach_rows`); on other databases Python does (`_breach_rows`). The two must
not differ in anything an admin, the outbox or the audit trail reads.
"""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.utils import timezone

from audit.models import ActivityLog
from core import log_context
from leads import services
from leads.models import Lead, LeadStatus, Notification
from leads.services import CLAIM_STAGE, CONTACT_STAGE, sweep_sla_breaches
from outbox.models import OutboundMessage
from teams.models import Role
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.postgres

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def clock(time_machine):
    time_machine.move_to(START, tick=False)
    return time_machine


def due_lead(tenant, agent, name, deadline, *, status=LeadStatus.NEW) -> Lead:
    window = (
        {"claim_deadline": deadline}
        if status == LeadStatus.NEW
        else {"claimed_at": deadline - timedelta(minutes=30), "contact_deadline": deadline}
    )
    return Lead.objects.for_tenant(tenant).create(
        name=name,
        status=status,
        assigned_agent=agent,
        assigned_at=None if agent is None else deadline - timedelta(hours=1),
        **window,
    )


def as_saved(model, row: dict) -> dict:
    """A row of `_breach_rows` as the database would keep it (defaults filled in)."""
    return {
        f.attname: row[f.attname] if f.attname in row else f.get_default()
        for f in model._meta.concrete_fields
    }


def saved(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def without(row: dict, *names) -> dict:
    return {name: value for name, value in row.items() if name not in names}


def python_rows(stage, leads: list[Lead], created_at):
    """What the Python path (SQLite's) builds for these due leads, read as it reads them."""
    rows = list(
        Lead.all_tenants.filter(pk__in=[lead.pk for lead in leads])
        .order_by(stage.deadline, "pk")
        .values_list(*services._BREACH_ROW, stage.deadline, named=True)
    )
    return services._breach_rows(stage, rows, services._admins_of(rows), created_at)


@pytest.mark.django_db
def test_the_rows_built_in_sql_are_the_rows_python_builds(clock):
    # A tenant half an hour off UTC, reassigning by hand; admins with and without a name.
    kolkata = TenantFactory(timezone="Asia/Kolkata")
    MembershipFactory(tenant=kolkata, role=Role.ADMIN)
    MembershipFactory(tenant=kolkata, role=Role.SUPER_ADMIN, user__full_name="")
    priya = MembershipFactory(tenant=kolkata, user__full_name="Priya Agent")
    unnamed = MembershipFactory(tenant=kolkata, user__full_name="", user__email="anon@x.test")
    claims = [
        due_lead(kolkata, priya, "Asha", START - timedelta(minutes=1)),
        due_lead(
            kolkata,
            unnamed,  # named by its email
            "O'Brien 100% \\ Zoë 😀",
            START - timedelta(minutes=2, microseconds=-123456),
        ),
        due_lead(kolkata, None, "N" * 200, START - timedelta(minutes=3, microseconds=-1)),
    ]
    # A tenant with summer time, reassigning automatically (nobody else to take them).
    new_york = TenantFactory(timezone="America/New_York", auto_reassign_on_breach=True)
    MembershipFactory(tenant=new_york, role=Role.ADMIN, user__email="ny.admin@x.test")
    sam = MembershipFactory(tenant=new_york, user__full_name="Sam Agent")
    claims.append(due_lead(new_york, sam, "Summer", datetime(2025, 7, 1, 16, 0, 0, 500000, UTC)))
    contacts = [
        due_lead(new_york, sam, "Claimed", START - timedelta(seconds=30), status=LeadStatus.CLAIMED)
    ]
    # A tenant without admins: an audit row, nobody told.
    lonely = TenantFactory(timezone="UTC")
    claims.append(due_lead(lonely, MembershipFactory(tenant=lonely), "Alone", START))

    expected = {
        CLAIM_STAGE: python_rows(CLAIM_STAGE, claims, START),
        CONTACT_STAGE: python_rows(CONTACT_STAGE, contacts, START),
    }

    assert sweep_sla_breaches() == {"claim": 5, "contact": 1}

    for stage, (emails, notices, activities) in expected.items():
        # Claims: 3 leads x 2 admins in Kolkata, 1 x 1 in New York, none alone.
        assert len(notices) == len(emails) == (7 if stage is CLAIM_STAGE else 1)
        for email, notice in zip(emails, notices, strict=True):
            written_notice = Notification.all_tenants.get(
                recipient_id=notice["recipient_id"], dedupe_key=notice["dedupe_key"]
            )
            written_email = written_notice.email_message
            assert without(saved(written_notice), "id", "email_message_id") == without(
                as_saved(Notification, notice), "id", "email_message_id"
            )
            assert without(saved(written_email), "id", "payload") == without(
                as_saved(OutboundMessage, email), "id", "payload"
            )
            assert written_email.payload == {
                **email["payload"],
                "notification_id": str(written_notice.pk),
            }
        for activity in activities:
            written = ActivityLog.all_tenants.get(
                action=activity["action"], target_id=activity["target_id"]
            )
            assert without(saved(written), "id") == without(as_saved(ActivityLog, activity), "id")
    breach_kinds = [CLAIM_STAGE.kind, CONTACT_STAGE.kind]
    assert Notification.all_tenants.filter(kind__in=breach_kinds).count() == 8
    assert (
        OutboundMessage.all_tenants.filter(
            kind__in=[f"lead.{kind}" for kind in breach_kinds]
        ).count()
        == 8
    )
    # What the comparison covered, spelled out once.
    bodies = set(Notification.all_tenants.values_list("body", flat=True))
    assert (
        "Asha was assigned to Priya Agent and not claimed by 2026-03-02 15:29 (Asia/Kolkata). "
        "Reassign it from the admin."
    ) in bodies
    assert any(
        body.startswith("O'Brien 100% \\ Zoë 😀 was assigned to anon@x.test") for body in bodies
    )
    assert any(f"{'N' * 200} was assigned to nobody" in body for body in bodies)
    assert (
        "Summer was assigned to Sam Agent and not claimed by 2025-07-01 12:00 "
        "(America/New_York). It goes to another agent automatically if anyone else is "
        "available."
    ) in bodies
    assert any("not contacted by 2026-03-02 04:59 (America/New_York)" in body for body in bodies)
    titles = set(Notification.all_tenants.values_list("title", flat=True))
    assert f"Lead not claimed in time: {'N' * 174}" in titles
    keys = set(Notification.all_tenants.values_list("dedupe_key", flat=True))
    assert f"claim_sla_breached:{claims[1].pk}:2026-03-02T09:58:00.123456+00:00" in keys
    assert f"claim_sla_breached:{claims[0].pk}:2026-03-02T09:59:00+00:00" in keys
    assert f"claim_sla_breached:{claims[2].pk}:2026-03-02T09:57:00.000001+00:00" in keys
    alone = ActivityLog.all_tenants.get(target_id=str(claims[-1].pk))
    assert alone.data["admins_notified"] == 0


@pytest.mark.django_db
def test_a_breach_announced_before_is_not_announced_twice(clock, tenant, owner):
    """The dedupe and idempotency keys still drop what was already written (the Python
    path's `ON CONFLICT DO NOTHING`), here for a breach stamped away by hand."""
    lead = due_lead(tenant, MembershipFactory(tenant=tenant), "Again", START)
    sweep_sla_breaches()
    Lead.all_tenants.filter(pk=lead.pk).update(claim_sla_breached_at=None)

    assert sweep_sla_breaches() == {"claim": 1, "contact": 0}

    assert Notification.all_tenants.filter(lead=lead).count() == 1
    assert OutboundMessage.all_tenants.filter(kind="lead.claim_sla_breached").count() == 1


# --- a backlog shared with helpers -------------------------------------------------------


def due_leads(tenant, count: int) -> list[Lead]:
    agent = MembershipFactory(tenant=tenant)
    deadline = timezone.now() - timedelta(minutes=1)
    return [due_lead(tenant, agent, f"Lead {n}", deadline) for n in range(count)]


@pytest.fixture
def helper_starts(monkeypatch) -> list:
    started = []
    start = services._SweepHelper.start

    def spy(helper):
        started.append(helper)
        start(helper)

    monkeypatch.setattr(services._SweepHelper, "start", spy)
    return started


def in_helper() -> bool:
    return threading.current_thread() is not threading.main_thread()


@pytest.mark.django_db(transaction=True)
def test_a_backlog_is_shared_with_a_helper_on_its_own_connection(
    tenant, owner, helper_starts, monkeypatch
):
    leads = due_leads(tenant, 40)
    helper_recorded = threading.Event()
    helper_connections, helper_contexts = [], []
    sweep_batch = services._sweep_batch

    def one_batch(stage, now, batch_size):
        if in_helper():
            helper_connections.append(connections["default"])
            helper_contexts.append(log_context.current())
            recorded, more = sweep_batch(stage, now, batch_size)
            if recorded:
                helper_recorded.set()
            return recorded, more
        # The sweep's thread waits, after its first batch, until the helper has one.
        if helper_starts:
            assert helper_recorded.wait(timeout=30)
        return sweep_batch(stage, now, batch_size)

    monkeypatch.setattr(services, "_sweep_batch", one_batch)

    with log_context.bound(request_id="sweep-1"):
        assert sweep_sla_breaches(batch_size=5) == {"claim": 40, "contact": 0}

    assert len(helper_starts) == 1, "one helper: SLA_SWEEP_CONNECTIONS is 2"
    assert 0 < helper_starts[0].recorded < 40
    assert not Lead.objects.for_tenant(tenant).filter(claim_sla_breached_at__isnull=True).exists()
    for lead in leads:
        assert Notification.all_tenants.filter(lead=lead).count() == 1
        assert ActivityLog.all_tenants.filter(target_id=str(lead.pk)).count() == 1
    assert helper_connections[0] is not connections["default"], "its own connection"
    assert all(wrapper.connection is None for wrapper in helper_connections), "closed"
    assert all(context.get("request_id") == "sweep-1" for context in helper_contexts)


@pytest.mark.django_db(transaction=True)
def test_the_last_leads_locked_by_a_helper_are_swept_after_the_sweeps_thread_ran_out(
    tenant, owner, helper_starts, monkeypatch
):
    """The sweep's thread can see no more due leads only because a helper holds them
    (SKIP LOCKED): the helper then goes on alone until the backlog is empty."""
    due_leads(tenant, 12)  # batches of 5: the first, the helper's 5+1 locked, 1 left
    helper_locked, sweeps_thread_done = threading.Event(), threading.Event()
    stamp_batch, sweep_batches = services._stamp_batch, services._sweep_batches

    def stamp_and_hold(stage, now, batch_size):
        rows = stamp_batch(stage, now, batch_size)
        if in_helper() and not helper_locked.is_set():
            helper_locked.set()
            assert sweeps_thread_done.wait(timeout=30)  # its transaction still open
        return rows

    def sweeps_thread_after_the_helpers_lock(stage, now, batch_size, stop=None):
        if in_helper():
            return sweep_batches(stage, now, batch_size, stop)
        assert helper_locked.wait(timeout=30)
        try:
            return sweep_batches(stage, now, batch_size, stop)
        finally:
            sweeps_thread_done.set()

    monkeypatch.setattr(services, "_stamp_batch", stamp_and_hold)
    monkeypatch.setattr(services, "_sweep_batches", sweeps_thread_after_the_helpers_lock)

    assert sweep_sla_breaches(batch_size=5) == {"claim": 12, "contact": 0}

    assert helper_starts[0].recorded == 6, "its locked batch, then the lead it held back"
    assert not Lead.objects.for_tenant(tenant).filter(claim_sla_breached_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_helpers_error_fails_the_sweep_after_the_sweeps_own_batches(tenant, owner, monkeypatch):
    due_leads(tenant, 20)
    sweep_batches = services._sweep_batches

    def failing(stage, now, batch_size, stop=None):
        if in_helper():
            raise DatabaseError("the helper lost its connection")
        return sweep_batches(stage, now, batch_size, stop)

    monkeypatch.setattr(services, "_sweep_batches", failing)

    with pytest.raises(DatabaseError, match="the helper lost its connection"):
        sweep_sla_breaches(batch_size=5)

    assert not Lead.objects.for_tenant(tenant).filter(claim_sla_breached_at__isnull=True).exists()


class RolledBack(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_a_sweep_in_a_callers_transaction_has_no_helper(tenant, owner, helper_starts):
    """A helper's batches would commit on their own connection, whatever the caller's
    transaction then does."""
    due_leads(tenant, 20)

    with pytest.raises(RolledBack), transaction.atomic():
        assert sweep_sla_breaches(batch_size=5) == {"claim": 20, "contact": 0}
        raise RolledBack

    assert not helper_starts
    assert not Lead.objects.for_tenant(tenant).filter(claim_sla_breached_at__isnull=False).exists()
    assert not Notification.objects.for_tenant(tenant).exists()


@pytest.mark.django_db(transaction=True)
def test_a_sweep_elsewhere_than_on_postgresql_has_no_helper(
    tenant, owner, helper_starts, monkeypatch
):
    due_leads(tenant, 20)
    monkeypatch.setattr(connection, "vendor", "other")  # SQLite's path, on PostgreSQL

    assert sweep_sla_breaches(batch_size=5) == {"claim": 20, "contact": 0}

    assert not helper_starts


@pytest.mark.django_db(transaction=True)
def test_one_worker_sweeps_alone(tenant, owner, helper_starts):
    due_leads(tenant, 20)

    assert sweep_sla_breaches(batch_size=5, workers=1) == {"claim": 20, "contact": 0}

    assert not helper_starts


class SoftTimeLimit(Exception):
    """What Celery raises in a task that outlives its soft time limit."""


@pytest.mark.django_db(transaction=True)
def test_when_the_sweep_stops_its_helper_stops_after_its_batch_and_is_waited_for(
    tenant, owner, helper_starts, monkeypatch
):
    due_leads(tenant, 40)
    sweep_batch = services._sweep_batch
    helper_busy = threading.Event()
    helper_batches = []

    def one_batch(stage, now, batch_size):
        if in_helper():
            helper_batches.append(stage.name)
            helper_busy.set()
            time.sleep(0.05)  # the sweep's thread stops while this batch is in hand
            return sweep_batch(stage, now, batch_size)
        if helper_starts:  # the sweep's thread, once the helper works: out of time
            assert helper_busy.wait(timeout=30)
            raise SoftTimeLimit
        return sweep_batch(stage, now, batch_size)

    monkeypatch.setattr(services, "_sweep_batch", one_batch)

    with pytest.raises(SoftTimeLimit):
        sweep_sla_breaches(batch_size=5)

    (helper,) = helper_starts
    assert not helper.is_alive(), "waited for: no helper outlives its sweep"
    assert 1 <= len(helper_batches) <= 2, "it stopped after the batch in hand"
    # The rest waits for the next sweep (every 30 s), not for an orphaned thread.
    assert Lead.objects.for_tenant(tenant).filter(claim_sla_breached_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_when_a_second_helper_cannot_start_the_first_is_stopped_and_waited_for(
    tenant, owner, monkeypatch
):
    due_leads(tenant, 40)
    started = []
    start = services._SweepHelper.start
    sweep_batch = services._sweep_batch

    def start_one_then_fail(helper):
        if started:
            raise RuntimeError("can't start new thread")
        started.append(helper)
        start(helper)

    def slow_batch(stage, now, batch_size):
        if in_helper():
            time.sleep(0.05)  # still at work when the second start fails
        return sweep_batch(stage, now, batch_size)

    monkeypatch.setattr(services._SweepHelper, "start", start_one_then_fail)
    monkeypatch.setattr(services, "_sweep_batch", slow_batch)

    with pytest.raises(RuntimeError, match="can't start new thread"):
        sweep_sla_breaches(batch_size=5, workers=3)

    (helper,) = started
    assert not helper.is_alive(), "waited for: no helper outlives its sweep"
