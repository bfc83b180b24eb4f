"""core.locking.first_locked: a row whose lock waited for a change comes back whole."""

import threading
import time

import pytest
from django.db import connection, transaction

from core.locking import first_locked
from inbox.models import InboxSession
from tests.db_locks import lock_waits
from tests.factories import MembershipFactory
from tests.inbox.factories import InboxSessionFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _someone_waits_for_a_lock() -> bool:
    return lock_waits() > 0


def test_a_row_whose_lock_waited_for_its_new_agent_comes_back_with_that_agents_row(tenant):
    first, second = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    session = InboxSessionFactory(tenant=tenant, assigned_agent=first)
    changed, commit = threading.Event(), threading.Event()

    def give_to_second():
        try:
            with transaction.atomic():
                InboxSession.all_tenants.filter(pk=session.pk).update(assigned_agent=second)
                changed.set()
                commit.wait(10)
        finally:
            connection.close()

    locked = {}

    def lock():
        try:
            with transaction.atomic():
                locked["row"] = first_locked(
                    InboxSession.objects.for_tenant(tenant).filter(pk=session.pk),
                    related=("assigned_agent__user", "team"),
                )
        finally:
            connection.close()

    writer = threading.Thread(target=give_to_second)
    writer.start()
    assert changed.wait(10)
    locker = threading.Thread(target=lock)
    locker.start()
    deadline = time.monotonic() + 10
    while not _someone_waits_for_a_lock() and time.monotonic() < deadline:
        time.sleep(0.02)
    commit.set()
    writer.join(10)
    locker.join(10)

    row = locked["row"]
    assert row.assigned_agent_id == second.pk
    assert row.assigned_agent is not None, "PostgreSQL alone joins the first agent's row"
    assert row.assigned_agent.pk == second.pk
    assert row.assigned_agent.user.email == second.user.email
    assert row.team is None
