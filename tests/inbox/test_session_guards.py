"""What the inbox services refuse: each test fails when its guard is taken out
(closed sessions are not routed or assigned, an agent's session is not taken from
them by a retry, another tenant's rows and agents do not exist, a session another
worker holds is skipped)."""

import threading
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from core.actor import Actor
from core.errors import Forbidden, NotFound
from inbox import acceptance, redistribution
from inbox.acceptance import accept_session, sweep_accept_windows, transfer_session
from inbox.admin import CrmIntegrationForm
from inbox.integrations import set_crm_api_key
from inbox.models import (
    CrmIntegration,
    HandoverRequest,
    InboxSession,
    SessionNotice,
    SessionNoticeKind,
    SessionStatus,
)
from inbox.notices import RENDERER, save_notices, session_notice
from inbox.redistribution import redistribute_sessions
from inbox.services import (
    assign_session_to,
    retry_unassigned_sessions,
    run_session_assignment,
)
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import build_message, queue_messages
from teams.models import Membership, Presence, Role
from tests.factories import MembershipFactory, UserFactory
from tests.inbox.factories import CrmIntegrationFactory, InboxSessionFactory

SYSTEM = Actor.system()


def reload(row):
    return type(row).all_tenants.get(pk=row.pk)


def waiting(tenant, **fields) -> InboxSession:
    """An open session nobody has yet."""
    return InboxSessionFactory(tenant=tenant, confirmation=False, **fields)


def counts(tenant) -> dict:
    return dict(Membership.objects.for_tenant(tenant).values_list("pk", "open_session_count"))


# --- routing again (retry, agent back, admin's "Run assignment again") --------------------


@pytest.mark.django_db
def test_running_assignment_again_on_a_closed_session_gives_it_to_nobody(tenant):
    agent = MembershipFactory(tenant=tenant)
    session = waiting(tenant, status=SessionStatus.CLOSED)

    result = run_session_assignment(
        tenant=tenant, session_id=session.pk, actor=SYSTEM, trigger="admin"
    )

    assert result is None
    assert reload(session).assigned_agent_id is None
    assert counts(tenant)[agent.pk] == 0


@pytest.mark.django_db
def test_running_assignment_again_never_takes_a_session_from_its_agent(tenant):
    holder = MembershipFactory(tenant=tenant)
    other = MembershipFactory(tenant=tenant)
    session = waiting(tenant, assigned_agent=holder, strategy="round_robin")
    Membership.objects.for_tenant(tenant).filter(pk=holder.pk).update(open_session_count=1)

    result = run_session_assignment(
        tenant=tenant, session_id=session.pk, actor=SYSTEM, trigger="admin"
    )

    assert result is None
    assert reload(session).assigned_agent_id == holder.pk
    assert counts(tenant) == {holder.pk: 1, other.pk: 0}


@pytest.mark.django_db
def test_running_assignment_for_another_tenants_session_finds_nothing(tenant, other_tenant):
    MembershipFactory(tenant=tenant)
    theirs = waiting(other_tenant)

    result = run_session_assignment(
        tenant=tenant, session_id=theirs.pk, actor=SYSTEM, trigger="admin"
    )

    assert result is None
    theirs = reload(theirs)
    assert theirs.assigned_agent_id is None and theirs.unassigned_reason == ""


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_retry_skips_a_session_another_worker_holds_without_waiting(tenant):
    """Another worker (an admin's assignment, a handover of the contact) has the session
    locked: the retry goes on to the next one at once, and leaves this one to it."""
    MembershipFactory(tenant=tenant)
    session = waiting(tenant)
    locked, release = threading.Event(), threading.Event()

    def other_worker():
        try:
            with transaction.atomic():
                InboxSession.objects.for_tenant(tenant).select_for_update().get(pk=session.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    results = []

    def retry():
        try:
            results.append(retry_unassigned_sessions(tenant_id=tenant.pk))
        finally:
            connection.close()

    holder = threading.Thread(target=other_worker)
    holder.start()
    assert locked.wait(timeout=10)
    retrying = threading.Thread(target=retry)
    retrying.start()
    retrying.join(timeout=5)
    finished_while_held = not retrying.is_alive()
    release.set()
    retrying.join(timeout=30)
    holder.join(timeout=30)

    assert finished_while_held, "the retry waited for the other worker's lock"
    assert results == [{"checked": 1, "assigned": 0, "skipped_manual": 0}]
    assert reload(session).assigned_agent_id is None


# --- a person assigns ("Assign to…") ----------------------------------------------------


@pytest.mark.django_db
def test_a_closed_session_cannot_be_assigned_and_nobodys_load_changes(tenant):
    agent = MembershipFactory(tenant=tenant)
    session = waiting(tenant, status=SessionStatus.CLOSED)

    with pytest.raises(NotFound) as refused:
        assign_session_to(tenant=tenant, session_id=session.pk, agent=agent, actor=SYSTEM)

    assert refused.value.code == "session_not_found"
    assert reload(session).assigned_agent_id is None
    assert counts(tenant)[agent.pk] == 0


@pytest.mark.django_db
def test_an_agent_of_another_tenant_cannot_be_given_the_session(tenant, outsider):
    session = waiting(tenant)

    with pytest.raises(NotFound) as refused:
        assign_session_to(tenant=tenant, session_id=session.pk, agent=outsider, actor=SYSTEM)

    assert (refused.value.code, refused.value.field) == ("agent_not_found", "agent")
    assert reload(session).assigned_agent_id is None
    assert reload(outsider).open_session_count == 0


@pytest.mark.django_db
def test_a_deactivated_agent_cannot_be_given_the_session(tenant):
    gone = MembershipFactory(tenant=tenant, is_active=False)
    session = waiting(tenant)

    with pytest.raises(NotFound) as refused:
        assign_session_to(tenant=tenant, session_id=session.pk, agent=gone, actor=SYSTEM)

    assert refused.value.code == "agent_not_found"
    assert reload(session).assigned_agent_id is None
    assert counts(tenant)[gone.pk] == 0


@pytest.mark.django_db
def test_a_person_whose_login_is_disabled_cannot_be_given_the_session(tenant):
    """Their membership is still active, their user is not (disabled between the admin
    form's choices and its submit): as a transfer, the assignment refuses them."""
    locked_out = MembershipFactory(tenant=tenant, user__is_active=False)
    session = waiting(tenant)

    with pytest.raises(NotFound) as refused:
        assign_session_to(tenant=tenant, session_id=session.pk, agent=locked_out, actor=SYSTEM)

    assert (refused.value.code, refused.value.field) == ("agent_not_found", "agent")
    assert reload(session).assigned_agent_id is None
    assert counts(tenant)[locked_out.pk] == 0


@pytest.mark.django_db
def test_assigning_it_again_to_the_agent_who_has_it_sends_them_no_second_notice(tenant):
    holder = MembershipFactory(tenant=tenant)
    session = waiting(tenant)
    assign_session_to(tenant=tenant, session_id=session.pk, agent=holder, actor=SYSTEM)

    assign_session_to(tenant=tenant, session_id=session.pk, agent=holder, actor=SYSTEM)

    assert SessionNotice.all_tenants.filter(session=session, recipient=holder).count() == 1
    assert reload(session).assigned_agent_id == holder.pk
    assert counts(tenant)[holder.pk] == 1


# --- accepting ----------------------------------------------------------------------------


def held_by(tenant, agent) -> InboxSession:
    """A session given to `agent`, waiting for them to accept it."""
    session = waiting(tenant, assigned_agent=agent, strategy="round_robin")
    Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(open_session_count=1)
    return session


@pytest.mark.django_db
def test_a_deactivated_agent_cannot_accept_the_session_they_still_hold(tenant):
    agent = MembershipFactory(tenant=tenant)
    session = held_by(tenant, agent)
    Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(is_active=False)
    client = APIClient()
    client.force_login(agent.user)

    response = client.post(f"/api/v1/sessions/{session.pk}/accept")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "session_not_found"
    assert reload(session).accepted_at is None


@pytest.mark.django_db
def test_accepting_a_session_moved_to_someone_else_meanwhile_changes_nothing(tenant):
    """The agent's page found the session theirs a moment ago; it was moved since."""
    first, second = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    session = held_by(tenant, second)

    with pytest.raises(NotFound) as refused:
        accept_session(tenant=tenant, session_id=session.pk, agent=first, actor=SYSTEM)

    assert refused.value.code == "session_not_found"
    session = reload(session)
    assert session.accepted_at is None and session.assigned_agent_id == second.pk


# --- transferring ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_deactivated_admin_cannot_move_anyones_session(tenant):
    holder, colleague = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN, is_active=False)
    session = held_by(tenant, holder)

    with pytest.raises(Forbidden):
        transfer_session(
            tenant=tenant,
            session_id=session.pk,
            actor=Actor.for_membership(admin, via="agent_page"),
            to_agent=colleague,
        )

    assert reload(session).assigned_agent_id == holder.pk
    assert counts(tenant) == {holder.pk: 1, colleague.pk: 0, admin.pk: 0}


@pytest.mark.django_db
def test_a_session_cannot_be_moved_to_a_person_whose_login_is_disabled(tenant):
    """Their membership is still active (the agent page lists it); their user is not."""
    holder = MembershipFactory(tenant=tenant)
    locked_out = MembershipFactory(tenant=tenant, user__is_active=False)
    session = held_by(tenant, holder)

    with pytest.raises(NotFound) as refused:
        transfer_session(
            tenant=tenant,
            session_id=session.pk,
            actor=Actor.for_membership(holder, via="agent_page"),
            to_agent=locked_out,
        )

    assert (refused.value.code, refused.value.field) == ("agent_not_found", "to_agent_id")
    assert reload(session).assigned_agent_id == holder.pk
    assert counts(tenant) == {holder.pk: 1, locked_out.pk: 0}


# --- the accept sweep -----------------------------------------------------------------------

NOTHING_SWEPT = {"missed": 0, "reassigned": 0, "unassigned": 0, "not_accepted": 0, "left": 0}


@pytest.fixture
def windowed(tenant):
    tenant.session_accept_window_minutes = 10
    tenant.session_accept_max_misses = 3
    tenant.save()
    return tenant


def overdue(tenant, agent) -> InboxSession:
    """Given to `agent` eleven minutes ago and not accepted: its window ran out."""
    session = held_by(tenant, agent)
    InboxSession.objects.for_tenant(tenant).filter(pk=session.pk).update(
        assigned_at=timezone.now() - timedelta(minutes=11),
        accept_deadline=timezone.now() - timedelta(minutes=1),
    )
    return session


@pytest.mark.django_db
def test_an_agent_who_accepts_between_the_sweeps_two_steps_keeps_the_session(windowed, monkeypatch):
    """The sweep recorded the miss (step 1); the agent accepts before it moves the
    session (step 2): accept wins, the session stays theirs."""
    agent, other = MembershipFactory(tenant=windowed), MembershipFactory(tenant=windowed)
    session = overdue(windowed, agent)
    record_misses = acceptance._record_miss_batch

    def accepted_right_after_step_one(now, batch_size):
        misses = record_misses(now, batch_size)
        accept_session(tenant=windowed, session_id=session.pk, agent=agent, actor=SYSTEM)
        return misses

    monkeypatch.setattr(acceptance, "_record_miss_batch", accepted_right_after_step_one)

    swept = sweep_accept_windows()

    assert swept == {**NOTHING_SWEPT, "missed": 1, "left": 1}
    session = reload(session)
    assert session.assigned_agent_id == agent.pk and session.accepted_at is not None
    assert counts(windowed) == {agent.pk: 1, other.pk: 0}


@pytest.mark.django_db
def test_a_session_given_while_the_window_was_off_is_not_swept_for_an_earlier_miss(windowed):
    """It was missed once by someone else; its agent now got it without a deadline
    (the tenant's window was off then). Back on, the sweep leaves it: that agent
    missed nothing."""
    missed_it, holder = MembershipFactory(tenant=windowed), MembershipFactory(tenant=windowed)
    other = MembershipFactory(tenant=windowed)
    session = held_by(windowed, holder)
    InboxSession.objects.for_tenant(windowed).filter(pk=session.pk).update(
        accept_misses=1,
        missed_agent_ids=[str(missed_it.pk)],
        accept_deadline=None,
        updated_at=timezone.now() - timedelta(minutes=30),
    )

    assert sweep_accept_windows() == NOTHING_SWEPT
    assert reload(session).assigned_agent_id == holder.pk
    assert counts(windowed) == {missed_it.pk: 0, holder.pk: 1, other.pk: 0}


@pytest.mark.django_db
def test_one_session_that_cannot_be_moved_on_does_not_stop_the_sweep(windowed, monkeypatch):
    first, second = MembershipFactory(tenant=windowed), MembershipFactory(tenant=windowed)
    free = MembershipFactory(tenant=windowed)
    broken, fine = overdue(windowed, first), overdue(windowed, second)
    # Only `free` can take `fine`: `first` is away.
    Membership.objects.for_tenant(windowed).filter(pk=first.pk).update(presence=Presence.AWAY)
    move_on = acceptance._move_on

    def failing_for_one(miss, now):
        if miss.session_id == broken.pk:
            raise DatabaseError("the session's row could not be written")
        return move_on(miss, now)

    monkeypatch.setattr(acceptance, "_move_on", failing_for_one)

    swept = sweep_accept_windows()

    assert swept == {**NOTHING_SWEPT, "missed": 2, "reassigned": 1}
    assert reload(fine).assigned_agent_id == free.pk
    broken = reload(broken)
    assert broken.assigned_agent_id == first.pk and broken.accept_misses == 1


# --- redistributing an agent's conversations ----------------------------------------------


@pytest.mark.django_db
def test_an_agent_who_is_not_an_admin_cannot_redistribute_a_colleagues_sessions(tenant):
    leaving, colleague = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    session = held_by(tenant, leaving)

    with pytest.raises(Forbidden):
        redistribute_sessions(
            tenant=tenant, agent=leaving, actor=Actor.for_membership(colleague, via="admin")
        )

    assert reload(session).assigned_agent_id == leaving.pk
    assert counts(tenant) == {leaving.pk: 1, colleague.pk: 0}


@pytest.mark.django_db
def test_a_deactivated_agent_still_marked_online_does_not_keep_what_nobody_else_can_take(tenant):
    gone = MembershipFactory(tenant=tenant, presence=Presence.ONLINE)
    session = held_by(tenant, gone)
    Membership.objects.for_tenant(tenant).filter(pk=gone.pk).update(is_active=False)

    result = redistribute_sessions(tenant=tenant, agent=gone, actor=SYSTEM)

    assert [move.session_id for move in result.unassigned] == [str(session.pk)]
    assert result.stayed == []
    session = reload(session)
    assert session.assigned_agent_id is None and session.unassigned_reason
    assert counts(tenant) == {gone.pk: 0}


@pytest.mark.django_db
def test_a_session_someone_moved_after_the_list_was_read_is_left_with_its_new_agent(
    tenant, monkeypatch
):
    """The redistribution read the leaving agent's sessions; before it moved this one,
    another admin gave it to someone: it is not taken from them."""
    leaving, colleague = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    new_holder = MembershipFactory(tenant=tenant, presence=Presence.AWAY)
    session = held_by(tenant, leaving)
    move = redistribution._move_session

    def moved_by_someone_first(**kwargs):
        assign_session_to(tenant=tenant, session_id=session.pk, agent=new_holder, actor=SYSTEM)
        return move(**kwargs)

    monkeypatch.setattr(redistribution, "_move_session", moved_by_someone_first)

    result = redistribute_sessions(tenant=tenant, agent=leaving, actor=SYSTEM)

    assert (result.gone, result.moved, result.unassigned) == (1, [], [])
    assert reload(session).assigned_agent_id == new_holder.pk
    assert counts(tenant) == {leaving.pk: 0, colleague.pk: 0, new_holder.pk: 1}


# --- notice emails --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_notice_email_is_not_sent_to_an_agent_deactivated_since(
    tenant, mailoutbox, deliver_outbox
):
    """Queued while they were an agent; by the time it is sent their membership, or
    their login, is off: no email about a conversation they can no longer open."""
    left_the_tenant = MembershipFactory(tenant=tenant, email_on_conversation=True)
    locked_out = MembershipFactory(tenant=tenant, email_on_conversation=True)
    for agent in (left_the_tenant, locked_out):
        session = waiting(tenant, assigned_agent=agent)
        save_notices([session_notice(session, agent, kind=SessionNoticeKind.SESSION_ASSIGNED)])
    Membership.objects.for_tenant(tenant).filter(pk=left_the_tenant.pk).update(is_active=False)
    type(locked_out.user).objects.filter(pk=locked_out.user_id).update(is_active=False)

    deliver_outbox()

    assert mailoutbox == []
    emails = OutboundMessage.all_tenants.filter(channel="email")
    assert [m.status for m in emails] == [MessageStatus.SKIPPED] * 2


@pytest.mark.django_db
def test_an_email_message_never_renders_another_tenants_notice(
    tenant, other_tenant, mailoutbox, deliver_outbox
):
    """A message of one tenant naming a notice of another (a bad row, a tampered
    payload) is skipped: the other tenant's conversation is not mailed out."""
    theirs = MembershipFactory(tenant=other_tenant, email_on_conversation=True)
    session = waiting(other_tenant, assigned_agent=theirs)
    notice = session_notice(session, theirs, kind=SessionNoticeKind.SESSION_ASSIGNED)
    SessionNotice.all_tenants.bulk_create([notice])
    message = build_message(
        tenant=tenant,
        channel="email",
        kind="inbox.session_assigned",
        target="attacker@example.test",
        payload={"renderer": RENDERER, "notice_id": str(notice.pk)},
        idempotency_key="cross-tenant-notice",
    )
    queue_messages([message])

    deliver_outbox()

    assert mailoutbox == []
    assert OutboundMessage.all_tenants.get(pk=message.pk).status == MessageStatus.SKIPPED


# --- the CRM integration and the admin --------------------------------------------------------


@pytest.mark.django_db
def test_setting_the_crm_key_keeps_what_someone_else_changed_meanwhile(tenant):
    integration = CrmIntegrationFactory(tenant=tenant, name="Acme CRM")
    stale = CrmIntegration.objects.for_tenant(tenant).get(pk=integration.pk)
    CrmIntegration.objects.for_tenant(tenant).filter(pk=integration.pk).update(
        name="Renamed", api_url="https://crm.example.test/", is_active=False
    )

    set_crm_api_key(integration=stale, plaintext="new-key")

    row = CrmIntegration.objects.for_tenant(tenant).get(pk=integration.pk)
    assert (row.name, row.api_url, row.is_active) == ("Renamed", "https://crm.example.test/", False)
    assert row.api_key_encrypted == stale.api_key_encrypted


@pytest.mark.django_db
def test_the_admin_refuses_a_crm_url_that_would_never_be_called(tenant):
    form = CrmIntegrationForm(
        data={
            "tenant": tenant.pk,
            "name": "Acme CRM",
            "is_active": "on",
            "api_url": "https://crm.example.test/?token=1",
            "config": '{"phoneNumberId": "PN1"}',
        }
    )

    assert not form.is_valid()
    assert form.errors["api_url"] == ["apiUrl must not have a query string or fragment"]


@pytest.mark.django_db
def test_sessions_and_idempotency_records_are_not_deleted_or_edited_in_the_admin(tenant):
    """Deleting a session would skip its agent's counter and the audit trail (close it
    instead); an Idempotency-Key's record deleted or changed would let a retry hand
    over twice. Not even a superuser."""
    client = APIClient()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    session = waiting(tenant)
    record = HandoverRequest.objects.for_tenant(tenant).create(
        key="k1", request_hash="0" * 64, session=session, response_status=201, response_body={}
    )

    assert client.get(f"/admin/inbox/inboxsession/{session.pk}/delete/").status_code == 403
    assert client.get(f"/admin/inbox/handoverrequest/{record.pk}/delete/").status_code == 403
    change = client.get(f"/admin/inbox/handoverrequest/{record.pk}/change/")
    assert change.status_code == 200 and 'name="_save"' not in change.text
    assert InboxSession.objects.for_tenant(tenant).filter(pk=session.pk).exists()
    assert HandoverRequest.objects.for_tenant(tenant).filter(pk=record.pk).exists()
