"""SLA sweeps: stage 1 (claim window) and stage 2 (contact window) breaches.

A breach is recorded once, every active admin and super admin of the lead's tenant is
told once, an activity row is written, and, when the tenant asks for it, the engine
moves the lead to someone else as the system.
"""

import json
import threading
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from audit.models import ActivityLog
from core.actor import Actor
from leads import tasks
from leads.emails import attach_email
from leads.formatting import format_deadline
from leads.models import (
    Lead,
    LeadReassignment,
    LeadStatus,
    Notification,
    NotificationKind,
    ReassignmentReason,
    ReassignmentStage,
)
from leads.services import (
    claim_lead,
    create_lead,
    mark_lead_contacted,
    reassign_lead,
    sweep_sla_breaches,
)
from outbox.models import MessageStatus
from teams.models import Membership, Role
from tests.conftest import ON_POSTGRES
from tests.factories import MembershipFactory

START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
NOTHING = {"claim": 0, "contact": 0}


@pytest.fixture
def clock(time_machine):
    """Time stands still at START until a test moves it (windows are 5 minutes)."""
    time_machine.move_to(START, tick=False)
    return time_machine


@pytest.fixture
def alice(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Alice Agent")


@pytest.fixture
def bob(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Bob Agent")


def new_lead(tenant, agent, name="Lead") -> Lead:
    return create_lead(
        tenant=tenant, actor=Actor.system(), name=name, phone="+440000", assigned_agent_id=agent.pk
    )


def claimed_lead(tenant, agent, name="Claimed lead") -> Lead:
    lead = new_lead(tenant, agent, name)
    return claim_lead(tenant=tenant, lead_id=lead.pk, agent=agent)


def breach_notices(lead, kind=None):
    notices = Notification.all_tenants.filter(lead=lead)
    if kind is not None:
        return notices.filter(kind=kind)
    return notices.filter(
        kind__in=[NotificationKind.CLAIM_SLA_BREACHED, NotificationKind.CONTACT_SLA_BREACHED]
    )


def breach_activity(lead, action):
    return ActivityLog.all_tenants.filter(action=action, target_id=str(lead.pk))


def recipients(notices) -> list:
    return sorted(str(pk) for pk in notices.values_list("recipient_id", flat=True))


def ids(*memberships) -> list:
    return sorted(str(m.pk) for m in memberships)


# --- stage 1 and stage 2 ----------------------------------------------------------------


@pytest.mark.django_db
def test_missed_claim_window_is_recorded_once_and_each_active_admin_is_told_once(
    tenant, owner, teammate, outsider, alice, clock
):
    super_admin = MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)
    MembershipFactory(tenant=tenant, role=Role.ADMIN, is_active=False)
    MembershipFactory(tenant=tenant, role=Role.ADMIN, user__is_active=False)
    due = new_lead(tenant, alice, "Due")  # claim by 10:05
    to_be_claimed = new_lead(tenant, alice, "Claimed in time")
    clock.shift(timedelta(minutes=3))
    not_due = new_lead(tenant, alice, "Not due")  # claim by 10:08
    clock.shift(timedelta(minutes=1))
    claim_lead(tenant=tenant, lead_id=to_be_claimed.pk, agent=alice)  # contact by 10:09
    clock.shift(timedelta(minutes=2))  # 10:06

    assert sweep_sla_breaches() == {"claim": 1, "contact": 0}

    due.refresh_from_db()
    assert due.claim_sla_breached_at == START + timedelta(minutes=6)
    assert due.status == LeadStatus.NEW and due.assigned_agent == alice
    for untouched in (not_due, to_be_claimed):
        untouched.refresh_from_db()
        assert untouched.claim_sla_breached_at is None
        assert untouched.contact_sla_breached_at is None
    notices = breach_notices(due)
    assert recipients(notices) == ids(owner, super_admin), (
        "active admins and super admins only: not members, not inactive admins, "
        "not admins whose user is disabled, not other tenants' admins"
    )
    assert set(notices.values_list("kind", flat=True)) == {NotificationKind.CLAIM_SLA_BREACHED}
    assert all(n.tenant_id == tenant.pk for n in notices)
    assert "Alice Agent" in notices.first().body
    assert not Notification.all_tenants.filter(recipient=outsider).exists()
    assert not breach_notices(not_due).exists() and not breach_notices(to_be_claimed).exists()
    activity = breach_activity(due, "lead.claim_sla_breached").get()
    assert activity.tenant_id == tenant.pk
    assert activity.actor_label == "system" and activity.actor is None
    assert activity.via == "job:check_sla"
    assert activity.data["agent_id"] == str(alice.pk)
    assert activity.data["admins_notified"] == 2

    # Another sweep (or the next beat tick) records nothing new.
    clock.shift(timedelta(seconds=30))
    assert sweep_sla_breaches() == NOTHING
    due.refresh_from_db()
    assert due.claim_sla_breached_at == START + timedelta(minutes=6)
    assert breach_notices(due).count() == 2
    assert breach_activity(due, "lead.claim_sla_breached").count() == 1


@pytest.mark.django_db
def test_missed_contact_window_is_recorded_once(tenant, owner, teammate, alice, clock):
    clock.shift(timedelta(minutes=1))
    due = claimed_lead(tenant, alice, "Due")  # contact by 10:06
    contacted = claimed_lead(tenant, alice, "Contacted")
    mark_lead_contacted(tenant=tenant, lead_id=contacted.pk, agent=alice)
    clock.shift(timedelta(minutes=3))
    not_due = claimed_lead(tenant, alice, "Not due")  # contact by 10:09
    clock.shift(timedelta(minutes=3))  # 10:07

    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}

    due.refresh_from_db()
    assert due.contact_sla_breached_at == START + timedelta(minutes=7)
    assert due.claim_sla_breached_at is None
    for untouched in (contacted, not_due):
        untouched.refresh_from_db()
        assert untouched.contact_sla_breached_at is None
        assert not breach_notices(untouched).exists()
    notices = breach_notices(due)
    assert recipients(notices) == ids(owner)
    assert notices.get().kind == NotificationKind.CONTACT_SLA_BREACHED
    assert breach_activity(due, "lead.contact_sla_breached").count() == 1

    clock.shift(timedelta(hours=1))  # the contacted lead never breaches
    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}  # only "Not due", now due
    assert breach_notices(due).count() == 1
    assert not breach_notices(contacted).exists()


@pytest.mark.django_db
def test_each_tenant_hears_only_about_its_own_leads(
    tenant, owner, alice, other_tenant, outsider, clock
):
    other_agent = MembershipFactory(tenant=other_tenant)
    ours = new_lead(tenant, alice, "Ours")
    theirs = new_lead(other_tenant, other_agent, "Theirs")
    clock.shift(timedelta(minutes=6))

    assert sweep_sla_breaches() == {"claim": 2, "contact": 0}

    assert recipients(breach_notices(ours)) == ids(owner)
    assert recipients(breach_notices(theirs)) == ids(outsider)
    assert breach_activity(theirs, "lead.claim_sla_breached").get().tenant_id == other_tenant.pk


@pytest.mark.django_db
def test_a_lead_breached_again_after_a_no_contact_reassignment_is_announced_again(
    tenant, owner, alice, bob, clock
):
    clock.shift(timedelta(minutes=1))
    lead = claimed_lead(tenant, alice)  # contact by 10:06
    clock.shift(timedelta(minutes=6))  # 10:07
    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}
    first = breach_notices(lead).get()

    reassign_lead(
        tenant=tenant,
        lead_id=lead.pk,
        to_agent_id=bob.pk,
        reason=ReassignmentReason.NO_CONTACT,
        actor=Actor.for_membership(owner),
        reassigned_by=owner,
    )  # a new contact window: by 10:12
    lead.refresh_from_db()
    assert lead.contact_sla_breached_at is None
    clock.shift(timedelta(minutes=4))  # 10:11
    assert sweep_sla_breaches() == NOTHING
    clock.shift(timedelta(minutes=2))  # 10:13
    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}

    notices = breach_notices(lead).order_by("created_at")
    assert recipients(notices) == ids(owner, owner)
    assert notices.last().pk != first.pk
    assert notices.last().dedupe_key != first.dedupe_key
    assert "Bob Agent" in notices.last().body
    lead.refresh_from_db()
    assert lead.contact_sla_breached_at == START + timedelta(minutes=13)
    assert breach_activity(lead, "lead.contact_sla_breached").count() == 2


@pytest.mark.django_db
def test_the_sweep_works_through_every_batch(tenant, owner, alice, clock):
    leads = [new_lead(tenant, alice, f"Lead {n}") for n in range(35)]
    clock.shift(timedelta(minutes=6))

    assert sweep_sla_breaches(batch_size=10) == {"claim": 35, "contact": 0}

    assert not Lead.objects.for_tenant(tenant).filter(claim_sla_breached_at__isnull=True).exists()
    assert Notification.objects.for_tenant(tenant).filter(
        kind=NotificationKind.CLAIM_SLA_BREACHED
    ).count() == len(leads)
    assert ActivityLog.objects.for_tenant(tenant).filter(
        action="lead.claim_sla_breached"
    ).count() == len(leads)


# --- auto-reassign on breach -----------------------------------------------------------


@pytest.mark.django_db
def test_auto_reassign_is_off_by_default(tenant, owner, alice, bob, clock):
    assert tenant.auto_reassign_on_breach is False
    lead = new_lead(tenant, alice)
    clock.shift(timedelta(minutes=6))

    sweep_sla_breaches()

    lead.refresh_from_db()
    assert lead.assigned_agent == alice
    assert lead.status == LeadStatus.NEW
    assert lead.claim_sla_breached_at is not None
    assert not LeadReassignment.all_tenants.filter(lead=lead).exists()
    assert "Reassign it from the admin." in breach_notices(lead).get().body


@pytest.fixture
def auto_reassign(tenant):
    tenant.auto_reassign_on_breach = True
    tenant.save(update_fields=["auto_reassign_on_breach"])
    return tenant


@pytest.mark.django_db
def test_auto_reassign_gives_an_unclaimed_lead_to_another_agent_as_the_system(
    auto_reassign, tenant, owner, alice, bob, clock
):
    lead = new_lead(tenant, alice)
    clock.shift(timedelta(minutes=6))  # 10:06
    now = START + timedelta(minutes=6)

    assert sweep_sla_breaches() == {"claim": 1, "contact": 0}

    lead.refresh_from_db()
    assert lead.assigned_agent == bob
    assert lead.previous_agent == alice
    assert lead.claim_sla_breached_at == now, "still recorded as breached"
    # reason "unclaimed": claimed for the new agent, who gets a fresh contact window.
    assert lead.status == LeadStatus.CLAIMED
    assert lead.claimed_at == now
    assert lead.claim_deadline is None
    assert lead.contact_deadline == now + timedelta(minutes=tenant.contact_window_minutes)
    assert lead.reassignment_count == 1
    assert lead.reassignment_reason == ReassignmentReason.UNCLAIMED
    move = LeadReassignment.all_tenants.get(lead=lead)
    assert (move.from_agent, move.to_agent) == (alice, bob)
    assert move.reason == ReassignmentReason.UNCLAIMED
    assert move.stage == ReassignmentStage.CLAIM
    assert move.reassigned_by is None, "done by the system"
    activity = breach_activity(lead, "lead.reassigned").get()
    assert activity.actor_label == "system" and activity.actor is None
    assert activity.data["reason"] == ReassignmentReason.UNCLAIMED
    assert recipients(breach_notices(lead)) == ids(owner)
    assert Notification.all_tenants.filter(
        lead=lead, recipient=bob, kind=NotificationKind.LEAD_REASSIGNED
    ).exists()
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    assert (counts[alice.pk], counts[bob.pk]) == (0, 1)

    # The new contact window is a stage 2 deadline like any other.
    clock.shift(timedelta(minutes=1))
    assert sweep_sla_breaches() == NOTHING


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_auto_reassign_that_finds_every_agent_filled_first_leaves_the_lead_and_goes_on(
    auto_reassign, tenant, owner, alice, bob, clock, monkeypatch, caplog
):
    """Each agent the engine picks lost its room before the reassignment held its row
    (other work filled it): each lead stays with its agent, as when nobody could take
    it, the sweep goes on to the next breach, and it logs no error."""
    from leads import services as lead_services
    from teams.models import RoundRobinCursor

    stuck = [new_lead(tenant, alice, name=f"Stuck {n}") for n in range(2)]
    clock.shift(timedelta(minutes=6))
    monkeypatch.setattr(lead_services, "_has_room", lambda agent: False)

    def cursors():
        return set(
            RoundRobinCursor.all_tenants.values_list("pool_key", "last_agent_id", "position")
        )

    before = cursors()
    with caplog.at_level("INFO", logger="leads.services"):
        assert sweep_sla_breaches() == {"claim": 2, "contact": 0}

    for lead in stuck:
        lead.refresh_from_db()
        assert (lead.assigned_agent, lead.status) == (alice, LeadStatus.NEW)
        assert lead.claim_sla_breached_at is not None, "the breach is recorded"
    assert not LeadReassignment.all_tenants.filter(lead__in=stuck).exists()
    logged = [r.getMessage() for r in caplog.records if "lost its room first" in r.getMessage()]
    assert len(logged) == 2
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert cursors() == before
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    assert (counts[alice.pk], counts[bob.pk]) == (2, 0)


@pytest.mark.django_db
def test_auto_reassign_gives_an_uncontacted_lead_a_new_agent_and_window(
    auto_reassign, tenant, owner, alice, bob, clock
):
    clock.shift(timedelta(minutes=1))
    lead = claimed_lead(tenant, alice)  # contact by 10:06
    clock.shift(timedelta(minutes=6))  # 10:07
    now = START + timedelta(minutes=7)

    assert sweep_sla_breaches() == {"claim": 0, "contact": 1}

    lead.refresh_from_db()
    assert lead.assigned_agent == bob
    assert lead.status == LeadStatus.CLAIMED
    assert lead.contact_deadline == now + timedelta(minutes=tenant.contact_window_minutes)
    assert lead.contact_sla_breached_at is None, "no_contact clears it for the new window"
    move = LeadReassignment.all_tenants.get(lead=lead)
    assert move.reason == ReassignmentReason.NO_CONTACT
    assert move.stage == ReassignmentStage.CONTACT
    assert move.reassigned_by is None
    assert breach_activity(lead, "lead.reassigned").get().actor_label == "system"
    # The breach itself stays on record.
    assert breach_activity(lead, "lead.contact_sla_breached").count() == 1
    assert recipients(breach_notices(lead)) == ids(owner)


@pytest.mark.django_db
def test_auto_reassign_with_nobody_else_available_leaves_the_lead_breached(
    auto_reassign, tenant, owner, alice, clock
):
    Membership.objects.for_tenant(tenant).filter(pk=owner.pk).update(presence="away")
    lead = new_lead(tenant, alice)
    clock.shift(timedelta(minutes=6))

    assert sweep_sla_breaches() == {"claim": 1, "contact": 0}

    lead.refresh_from_db()
    assert lead.assigned_agent == alice
    assert lead.status == LeadStatus.NEW
    assert lead.claim_sla_breached_at is not None
    assert not LeadReassignment.all_tenants.filter(lead=lead).exists()
    assert recipients(breach_notices(lead)) == ids(owner), "away admins are still told"
    assert breach_activity(lead, "lead.claim_sla_breached").count() == 1


@pytest.mark.django_db
def test_auto_reassign_leaves_a_lead_alone_that_was_claimed_after_the_breach(
    auto_reassign, tenant, owner, alice, bob, clock
):
    """Admin or agent acted between the breach and the automatic move: theirs wins."""
    from leads.services import CLAIM_STAGE, _auto_reassign, _Breach

    lead = new_lead(tenant, alice)
    breach = _Breach(
        lead_id=lead.pk, tenant=tenant, agent_id=alice.pk, deadline=lead.claim_deadline
    )
    clock.shift(timedelta(minutes=6))
    claim_lead(tenant=tenant, lead_id=lead.pk, agent=alice)

    assert _auto_reassign(breach, CLAIM_STAGE) is False
    lead.refresh_from_db()
    assert lead.assigned_agent == alice
    assert not LeadReassignment.all_tenants.filter(lead=lead).exists()


# --- two sweeps at once ----------------------------------------------------------------


def _sweep_in_thread(barrier: threading.Barrier, results: list, errors: list) -> None:
    try:
        barrier.wait(timeout=10)
        results.append(sweep_sla_breaches(batch_size=5))
    except Exception as exc:  # surfaced by the test
        errors.append(exc)
    finally:
        connection.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_record_and_announce_each_breach_once(tenant, owner, alice):
    second_admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)
    leads = [new_lead(tenant, alice, f"Lead {n}") for n in range(50)]
    Lead.objects.for_tenant(tenant).update(
        claim_deadline=START - timedelta(minutes=1)  # long gone
    )

    barrier = threading.Barrier(2)
    results, errors = [], []
    threads = [
        threading.Thread(target=_sweep_in_thread, args=(barrier, results, errors)) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    assert sum(r["claim"] for r in results) == 50
    assert not Lead.objects.for_tenant(tenant).filter(claim_sla_breached_at__isnull=True).exists()
    notices = Notification.objects.for_tenant(tenant).filter(
        kind=NotificationKind.CLAIM_SLA_BREACHED
    )
    assert notices.count() == 100
    for lead in leads:
        assert recipients(notices.filter(lead=lead)) == ids(owner, second_admin)
    assert (
        ActivityLog.objects.for_tenant(tenant).filter(action="lead.claim_sla_breached").count()
        == 50
    )


# --- what the set-based batch writes ---------------------------------------------------


@pytest.mark.django_db
def test_a_breach_email_is_the_outbox_row_attach_email_builds(tenant, owner, alice, clock):
    """The sweep writes its emails as rows, not through attach_email: they must not
    differ in anything the outbox worker or the renderer reads."""
    lead = new_lead(tenant, alice, "Unclaimed")
    clock.shift(timedelta(minutes=6))

    sweep_sla_breaches()

    notice = breach_notices(lead).select_related("email_message", "recipient__user").get()
    written = notice.email_message
    expected = attach_email(
        Notification(
            pk=notice.pk,
            tenant_id=notice.tenant_id,
            recipient=notice.recipient,
            kind=notice.kind,
            dedupe_key=notice.dedupe_key,
        )
    )
    for field in (
        "tenant_id",
        "channel",
        "kind",
        "target",
        "endpoint_key",
        "payload",
        "ordering_key",
        "idempotency_key",
        "status",
        "attempts",
        "max_attempts",
        "claim_token",
        "lease_expires_at",
        "last_error",
        "provider_message_id",
        "finished_at",
    ):
        assert getattr(written, field) == getattr(expected, field), field
    assert written.next_attempt_at == START + timedelta(minutes=6)
    assert notice.body == (
        "Unclaimed was assigned to Alice Agent and not claimed by "
        f"{format_deadline(lead.claim_deadline, tenant)}. Reassign it from the admin."
    )
    assert notice.title == "Lead not claimed in time: Unclaimed"
    assert notice.is_read is False and notice.read_at is None


@pytest.mark.skipif(not ON_POSTGRES, reason="SQLite takes this path anyway")
@pytest.mark.django_db
def test_the_values_list_path_of_sqlite_writes_the_same(tenant, owner, alice, clock, monkeypatch):
    """The batch's rows are built by the server on PostgreSQL and go in as a VALUES list
    elsewhere; the second is plain SQL, so it is checked here too, on PostgreSQL."""
    MembershipFactory(tenant=tenant, role=Role.ADMIN)
    leads = [new_lead(tenant, alice, f"Lead {n}") for n in range(3)]
    clock.shift(timedelta(minutes=6))
    monkeypatch.setattr(connection, "vendor", "other")

    assert sweep_sla_breaches() == {"claim": 3, "contact": 0}

    monkeypatch.undo()
    for lead in leads:
        notices = breach_notices(lead).select_related("email_message")
        assert notices.count() == 2
        assert {n.email_message.status for n in notices} == {MessageStatus.PENDING}
        assert breach_activity(lead, "lead.claim_sla_breached").get().data["admins_notified"] == 2


# --- query budget ----------------------------------------------------------------------

# Two admins, so a batch inserts 2 * BATCH notices in one statement. SQLite caps a
# statement at 999 parameters (66 notices) and Django splits bigger inserts there, so on
# SQLite the batch is sized to fit; PostgreSQL has no such cap.
BATCH = 50 if ON_POSTGRES else 20
# One batch, in its own transaction. PostgreSQL: BEGIN, lock, stamp and read the due
# leads, read the admins, insert the notices, their emails and the activity rows (one
# statement), COMMIT (5). SQLite: BEGIN, lock the due ids, stamp them, read them, read the
# admins, insert the emails, the notices, the activity rows, COMMIT (9). A stage with
# nothing (more) due: BEGIN, one look, COMMIT (3).
SWEEP_QUERY_BUDGET = (5 if ON_POSTGRES else 9) + 3


def _due_leads(tenant, agent, count: int) -> None:
    created = [new_lead(tenant, agent, f"Lead {n}").pk for n in range(count)]
    Lead.objects.for_tenant(tenant).filter(pk__in=created).update(
        claim_deadline=START - timedelta(minutes=1)
    )


# Measured outside a test transaction, so each batch's atomic block is a real BEGIN/COMMIT
# (not logged, as in production) rather than a counted SAVEPOINT. One worker: a helper
# sharing a backlog (tests/leads/test_sweep_sql.py) runs its batches, the same statements
# each, on a connection of its own, which these counts do not see.
@pytest.mark.django_db(transaction=True)
def test_a_sweeps_statement_count_does_not_grow_with_the_breached_leads(
    tenant, owner, alice, django_assert_max_num_queries
):
    MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)

    with django_assert_max_num_queries(SWEEP_QUERY_BUDGET) as idle:
        assert sweep_sla_breaches(batch_size=BATCH, workers=1) == NOTHING

    _due_leads(tenant, alice, 1)
    with django_assert_max_num_queries(SWEEP_QUERY_BUDGET) as one:
        assert sweep_sla_breaches(batch_size=BATCH, workers=1) == {"claim": 1, "contact": 0}

    _due_leads(tenant, alice, BATCH)
    with django_assert_max_num_queries(SWEEP_QUERY_BUDGET) as full:
        assert sweep_sla_breaches(batch_size=BATCH, workers=1) == {"claim": BATCH, "contact": 0}

    assert len(one) == len(full), "1 or a whole batch of breaches: the same statements"

    _due_leads(tenant, alice, 2 * BATCH)
    with django_assert_max_num_queries(2 * SWEEP_QUERY_BUDGET) as two:
        assert sweep_sla_breaches(batch_size=BATCH, workers=1) == {
            "claim": 2 * BATCH,
            "contact": 0,
        }

    # An idle sweep is one empty look per stage; a batch replaces one of them.
    empty_look = len(idle) // 2
    one_batch = len(one) - len(idle) + empty_look
    assert len(two) == len(full) + one_batch, "a second batch costs one batch more"
    assert Notification.objects.for_tenant(tenant).filter(
        kind=NotificationKind.CLAIM_SLA_BREACHED
    ).count() == 2 * (1 + 3 * BATCH)


# --- entry points ----------------------------------------------------------------------


@pytest.mark.django_db
def test_check_sla_command_prints_the_counts_per_stage(tenant, owner, alice, clock):
    new_lead(tenant, alice, "Unclaimed")
    clock.shift(timedelta(minutes=1))
    claimed_lead(tenant, alice, "Uncontacted")
    clock.shift(timedelta(minutes=6))

    out = StringIO()
    call_command("check_sla", stdout=out)

    text = out.getvalue()
    assert "1 claim (stage 1" in text
    assert "1 contact (stage 2" in text


@pytest.mark.django_db
def test_check_sla_json_prints_one_object_per_sweep(tenant, owner, alice, clock):
    new_lead(tenant, alice)
    clock.shift(timedelta(minutes=6))

    out = StringIO()
    call_command("check_sla", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert (data["claim"], data["contact"]) == (1, 0)
    assert datetime.fromisoformat(data["at"]) == START + timedelta(minutes=6)

    out = StringIO()
    call_command("check_sla", "--json", "--loop", "--interval", "0", "--max-runs", "2", stdout=out)
    runs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["claim"], r["contact"]) for r in runs] == [(0, 0), (0, 0)]


@pytest.mark.django_db
def test_the_beat_task_runs_the_sweep(tenant, owner, alice, clock):
    new_lead(tenant, alice)
    clock.shift(timedelta(minutes=6))

    assert tasks.check_sla.delay().get() == {"claim": 1, "contact": 0}


# --- check_sla delivers what it queued in embedded mode --------------------------------


def breach_email_of(lead):
    return breach_notices(lead).select_related("email_message").get().email_message


@pytest.mark.django_db
def test_check_sla_in_embedded_mode_sends_the_breach_emails_before_it_exits(
    tenant, owner, alice, clock, settings, deliver_outbox, mailoutbox
):
    settings.REDIS_URL = ""  # embedded: no outbox worker to count on
    lead = new_lead(tenant, alice, "Unclaimed")
    deliver_outbox()  # alice's "new lead" email
    mailoutbox.clear()
    clock.shift(timedelta(minutes=6))

    out = StringIO()
    call_command("check_sla", stdout=out)

    message = breach_email_of(lead)
    assert message.status == MessageStatus.SENT
    assert [email.to for email in mailoutbox] == [[owner.user.email]]
    assert "Unclaimed" in mailoutbox[0].subject + mailoutbox[0].body
    assert "; outbox: 1 message(s) handled" in out.getvalue()
    assert deliver_outbox() == 0, "nothing was left for a worker"


@pytest.mark.django_db
def test_check_sla_json_in_embedded_mode_says_how_many_messages_it_handled(
    tenant, owner, alice, clock, settings, deliver_outbox, mailoutbox
):
    settings.REDIS_URL = ""
    new_lead(tenant, alice)
    deliver_outbox()
    clock.shift(timedelta(minutes=6))

    out = StringIO()
    call_command("check_sla", "--json", stdout=out)

    assert json.loads(out.getvalue())["delivered"] == 1
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_check_sla_with_an_outbox_worker_only_queues(
    tenant, owner, alice, clock, settings, deliver_outbox, mailoutbox
):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"  # production: the outbox process sends
    lead = new_lead(tenant, alice)
    deliver_outbox()
    mailoutbox.clear()
    clock.shift(timedelta(minutes=6))

    out = StringIO()
    call_command("check_sla", "--json", stdout=out)

    message = breach_email_of(lead)
    assert message.status == MessageStatus.PENDING
    assert mailoutbox == []
    assert json.loads(out.getvalue())["delivered"] is None
    assert deliver_outbox() == 1, "the worker's to send"
    assert [email.to for email in mailoutbox] == [[owner.user.email]]
