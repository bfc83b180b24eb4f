"""Django's PostgreSQL backend, with a connection health check that costs no round trip.

With `CONN_HEALTH_CHECKS` Django checks a persistent connection before the first query
of each request or task by sending it `SELECT 1`: a round trip, with its wait and its
GIL hand-overs, on every request (the one-query yardstick of the hot-path benchmark sent
two statements, the handover three). A connection the server ended while it sat idle
(a restart, a failover, `pg_terminate_backend`, `idle_session_timeout`) has something
to read by then: the server's goodbye, the end of the stream. So the socket is asked
first, without waiting: nothing to read, and libpq still counting the connection good,
means it is used as it is; anything to read (rare on an idle connection: a notice) means
the full check, `SELECT 1`, as before, which replaces a dead connection before the
request uses it. What neither check can tell without waiting, a server that has gone
silent, ends with the query's own timeouts (config/settings.py, tcp_user_timeout).
"""

import select

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
        """The connection is open, idle, and the server has sent it nothing since its
        last answer (no round trip: a poll of the socket that does not wait)."""
        conn = self.connection
        if conn.closed or conn.pgconn.status != pq.ConnStatus.OK:
            return False
        try:
            return not _has_something_to_read(conn.pgconn.socket)
        except (OSError, ValueError):
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
