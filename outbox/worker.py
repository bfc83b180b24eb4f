"""The outbox worker: a long-running process that sends due messages (`manage.py
outbox_worker`; run several, on as many machines as you like).

It needs only the database. Its main thread claims due rows (`FOR UPDATE SKIP LOCKED`,
so workers never take the same row) and hands them to a pool of sending threads. It wakes
up when a message is written (PostgreSQL `LISTEN outbox`, fed by a trigger on insert, so
a request pays nothing for it), when a sending thread becomes free, and at least every
OUTBOX_POLL_SECONDS for retries that fall due. A hung broker or cache cannot hold
delivery up, because delivery uses neither.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, connections

from outbox.delivery import Followers, attempt, claim_due

logger = logging.getLogger("outbox.worker")

NOTIFY_CHANNEL = "outbox"
IDLE_CHECK_SECONDS = 10.0
_thread_state = threading.local()


class _Listener(threading.Thread):
    """Sets `written` and `wake` whenever PostgreSQL announces a new message; reconnects
    on failure."""

    def __init__(self, wake: threading.Event, written: threading.Event, stop: threading.Event):
        super().__init__(name="outbox-listen", daemon=True)
        self.wake = wake
        self.written = written
        self.stop_event = stop

    def announce(self) -> None:
        self.written.set()
        self.wake.set()

    def run(self):
        import psycopg

        params = _psycopg_params()
        pause = 0.5
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    pause = 0.5
                    self.announce()  # anything written while we were not listening
                    while not self.stop_event.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.announce()
            except Exception as exc:  # the poll keeps delivering meanwhile
                logger.warning("Outbox listener lost its connection (%s)", type(exc).__name__)
                self.stop_event.wait(pause)
                pause = min(pause * 2, 10.0)


def _psycopg_params() -> dict:
    db = settings.DATABASES["default"]
    params = {
        "dbname": db.get("NAME") or "postgres",
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "connect_timeout": db.get("OPTIONS", {}).get("connect_timeout", 5),
        "application_name": "outbox-listen",
    }
    return {key: value for key, value in params.items() if value is not None}


def _attempt_in_thread(message, stop: threading.Event) -> None:
    """Send `message`; then, while there is work and the worker is not stopping, claim
    and send the next one in this thread (with the write of the outcome, in the same round
    trip, where it can). A busy worker so needs no hand-off to the main thread and back
    between two messages (each a thread switch, under the GIL); the main thread claims for
    idle threads (a new message, the poll)."""
    while message is not None:
        # A health check (`SELECT 1`) only after the thread sat idle: per message it
        # would cost a round trip each time, and a connection in steady use is known to
        # be good.
        now = time.monotonic()
        if now - getattr(_thread_state, "last_used", 0.0) > IDLE_CHECK_SECONDS:
            close_old_connections()
        _thread_state.last_used = now
        followers = Followers(wanted=lambda: not stop.is_set())
        try:
            attempt(message, followers=followers)
        except Exception:  # attempt() stores every outcome; this is a last resort
            logger.exception("Outbound message %s: attempt crashed", message.pk)
            connection.close()
        message = followers.pop(0) if followers else None
        if message is None and not stop.is_set():
            try:
                claimed = claim_due(limit=1)
            except DatabaseError:  # the main thread's claim reports and retries
                connection.close()
                claimed = []
            message = claimed[0] if claimed else None


class OutboxWorker:
    def __init__(
        self,
        *,
        threads: int | None = None,
        poll_seconds: float | None = None,
        listen: bool | None = None,
    ):
        self.threads = max(1, int(threads or settings.OUTBOX_WORKER_THREADS))
        self.poll_seconds = float(poll_seconds or settings.OUTBOX_POLL_SECONDS)
        if listen is None:
            listen = connection.vendor == "postgresql"
        self.listen = listen
        # After sends end, claim again once this many threads are free rather than after
        # each one: a claim is a transaction of its own, and one claim for several
        # messages costs about what one claim for one does. A new message (NOTIFY), an
        # idle pool or the poll claims at once, so latency does not suffer.
        self.claim_batch = max(1, self.threads // 2)
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.written = threading.Event()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def run(self) -> None:
        logger.info(
            "Outbox worker started: %d sending threads, poll every %gs, listen=%s",
            self.threads,
            self.poll_seconds,
            self.listen,
        )
        if self.listen:
            _Listener(self.wake, self.written, self.stop_event).start()
        in_flight: set = set()
        polled = True
        with ThreadPoolExecutor(self.threads, thread_name_prefix="outbox-send") as pool:
            while not self.stop_event.is_set():
                # Cleared before looking, so a send that ends while we claim wakes the
                # wait below at once instead of being lost until the next poll.
                self.wake.clear()
                written = self.written.is_set()
                self.written.clear()
                in_flight = {future for future in in_flight if not future.done()}
                free = self.threads - len(in_flight)
                claimed = []
                worth_a_claim = free >= self.claim_batch or written or polled or not in_flight
                if free > 0 and worth_a_claim:
                    try:
                        claimed = claim_due(limit=free)
                    except DatabaseError as exc:
                        logger.warning("Outbox claim failed (%s); retrying", type(exc).__name__)
                        connections.close_all()
                        self.stop_event.wait(1.0)
                        continue
                for message in claimed:
                    future = pool.submit(_attempt_in_thread, message, self.stop_event)
                    future.add_done_callback(lambda _: self.wake.set())
                    in_flight.add(future)
                # Sleep until a send ends, a message is written (NOTIFY) or the poll is due;
                # claiming again at once would mostly find nothing.
                polled = not self.wake.wait(self.poll_seconds)
            logger.info("Outbox worker stopping: waiting for %d sends", len(in_flight))
        connections.close_all()
