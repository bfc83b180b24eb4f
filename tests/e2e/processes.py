"""Real processes for end-to-end tests: outbox workers, Celery, gunicorn, a Redis of our
own, and a local CRM that records every request it gets.

Every process is started in a session of its own and belongs to a `Processes` group,
which ends all of them (and their children) when the test is over, also when it failed,
and prints the end of each one's output (pytest shows it for failed tests only).
"""

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from django.conf import settings

STOP_TIMEOUT = 10
READY_TIMEOUT = 30
OUTPUT_TAIL = 80  # lines of each process's output printed after a test


# --- the test database --------------------------------------------------------------------


def database_url_for_tests(*, application_name: str | None = None) -> str:
    """DATABASE_URL of the database pytest-django created for this run; with
    `application_name`, every connection of the process shows it in pg_stat_activity."""
    db = settings.DATABASES["default"]
    user = quote(db.get("USER") or "", safe="")
    password = db.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    url = f"postgres://{credentials}{host}{port}/{quote(db['NAME'], safe='')}"
    if application_name:
        url += "?" + urlencode({"application_name": application_name})
    return url


def pg_connect() -> psycopg.Connection:
    """A connection of our own to the test database (autocommit), outside Django."""
    db = settings.DATABASES["default"]
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "application_name": "e2e-test",
    }
    return psycopg.connect(
        **{key: value for key, value in params.items() if value}, autocommit=True
    )


def backends(conn: psycopg.Connection, application_name: str) -> list[int]:
    """Pids of the backends of `application_name` on the test database."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = %s",
        [application_name],
    ).fetchall()
    return [row[0] for row in rows]


def listeners(conn: psycopg.Connection) -> int:
    """How many outbox workers are LISTENing on the test database."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'outbox-listen' AND query ILIKE 'LISTEN%%'"
    ).fetchone()
    return row[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str, every=0.05):
    """Poll `predicate` until it returns something truthy (returned); fail after
    `timeout` seconds saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Not within {timeout:g} s: {what}.")
        time.sleep(every)


# --- a TCP proxy to cut -------------------------------------------------------------------


class TcpProxy:
    """`host`:`port` forwarded to `upstream`, until the test says otherwise:

    * `cut()`: every connection is closed and new ones are refused (nothing listens);
    * `black_hole()`: every connection is closed; new ones are accepted, never answered;
    * `cut_when_sent(pattern)`: `cut()` as soon as a client sends `pattern`, which is not
      forwarded: the server sees its client vanish in the middle of a transaction;
    * `restore()`: forwarding again.
    """

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1"):
        self.upstream = upstream
        self.host = host
        self.port = free_port()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.black_holed = False
        self.trigger: bytes | None = None
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        with self.lock:
            self.black_holed = False
            if self.listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
        if listener is not None:
            # shutdown() first: a bare close() leaves the accept() of another thread
            # blocked on it, still taking connections.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._close_all()

    def black_hole(self) -> None:
        with self.lock:
            self.black_holed = True
        self._close_all()

    def cut_when_sent(self, pattern: bytes) -> None:
        self.trigger = pattern

    def close(self) -> None:
        self.cut()

    def _close_all(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut: the listener is closed
            with self.lock:
                self.sockets.append(client)
                if self.black_holed:
                    continue  # held open, never answered
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets.append(server)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                trigger = self.trigger
                if from_client and trigger and trigger in tail + data:
                    self.trigger = None
                    self.cut()
                    return
                tail = data[-len(trigger) :] if trigger else b""
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# --- processes ----------------------------------------------------------------------------


def gunicorn_command(port: int, *, workers: int, threads: int = 1, extra=()) -> list[str]:
    """gunicorn serving the app on 127.0.0.1:`port` with production's hooks
    (config/gunicorn.conf.py, as the Procfile runs it); `extra` options after."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "config/gunicorn.conf.py",
        "config.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        *extra,
    ]


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess of ours: the test database, the local CRM allowed."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "PYTHONUNBUFFERED": "1",
        # The local CRM is plain http on a loopback address (CRM_* are the older names).
        "OUTBOUND_ALLOW_HTTP": "true",
        "OUTBOUND_ALLOW_PRIVATE_NETWORKS": "true",
        "CRM_ALLOW_HTTP": "true",
        "CRM_ALLOW_PRIVATE_NETWORKS": "true",
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


class Process:
    """A subprocess whose output lines are kept with the moment each arrived."""

    def __init__(self, name: str, args: list[str], *, env: dict[str, str]):
        self.name = name
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen(
            args,
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: ended with its children
        )
        self.pid = self.process.pid
        self._reader = threading.Thread(target=self._read, name=f"{name}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def matching(self, pattern: str) -> list[tuple[float, str]]:
        regex = re.compile(pattern)
        return [(at, line) for at, line in list(self.lines) if regex.search(line)]

    def wait_for(self, pattern: str, *, timeout: float = READY_TIMEOUT, count: int = 1):
        """Wait until `count` output lines match `pattern`; those lines."""

        def seen():
            found = self.matching(pattern)
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader take the last lines
                raise AssertionError(
                    f"{self.name} exited (code {self.process.returncode}) before printing "
                    f"{pattern!r}:\n{self.output[-3000:]}"
                )
            return None

        return wait_until(seen, timeout=timeout, what=f"{self.name} printed {pattern!r}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill9(self) -> None:
        """SIGKILL the process itself (not its group): as when a machine loses it."""
        self.signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def terminate(self) -> None:
        """SIGTERM its process group (SIGCONT first: a stopped process cannot exit)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)
                os.killpg(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM its process group, SIGKILL it after `timeout`; its exit code."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # children left behind, if any
        self._reader.join(5)
        return self.process.returncode


class Processes:
    """The processes of one test; `stop_all()` ends them, newest first."""

    def __init__(self):
        self.started: list[Process] = []

    def start(self, name: str, args: list[str], *, env: dict[str, str]) -> Process:
        process = Process(name, args, env=env)
        self.started.append(process)
        return process

    def outbox_worker(
        self, name: str = "outbox-worker", *, threads: int = 4, poll: float = 1.0, **env: str
    ) -> "OutboxWorker":
        application_name = f"e2e-{name}-{uuid.uuid4().hex[:8]}"
        args = [sys.executable, "manage.py", "outbox_worker", "--threads", str(threads)]
        args += ["--poll", str(poll)]
        environment = base_env(**env)
        environment["DATABASE_URL"] = database_url_for_tests(application_name=application_name)
        worker = OutboxWorker(name, args, env=environment)
        worker.application_name = application_name
        self.started.append(worker)
        return worker

    def redis(self, port: int | None = None) -> "RedisServer":
        """A Redis of its own, on `port` (one that was in use before: a restart) or a free
        one."""
        port = port or free_port()
        server = RedisServer(
            "redis",
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            env=dict(os.environ),
        )
        server.port = port
        server.url = f"redis://127.0.0.1:{port}/0"
        self.started.append(server)
        server.wait_for("Ready to accept connections")
        return server

    def gunicorn(self, *, workers: int = 2, **env: str) -> tuple[str, Process]:
        """The app served as in production, on a free port: (base URL, process), once every
        worker has booted and it answers (any status: /healthz may be 503 on purpose)."""
        port = free_port()
        web = self.start(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--access-logfile",
                "-",
            ],
            env=base_env(**env),
        )
        web.wait_for("Booting worker", count=workers)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{base}/healthz"), timeout=15, what="gunicorn answers")
        return base, web

    def celery(self, name: str, arguments: list[str], **env: str) -> Process:
        args = [sys.executable, "-m", "celery", "-A", "config", *arguments]
        return self.start(name, args, env=base_env(CELERY_TASK_ALWAYS_EAGER="false", **env))

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.terminate()  # all at once: each may take a moment to finish
        for process in reversed(self.started):
            process.stop()
        for process in self.started:
            tail = "\n".join(line for _, line in process.lines[-OUTPUT_TAIL:])
            print(f"\n----- {process.name} (pid {process.pid}) -----\n{tail}", flush=True)


class OutboxWorker(Process):
    """`manage.py outbox_worker`; its database connections carry `application_name`."""

    application_name = ""

    def wait_until_ready(self, timeout: float = READY_TIMEOUT) -> None:
        self.wait_for("Outbox worker started", timeout=timeout)


class RedisServer(Process):
    port = 0
    url = ""

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and then nothing answers."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)


def _answers(url: str) -> bool:
    import requests

    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


@contextlib.contextmanager
def processes():
    group = Processes()
    try:
        yield group
    finally:
        group.stop_all()


# --- which process owns a TCP connection ---------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def _inodes_of_connection(local_port: int, remote_port: int | None) -> set[str]:
    # Linux hands one ephemeral port to several connections when their peers differ (a
    # worker's link to the CRM and another's to PostgreSQL), so the peer's port is part of
    # the match, and every socket that matches is a candidate.
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if local != local_port or fields[9] == "0":
                    continue
                if remote_port is None or remote == remote_port:
                    inodes.add(fields[9])
    return inodes


def owner_of_port(port: int, pids: list[int], remote_port: int | None = None) -> int | None:
    """The pid (of `pids`) whose socket has local TCP port `port` (talking to `remote_port`)."""
    inodes = _inodes_of_connection(port, remote_port)
    for pid in pids:
        if inodes & _socket_inodes(pid):
            return pid
    return None


# --- a local CRM ----------------------------------------------------------------------------


@dataclass
class CrmRequest:
    """One request the CRM got, and what became of its answer."""

    route: str  # the tenant's part of the URL: http://host:port/<route>/api/meta/...
    key: str  # Idempotency-Key
    to: str
    client_port: int
    received_at: float  # time.monotonic()
    answered_at: float | None = None  # the whole response was written and flushed
    closed_at: float | None = None  # the client went away before the answer was complete
    client: object = None  # who sent it (`Crm.identify_client`)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the outbox workers' sessions use it
    server: "_Server"

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        crm = self.server.crm
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        route = self.path.strip("/").split("/", 1)[0]
        if not hasattr(self, "client"):
            self.client = crm.identify_client(self.client_address[1])
        request = CrmRequest(
            route=route,
            key=self.headers.get("Idempotency-Key", ""),
            to=str(body.get("to", "")),
            client_port=self.client_address[1],
            received_at=time.monotonic(),
            client=self.client,
        )
        with crm.lock:
            crm.requests.append(request)
        behaviour = crm.behaviours.get(route, crm.answer)
        try:
            behaviour(self, request)
        except (BrokenPipeError, ConnectionResetError):
            request.closed_at = request.closed_at or time.monotonic()
            self.close_connection = True

    # what behaviours use

    def client_went_away(self, wait: float) -> bool:
        """Wait up to `wait` seconds; whether the client closed its end meanwhile."""
        readable, _, _ = select.select([self.connection], [], [], wait)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def start_answer(self, body: bytes, *, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    crm: "Crm"


def answer_body(request: CrmRequest) -> bytes:
    return json.dumps({"messages": [{"id": f"wamid.{request.key}"}]}).encode()


class Crm:
    """A CRM on a local port. Each tenant's integration points at its own route
    (`url(route)`); `behaviours[route](handler, request)` answers, by default at once
    with 200 and a message id. Every request is recorded in `requests`."""

    def __init__(self):
        self.requests: list[CrmRequest] = []
        self.behaviours: dict[str, Callable] = {}
        self.lock = threading.Lock()
        self.identify_client: Callable[[int], object] = lambda port: None
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.crm = self
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}/{route}/"

    def received(self, route: str | None = None) -> list[CrmRequest]:
        with self.lock:
            return [r for r in self.requests if route is None or r.route == route]

    def keys(self, route: str | None = None) -> list[str]:
        return [r.key for r in self.received(route)]

    @staticmethod
    def answer(handler: _Handler, request: CrmRequest, *, before_last_byte=None) -> None:
        """200 with a message id. `before_last_byte()` runs when all of the answer but
        its last byte is written (the CRM has accepted the message and said so)."""
        body = answer_body(request)
        handler.start_answer(body)
        if before_last_byte is not None:
            handler.wfile.write(body[:-1])
            handler.wfile.flush()
            before_last_byte()
            body = body[-1:]
        handler.wfile.write(body)
        handler.wfile.flush()
        request.answered_at = time.monotonic()


def trickle(every: float = 2.0, total: float = 100.0):
    """A behaviour: 200 and its headers at once, then one body byte every `every` s, for
    `total` s: each read gets data in time, only a deadline for the whole send ends it."""

    def behaviour(handler: _Handler, request: CrmRequest) -> None:
        body = b" " * int(total / every) + b"{}"
        handler.start_answer(body)
        for index in range(len(body)):
            handler.wfile.write(body[index : index + 1])
            handler.wfile.flush()
            if handler.client_went_away(every):
                request.closed_at = time.monotonic()
                handler.close_connection = True
                return
        request.answered_at = time.monotonic()

    return behaviour


class Gate:
    """Holds answers back while closed: `close()` returns once no answer is being written,
    so every answer is either complete before it or starts after `open()`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.is_open = True

    def close(self) -> None:
        with self.lock:
            self.is_open = False

    def open(self) -> None:
        with self.lock:
            self.is_open = True


def delayed(seconds: float, *, gate: Gate | None = None):
    """A behaviour: wait `seconds` (and while `gate` is closed), then answer 200; nothing
    if the client went away meanwhile."""

    def behaviour(handler: _Handler, request: CrmRequest) -> None:
        wait = seconds
        while not handler.client_went_away(wait):
            if gate is None:
                Crm.answer(handler, request)
                return
            with gate.lock:
                if gate.is_open:
                    Crm.answer(handler, request)
                    return
            wait = 0.05
        request.closed_at = time.monotonic()
        handler.close_connection = True

    return behaviour
