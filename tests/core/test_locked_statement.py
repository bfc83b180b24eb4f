"""core.locked_statement: a statement run right after a row lock, in one round trip and
one implicit transaction (how a pick outside a transaction takes its pool's lock)."""

import threading
import time

import psycopg
import pytest
from django.db import (
    IntegrityError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    connection,
    transaction,
)
from django.test.utils import CaptureQueriesContext

from core.locked_statement import fetch_one_after_lock
from teams.models import RoundRobinCursor
from tests.db_locks import in_thread, lock_waits

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LOCK = "SELECT 1 FROM teams_roundrobincursor WHERE id = %s FOR UPDATE"
READ = "SELECT position FROM teams_roundrobincursor WHERE id = %s"


@pytest.fixture
def row(tenant):
    return RoundRobinCursor.all_tenants.create(tenant=tenant, pool_key="probe")


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def other_connection():
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params, autocommit=True)


def locked_elsewhere(pk) -> bool:
    """Whether another session holds the row's lock (asked from a connection of its own)."""
    with other_connection() as other:
        try:
            other.execute(
                "SELECT 1 FROM teams_roundrobincursor WHERE id = %s FOR UPDATE NOWAIT", [pk]
            )
        except psycopg.errors.LockNotAvailable:
            return True
    return False


def runs_prepared(sql: str) -> list[int]:
    """How often each prepared statement of this connection with `sql`'s text ran."""
    text = sql.replace("%s", "$1")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements WHERE statement = %s",
            [text],
        )
        return [runs for (runs,) in cursor.fetchall()]


def test_the_statement_reads_what_the_locks_last_holder_committed(row):
    """Its snapshot is taken once the lock is held: it sees the holder's change, which a
    statement started before the lock came free would not."""
    errors, rows = [], []
    with transaction.atomic():
        RoundRobinCursor.all_tenants.filter(pk=row.pk).update(position=41)
        waiting = in_thread(
            lambda: rows.append(fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk])), errors
        )
        wait_until(lambda: lock_waits() == 1)
        RoundRobinCursor.all_tenants.filter(pk=row.pk).update(position=42)
    waiting.join(10)
    assert not errors
    assert rows == [(42,)]


def test_an_error_in_the_statement_undoes_both_and_the_connection_goes_on(row, tenant):
    duplicate = (
        "INSERT INTO teams_roundrobincursor (tenant_id, pool_key, position)"
        " VALUES (%s, 'probe', 0) RETURNING 1"
    )
    with pytest.raises(IntegrityError):
        fetch_one_after_lock(LOCK, [row.pk], duplicate, [tenant.pk])

    assert not locked_elsewhere(row.pk)  # the lock went with the failed transaction
    assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_a_failing_lock_statement_runs_nothing_after_it(row):
    write = "UPDATE teams_roundrobincursor SET position = 7 WHERE id = %s RETURNING position"
    with pytest.raises(ProgrammingError):
        fetch_one_after_lock("SELECT 1 FROM no_such_table FOR UPDATE", [], write, [row.pk])
    row.refresh_from_db()
    assert row.position == 0
    assert fetch_one_after_lock(LOCK, [row.pk], write, [row.pk]) == (7,)


def test_the_lock_is_held_to_the_end_of_the_statement_only(row):
    assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert not locked_elsewhere(row.pk)


def test_a_statement_that_returns_nothing_gives_none(row):
    assert fetch_one_after_lock(LOCK, [row.pk], READ, [-1]) is None


def test_inside_a_transaction_the_statement_runs_alone(row):
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert [q["sql"].split(" FROM ")[0] for q in captured.captured_queries] == ["SELECT position"]


def test_with_autocommit_turned_off_the_statement_runs_alone_in_its_transaction(row):
    transaction.set_autocommit(False)
    try:
        with CaptureQueriesContext(connection) as captured:
            assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
        assert len(captured.captured_queries) == 1
        connection.rollback()
    finally:
        transaction.set_autocommit(True)


def test_both_statements_are_logged_and_the_execute_wrappers_see_the_statement(row):
    seen = []

    def record(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(record):
        assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert seen == [READ]
    logged = [q["sql"] for q in captured.captured_queries]
    assert len(logged) == 2 and logged[0].endswith("FOR UPDATE") and logged[1].startswith(READ[:20])


def test_the_statement_is_prepared_as_psycopg_prepares_its_own(row):
    """On the connection's sixth run, then reused; a new connection starts afresh."""
    for _ in range(8):
        assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert runs_prepared(READ) == [3]

    connection.close()  # a new server session: nothing of the old one is prepared
    for _ in range(8):
        assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert runs_prepared(READ) == [3]


def test_the_lock_statement_is_prepared_too(row):
    """It runs before every pick: parsed and planned once per connection, not each time."""
    for _ in range(8):
        assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert runs_prepared(LOCK) == [3]


def test_a_rollback_that_drops_every_prepared_statement_drops_ours_too(row):
    """psycopg answers a ROLLBACK with DEALLOCATE ALL (objects may have changed): the
    statement is prepared again afterwards, not run under a name the server forgot."""
    for _ in range(7):
        fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk])
    assert runs_prepared(READ) == [2]
    with pytest.raises(IntegrityError), transaction.atomic():
        RoundRobinCursor.all_tenants.create(tenant_id=row.tenant_id, pool_key="probe")
    with connection.cursor() as cursor:  # psycopg's clean-up runs with the next statement
        cursor.execute("SELECT 1")
    assert runs_prepared(READ) == []

    for _ in range(8):
        assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert runs_prepared(READ) == [3]


def test_nothing_is_prepared_when_prepared_statements_are_off(row):
    connection.close()
    options = connection.settings_dict["OPTIONS"]
    saved = options.get("prepare_threshold")
    options["prepare_threshold"] = None
    try:
        for _ in range(8):
            assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
        assert runs_prepared(READ) == []
    finally:
        connection.close()
        options["prepare_threshold"] = saved


def test_a_statement_made_stale_by_a_migration_marks_the_connection_for_closing(row):
    """As for any statement (core.stale_plans): the connection is replaced at the end of
    the request instead of failing on every later run."""
    probe = "SELECT id, label FROM locked_probe WHERE id = %s"
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE locked_probe (id int PRIMARY KEY, label varchar(10))")
        cursor.execute("INSERT INTO locked_probe VALUES (1, 'one')")
    try:
        for _ in range(6):  # prepared by now
            assert fetch_one_after_lock(LOCK, [row.pk], probe, [1]) == (1, "one")
        with other_connection() as other:  # what `migrate` does, from another process
            other.execute("ALTER TABLE locked_probe ALTER COLUMN label TYPE varchar(20)")
        with pytest.raises(NotSupportedError):
            fetch_one_after_lock(LOCK, [row.pk], probe, [1])
        assert connection.close_at == 0
    finally:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS locked_probe")


def test_a_connection_cut_while_waiting_for_the_lock_fails_that_call_only(row):
    outcome, errors = [], []
    backend = {}

    def wait_then_get_cut():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend["pid"] = cursor.fetchone()[0]
        try:
            fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk])
        except OperationalError:
            outcome.append("failed")
        # The broken connection is given up when the request ends, and the next one works.
        assert connection.close_at == 0 or connection.errors_occurred
        connection.close_if_unusable_or_obsolete()
        outcome.append(fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]))

    with transaction.atomic():
        RoundRobinCursor.all_tenants.filter(pk=row.pk).update(position=5)
        waiting = in_thread(wait_then_get_cut, errors)
        wait_until(lambda: lock_waits() == 1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend["pid"]])
        time.sleep(0.2)
    waiting.join(10)
    assert not errors
    assert outcome == ["failed", (5,)]


def test_concurrent_callers_each_see_the_one_before(row):
    """Sixteen threads at once, each on its own connection, bump the row: every caller
    gets its own statement's answer (each value seen once, none lost or crossed)."""
    bump = (
        "UPDATE teams_roundrobincursor SET position = position + 1 WHERE id = %s RETURNING position"
    )
    seen, errors = [], []
    lock = threading.Lock()

    def bump_many():
        for _ in range(10):
            (value,) = fetch_one_after_lock(LOCK, [row.pk], bump, [row.pk])
            with lock:
                seen.append(value)

    threads = [in_thread(bump_many, errors) for _ in range(16)]
    for thread in threads:
        thread.join(30)
    assert not errors
    assert sorted(seen) == list(range(1, 161))


def test_a_call_interrupted_mid_exchange_leaves_its_connection_to_be_replaced(row, monkeypatch):
    """Not a database error (an interrupt, a timeout in the client): what the server still
    sends belongs to no statement any more, so the connection is closed at the end of
    the request, and the next one starts afresh."""
    from core import locked_statement

    real = locked_statement._send_and_read

    def sent_then_interrupted(pgconn):
        gen = real(pgconn)
        yield next(gen)  # everything sent; the answers not read
        raise KeyboardInterrupt

    monkeypatch.setattr(locked_statement, "_send_and_read", sent_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk])
    monkeypatch.setattr(locked_statement, "_send_and_read", real)

    assert connection.close_at == 0
    connection.close_if_unusable_or_obsolete()
    assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)


def test_a_statement_whose_preparation_was_skipped_is_prepared_on_a_later_run(row):
    """The run that was to prepare it failed before the server read the preparation (the
    lock statement failed): the next runs do not take it as prepared."""
    for _ in range(5):
        fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk])
    with pytest.raises(ProgrammingError):  # the sixth run: it was to be prepared now
        fetch_one_after_lock("SELECT 1 FROM no_such_table FOR UPDATE", [], READ, [row.pk])
    assert runs_prepared(READ) == []
    for _ in range(8):
        assert fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk]) == (0,)
    assert runs_prepared(READ) == [3]


def test_a_statement_pushed_out_of_psycopgs_cache_is_dropped_from_the_server(row):
    other = "SELECT pool_key FROM teams_roundrobincursor WHERE id = %s"
    connection.ensure_connection()
    connection.connection.prepared_max = 1
    try:
        for _ in range(6):
            fetch_one_after_lock(LOCK, [row.pk], READ, [row.pk])
        assert runs_prepared(READ) == [1]
        for _ in range(6):
            assert fetch_one_after_lock(LOCK, [row.pk], other, [row.pk]) == ("probe",)
        # psycopg makes room when it meets a statement new to it.
        third = "SELECT last_agent_id FROM teams_roundrobincursor WHERE id = %s"
        assert fetch_one_after_lock(LOCK, [row.pk], third, [row.pk]) == (None,)
        assert runs_prepared(READ) == []
        assert runs_prepared(other) == [1]
    finally:
        connection.close()
