"""Django's PostgreSQL backend, with a connection health check that costs no round trip.

With `CONN_HEALTH_CHECKS` Django checks a persistent connection before the first query
of each request or task by sending it `SELECT 1`: a round trip, with its wait and its
GIL hand-overs, on every request (the one-query yardstick of the hot-path benchmark sent
two statements, the handover three). A connection the server ended while it sat idle
(a restart, a failover, `pg_terminate_backend`, `idle_session_timeout`) has something
to read by then: the server's goodbye, the end of the stream. So the socket is asked
first, without waiting: nothing to read, libpq counting the connection good, idle and
out of pipeline mode, means it is used as it is; anything else (rare: a notice waiting,
a transaction raw psycopg left open) means Django's full check, `SELECT 1`, which
replaces a connection that fails it before the request uses it.

What it gives up: a connection whose server went away without a word (a host that
crashed, an address left dark by a failover) looks quiet until the kernel hears of it
(a reset answering a keepalive probe, a few seconds; tcp_user_timeout, about 17 s,
config/settings.py). Django's `SELECT 1` would have waited that out and reconnected; here
the request's own query fails instead and answers 503, and the connection is replaced
when the request ends. `DB_HEALTH_CHECK_QUERY=true` brings Django's check back.
"""

import select

import psycopg
from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self):
        if (
            self.pool  # Django's own answer: the pool hands out healthy connections
            or self.connection is None
            or not self.health_check_enabled
            or self.health_check_done
        ):
            return super().close_if_health_check_failed()
        if not self._idle_and_quiet() and not self.is_usable():
            self.close()
        self.health_check_done = True

    def _idle_and_quiet(self) -> bool:
        """The connection is open, idle, out of pipeline mode, and the server has sent
        it nothing since its last answer (no round trip: a poll of the socket that does
        not wait)."""
        conn = self.connection
        try:
            pgconn = conn.pgconn
            if (
                conn.closed
                or pgconn.status != pq.ConnStatus.OK
                or pgconn.transaction_status != pq.TransactionStatus.IDLE
                or pgconn.pipeline_status != pq.PipelineStatus.OFF
            ):
                return False
            return not _has_something_to_read(pgconn.socket)
        except (OSError, ValueError, psycopg.Error):
            return False


def _has_something_to_read(fd: int) -> bool:
    """Data, an end of stream or an error on `fd`, now. poll() where there is one:
    select() refuses a descriptor numbered past FD_SETSIZE (1024), which a process with
    many files or connections open reaches."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)
