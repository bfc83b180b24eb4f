"""Run a statement right after a row lock: one round trip, one transaction.

A pick (any strategy) locks its pool's cursor row inside the statement that does the
pick and its writes. Under load that statement waits for the lock behind the pool's other
handovers, and once it has it PostgreSQL re-reads the rows the one ahead changed
(EvalPlanQual), which sets up every part of the statement again: the pick, each insert,
the counters. Here the lock is taken first, by a statement of its own, and the work
follows in the same implicit transaction: its snapshot is taken once the lock is held,
so it reads the newest rows and sets nothing up twice (measured under wrk at 16
connections: 0.12 ms less of the database's CPU per handover, 0.25 ms in all).

The two statements and the Sync that ends their transaction leave in one write
(libpq's pipeline mode, driven here: psycopg's own pipeline sends each statement as it
is queued, and its thread can lose the GIL in between, holding the lock while the
server waits for the rest). So the lock lasts from its statement to that Sync, with
no wait on the client in between; an error in either statement undoes both.

In a transaction (an atomic block, or autocommit turned off) the statement runs alone,
as written: the caller's COMMIT ends its locks anyway.

psycopg's semi-private parts are used here (`PostgresQuery`, the connection's
`_prepared` bookkeeping, its lock and `wait`); psycopg is pinned in pyproject.toml, and
tests/core/test_locked_statement.py pins what this module expects of them.
"""

from __future__ import annotations

from django.db import connection
from django.db.backends.utils import CursorDebugWrapper
from psycopg import errors, pq
from psycopg._preparing import Prepare
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer
from psycopg.waiting import WAIT_R, WAIT_W

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)


def fetch_one_after_lock(lock_sql: str, lock_params: list, sql: str, params: list):
    """The first row of `sql` (None when it returns none), run right after `lock_sql`
    in one implicit transaction when the connection is in autocommit on PostgreSQL;
    otherwise `sql` alone."""
    with connection.cursor() as cursor:
        # In a transaction (an atomic block, or autocommit turned off) the statement
        # runs alone: its caller's COMMIT ends the locks either way.
        if connection.vendor != "postgresql" or not connection.get_autocommit():
            cursor.execute(sql, params)
            return cursor.fetchone()
        run = _AfterLock(lock_sql, lock_params)
        if isinstance(cursor, CursorDebugWrapper):  # DEBUG, or a test counting queries
            with cursor.debug_sql(lock_sql, lock_params):
                pass
            with cursor.debug_sql(sql, params):
                cursor._execute_with_wrappers(sql, params, many=False, executor=run)
        else:
            cursor._execute_with_wrappers(sql, params, many=False, executor=run)
        return run.row


class _AfterLock:
    """An executor for Django's execute wrappers (they see `sql`, as for any statement)."""

    def __init__(self, lock_sql: str, lock_params: list):
        self.lock_sql, self.lock_params = lock_sql, lock_params
        self.row = None

    def __call__(self, sql, params, many, context):
        db = context["connection"]
        db.validate_no_broken_transaction()
        with db.wrap_database_errors:
            self.row = _exchange(db, self.lock_sql, self.lock_params, sql, params)


def _exchange(db, lock_sql: str, lock_params: list, sql: str, params: list):
    conn = db.connection
    # psycopg's own bookkeeping of prepared statements decides and names them, as for
    # its own statements: prepared on the connection's sixth run, none when prepared
    # statements are off, forgotten (and the server's dropped) with every other one
    # after a ROLLBACK.
    prepared = conn._prepared
    with conn.lock:
        pgconn = conn.pgconn
        lock = PostgresQuery(Transformer.from_context(conn))
        lock.convert(lock_sql, lock_params)
        loader = Transformer.from_context(conn)
        work = PostgresQuery(loader)
        work.convert(sql, params)
        # Each as psycopg would run it: (query, Prepare.NO / SHOULD / YES, its name).
        statements = [(query, *prepared.get(query)) for query in (lock, work)]
        pgconn.enter_pipeline_mode()
        try:
            for query, prep, name in statements:
                if prep is Prepare.SHOULD:
                    pgconn.send_prepare(name, query.query, query.types)
                if prep is Prepare.NO:
                    pgconn.send_query_params(query.query, query.params, query.types, query.formats)
                else:
                    pgconn.send_query_prepared(name, query.params, query.formats)
            pgconn.pipeline_sync()
            keys = [prepared.maybe_add_to_cache(*statement) for statement in statements]
            results = conn.wait(_send_and_read(pgconn))
            pgconn.exit_pipeline_mode()
            ran = _book_results(prepared, statements, keys, results)
            conn.wait(prepared.maintain_gen(conn))
        except BaseException:
            # Cut off mid-exchange (a broken connection, an interrupt): what the server
            # still sends could not be told apart any more. The connection is closed
            # when the request or task ends.
            db.close_at = 0
            raise
    for result in results:
        if result.status not in _OK:
            # The first failure; the statements after it were skipped (PIPELINE_ABORTED)
            # and the transaction rolled back at the Sync.
            raise errors.error_from_result(result, encoding=conn.info.encoding)
    work_result = ran[-1]
    if work_result.ntuples == 0:
        return None
    loader.set_pgresult(work_result)
    return loader.load_row(0, tuple)


def _book_results(prepared, statements, keys, results) -> list:
    """Tell psycopg's bookkeeping how each statement went, as its cursor would; the
    statements' own results (a preparation's left out)."""
    ran, at = [], 0
    for (query, prep, name), key in zip(statements, keys, strict=True):
        if prep is Prepare.SHOULD:
            if results[at].status != pq.ExecStatus.COMMAND_OK:
                # The server skipped the preparation (a statement before it failed):
                # psycopg, which checks a preparation's result in its own pipeline
                # nowhere, would take the statement as prepared from now on.
                prepared._names.pop(prepared.key(query), None)
            at += 1
        ran.append(results[at])
        if key is not None:
            prepared.validate(key, prep, name, [results[at]])
        at += 1
    return ran


def _send_and_read(pgconn):
    """Send what is queued, then read every statement's result up to the Sync's."""
    while pgconn.flush():
        yield WAIT_W
    results = []
    while True:
        yield WAIT_R
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:  # the end of one statement's results
                continue
            if result.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            results.append(result)
