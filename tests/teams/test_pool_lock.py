"""The pool's lock (its round-robin cursor, FOR UPDATE) inside a caller's transaction:
a pick that found somebody keeps it to COMMIT (capacity and fairness depend on it), a
pick that found nobody gives it back at once. On PostgreSQL, another connection asks
for the lock without waiting."""

import threading

import pytest
from django.db import OperationalError, connection, connections, transaction

from teams.models import Membership, Presence, Role, RoundRobinCursor
from teams.routing import route
from tests.factories import MembershipFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def pool_locked_by_another_transaction(tenant) -> bool:
    """Whether a connection of another thread finds one of the tenant's pools locked."""
    found = []

    def ask():
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("BEGIN")
                try:
                    cursor.execute(
                        f"SELECT 1 FROM {RoundRobinCursor._meta.db_table}"  # noqa: S608
                        " WHERE tenant_id = %s FOR UPDATE NOWAIT",
                        [tenant.pk],
                    )
                    found.append(False)
                except OperationalError:
                    found.append(True)
                cursor.execute("ROLLBACK")
        finally:
            other.close()

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join(timeout=10)
    assert found, "the other connection did not answer"
    return found[0]


def test_a_pick_that_finds_nobody_gives_the_pools_lock_back_before_commit(tenant):
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    route(tenant=tenant, team=None, work="sessions")  # the pools' cursors exist from now on
    assert RoundRobinCursor.objects.for_tenant(tenant).exists()

    with transaction.atomic():
        decision = route(tenant=tenant, team=None, work="sessions", count=True)
        assert decision.agent is None
        assert not pool_locked_by_another_transaction(tenant)
        # The transaction goes on as before.
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")


def test_a_pick_that_finds_somebody_keeps_the_pools_lock_until_commit(tenant):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    route(tenant=tenant, team=None, work="sessions")

    with transaction.atomic():
        decision = route(tenant=tenant, team=None, work="sessions", count=True)
        assert decision.agent == agent
        assert pool_locked_by_another_transaction(tenant)
    assert not pool_locked_by_another_transaction(tenant)
    agent.refresh_from_db()
    assert agent.open_session_count == 1


def test_a_pool_where_a_lost_race_ends_with_nobody_gives_the_lock_back_too(tenant, monkeypatch):
    """The first try locks the pool and loses its race (here: the agent it wrote is
    reported as taken meanwhile); by the second try everyone has gone away. The pool's
    lock, held since the first try, goes back before COMMIT, and what that try wrote
    is undone."""
    from teams.routing import picking

    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    route(tenant=tenant, team=None, work="sessions")  # the member pool's cursor exists
    agent.refresh_from_db()
    counted = agent.open_session_count
    real = picking.run_pick
    tries = []

    def lose_then_find_nobody(sql, params, **how):
        tries.append(next(p for p in params if str(p).startswith("sessions:")))
        if len(tries) == 1:
            result = real(sql, params, **how)  # locks the pool and writes the agent
            Membership.objects.for_tenant(tenant).update(presence=Presence.AWAY)
            return picking.PickResult(True, result.candidate_id, None)
        return real(sql, params, **how)

    monkeypatch.setattr(picking, "run_pick", lose_then_find_nobody)
    with transaction.atomic():
        decision = route(tenant=tenant, team=None, work="sessions", count=True)
        assert decision.agent is None
        assert tries[:2] == ["sessions:tier:member"] * 2  # lost, then tried again
        assert not pool_locked_by_another_transaction(tenant)
    agent.refresh_from_db()
    assert agent.open_session_count == counted
