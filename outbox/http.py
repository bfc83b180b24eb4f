"""HTTP for channels: one keep-alive session per worker thread, and a wall-clock deadline
for a whole send.

`requests` timeouts apply to each connect and to each read, not to the call: a server
that answers its headers and then one byte every two seconds never trips a 5-second read
timeout. So every send runs inside a `Deadline`, and a watchdog thread shuts down the
sockets of a send whose deadline has passed. The blocked read then fails at once, the
channel sees a network error, and `Deadline.expired` tells it why. No library we use
offers a total deadline for a request (urllib3 and httpx both time single operations),
which is why this module exists.
"""

import contextlib
import heapq
import itertools
import socket
import threading
import time
import urllib.request
from contextlib import contextmanager

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class Deadline:
    """The moment by which one send must be over."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.expires_at = time.monotonic() + self.seconds
        self.expired = False
        self.done = False  # the send is over: the watchdog leaves it be
        self._connections: set = set()
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    def timeout(self, *, connect: float = 5.0) -> tuple[float, float]:
        """A requests `timeout` that never outlasts the deadline (the watchdog ends reads
        that keep trickling)."""
        remaining = max(0.05, self.remaining())
        return (min(connect, remaining), remaining)

    def watch(self, connection) -> None:
        with self._lock:
            self._connections.add(connection)
            if self.expired:
                _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            if self.done:  # ended meanwhile: its connection may serve another send now
                return
            self.expired = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)


def _shut(connection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    # The plain socket's shutdown, also for TLS: it wakes a read blocked in another
    # thread without touching the SSL object that thread is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread for every deadline of the process. A send that ends only marks its
    deadline done (the entry leaves the heap when it comes up), and the thread is woken
    only by a deadline earlier than every other: sends cost it nothing while they keep
    to their deadline."""

    def __init__(self):
        self._heap: list = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._thread = None

    def add(self, deadline: Deadline) -> None:
        with self._condition:
            first = not self._heap or deadline.expires_at < self._heap[0][0]
            heapq.heappush(self._heap, (deadline.expires_at, next(self._counter), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="outbox-deadline-watchdog", daemon=True
                )
                self._thread.start()
            if first:
                self._condition.notify()

    def discard(self, deadline: Deadline) -> None:
        with deadline._lock:
            deadline.done = True

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._heap:
                    self._condition.wait()
                expires_at, _, deadline = self._heap[0]
                if deadline.done:
                    heapq.heappop(self._heap)
                    continue
                wait = expires_at - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                heapq.heappop(self._heap)
            deadline._expire()


_watchdog = _Watchdog()


@contextmanager
def deadline(seconds: float):
    """Run a send that must be over within `seconds`; yields the `Deadline`."""
    current = Deadline(seconds)
    previous = getattr(_local, "deadline", None)
    _local.deadline = current
    _watchdog.add(current)
    try:
        yield current
    finally:
        _watchdog.discard(current)
        _local.deadline = previous


def _watch_current(connection) -> None:
    current = getattr(_local, "deadline", None)
    if current is not None:
        current.watch(connection)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self):
        _watch_current(self)
        super().connect()
        _watch_current(self)

    def request(self, *args, **kwargs):
        _watch_current(self)  # a kept-alive connection serves a later send
        return super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self):
        _watch_current(self)
        super().connect()
        _watch_current(self)

    def request(self, *args, **kwargs):
        _watch_current(self)
        return super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections the current `deadline()` can cut."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def mount_deadline_adapter(session: requests.Session) -> requests.Session:
    adapter = DeadlineAdapter(pool_connections=16, pool_maxsize=16, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def thread_session() -> requests.Session:
    """This thread's keep-alive session: one TCP (and TLS) connection per endpoint and
    worker thread, instead of a new one per message."""
    session = getattr(_local, "session", None)
    if session is None:
        session = mount_deadline_adapter(requests.Session())
        # Proxies from the environment are read once, here, rather than on every request
        # (with trust_env, requests scans the environment and ~/.netrc each time).
        session.proxies.update(urllib.request.getproxies())
        session.trust_env = False
        _local.session = session
    return session


def post(
    session: requests.Session,
    url: str,
    *,
    headers: dict,
    timeout,
    data: bytes | None = None,
    json=None,
    stream: bool = False,
) -> requests.Response:
    """`session.post(url, ..., allow_redirects=False)`, minus what `Session.request`
    does on every call that a channel has no use for (merging settings, cookies, hooks
    and auth; preparing a redirect): that was about a fifth of a worker's CPU per message.
    The same headers (the session's, then `headers`), connections, timeouts and
    exceptions; the body is read unless `stream`, so the connection goes back to the
    pool."""
    request = requests.PreparedRequest()
    request.prepare(
        method="POST", url=url, headers={**session.headers, **headers}, data=data, json=json
    )
    response = session.get_adapter(url).send(
        request,
        stream=stream,
        timeout=timeout,
        verify=session.verify,
        cert=session.cert,
        proxies=session.proxies,
    )
    if not stream:
        response.content  # noqa: B018 - reads the body
    return response
