"""A database that falls silent in the middle of a connection: its packets dropped, no
reset, no refusal (a host gone, a cable pulled, a failover that leaves the old address
dark). What a caller notices: the query fails within seconds (the request answers 503,
a worker's task fails and is retried) instead of waiting for the kernel to give up a
quarter of an hour later. config/settings.py sets libpq's TCP keepalives (they find a
connection dead while a query waits for its answer) and tcp_user_timeout (it bounds how
long a query sent may go unacknowledged).

The silence is real: the client runs in a network namespace of its own and reaches
PostgreSQL over a veth pair through a forwarder; taking the root side of the pair down
drops every packet both ways. Needs root and iproute2 (`ip`), as CI has (REQUIRE_NETNS=1
there: missing, the run fails rather than skips).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid

import pytest
from django.conf import settings

from tests.e2e.processes import (
    TcpProxy,
    backends,
    base_env,
    database_url_for_tests,
    pg_connect,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

if os.geteuid() != 0 or shutil.which("ip") is None:
    MISSING = "needs root and iproute2 (`ip`) to make a network namespace"
    if os.environ.get("REQUIRE_NETNS") == "1":  # CI sets it: never skipped there
        raise RuntimeError(f"REQUIRE_NETNS=1, but this test {MISSING}.")
    pytest.skip(MISSING, allow_module_level=True)

# The client's settings for the test: a dead connection is found in about 2 s.
FAST_DETECTION = {
    "DB_KEEPALIVES_IDLE_SECONDS": "1",
    "DB_KEEPALIVES_INTERVAL_SECONDS": "1",
    "DB_KEEPALIVES_COUNT": "2",
    "DB_TCP_USER_TIMEOUT_MS": "2000",
}
# Found dead within this long after the silence began (the settings above allow about
# 3 s; the kernel alone would wait many minutes).
NOTICED_WITHIN = 10
CLIENT_TIMEOUT = 40  # then the client is killed and the test fails

CLIENT = r"""
import os, sys, time
import django
django.setup()
from django.db import OperationalError, connection

def step(text):
    print(text, flush=True)

with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
step("connected")
sys.stdin.readline()  # the test has made the network silent
started = time.monotonic()
try:
    with connection.cursor() as cursor:
        cursor.execute(os.environ["SILENT_QUERY"])
        cursor.fetchall()
except OperationalError as error:
    step(f"failed after {time.monotonic() - started:.1f} s: {type(error).__name__}")
else:
    step("answered")
"""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class SilentLink:
    """A network namespace whose only way out is a veth pair to a forwarder on the root
    side (`address`:`port`, forwarding to the test database). `silence()` takes the
    root side down: packets are dropped both ways, nobody is told."""

    def __init__(self):
        # One of the 16,384 /30 networks of 10.213.0.0/16 that nothing on the machine
        # uses (another run of this test, say): Linux would let two links share one.
        for _ in range(20):
            tag = uuid.uuid4().hex[:6]
            base = (int(tag, 16) % 16384) * 4
            prefix = f"10.213.{base // 256}"
            network = f"{prefix}.{base % 256}/30"
            if (
                not _ip("-4", "-o", "addr", "show", "to", network).strip()
                and not _ip("route", "show", network).strip()
            ):
                break
        self.namespace, self.outer, inner = f"hb{tag}", f"hb{tag}o", f"hb{tag}i"
        self.address, client = f"{prefix}.{base % 256 + 1}", f"{prefix}.{base % 256 + 2}"
        try:
            _ip("netns", "add", self.namespace)
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", self.namespace)
            _ip("addr", "add", f"{self.address}/30", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            inside = ["netns", "exec", self.namespace, "ip"]
            _ip(*inside, "addr", "add", f"{client}/30", "dev", inner)
            _ip(*inside, "link", "set", inner, "up")
            _ip(*inside, "link", "set", "lo", "up")
            db = settings.DATABASES["default"]
            upstream = (db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
            self.proxy = TcpProxy(upstream, host=self.address)
        except Exception:
            self.close()
            raise
        self.port = self.proxy.port

    def silence(self) -> None:
        _ip("link", "set", self.outer, "down")

    def close(self) -> None:
        if getattr(self, "proxy", None) is not None:
            self.proxy.close()
        with contextlib.suppress(Exception):
            _ip("netns", "del", self.namespace)  # the pair goes with its inner side
        with contextlib.suppress(Exception):
            _ip("link", "del", self.outer)


CLIENT_NAME = "black-hole-client"


@pytest.fixture
def silent_link():
    link = SilentLink()
    yield link
    link.close()
    # The server side of a silenced connection lives on until its own keepalives give
    # up: ended here, so that the test database can be dropped.
    with pg_connect() as conn:
        for pid in backends(conn, CLIENT_NAME):
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])


def _wait_until_running(query: str) -> None:
    with pg_connect() as conn:
        wait_until(
            lambda: conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
                " AND state = 'active' AND query = %s",
                [CLIENT_NAME, query],
            ).fetchone(),
            timeout=10,
            what="the client's query runs on the server",
        )


def run_client(link: SilentLink, query: str, *, wait_for_query: str | None = None) -> str:
    """The client's last line: how its query on the silenced connection ended."""
    url = database_url_for_tests(application_name=CLIENT_NAME)
    host_and_port = url.split("@", 1)[1].split("/", 1)[0]
    url = url.replace(f"@{host_and_port}/", f"@{link.address}:{link.port}/", 1)
    env = base_env(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="config.settings",
        SILENT_QUERY=query,
        LOG_LEVEL="WARNING",
        **FAST_DETECTION,
    )
    client = subprocess.Popen(
        ["ip", "netns", "exec", link.namespace, sys.executable, "-c", CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=settings.BASE_DIR,
    )
    # Whatever happens below, the client does not outlive CLIENT_TIMEOUT or the test.
    watchdog = threading.Timer(CLIENT_TIMEOUT, client.kill)
    watchdog.start()
    try:
        lines = []
        while not lines or lines[-1] != "connected":
            line = client.stdout.readline()
            assert line, f"the client ended before the query: {' | '.join(lines)}"
            lines.append(line.strip())
        if wait_for_query:
            client.stdin.write("\n")
            client.stdin.flush()
            _wait_until_running(wait_for_query)  # the server has it and works on it
            link.silence()
        else:
            link.silence()
            client.stdin.write("\n")
            client.stdin.flush()
        output, _ = client.communicate()
    finally:
        watchdog.cancel()
        client.kill()
        client.wait()
    if client.returncode == -signal.SIGKILL:
        pytest.fail(f"the client still waited for the silent database after {CLIENT_TIMEOUT} s")
    outcomes = [
        line for line in output.splitlines() if line.startswith(("failed after ", "answered"))
    ]
    assert outcomes, f"the client said nothing of its query: {output[-2000:]}"
    return outcomes[-1]


def seconds_of(line: str) -> float:
    assert line.startswith("failed after "), line
    return float(line.split()[2])


def test_a_query_sent_into_silence_fails_within_seconds(silent_link):
    # The query leaves after the network fell silent: it is never acknowledged.
    line = run_client(silent_link, "SELECT 1")
    print(line)
    assert line.endswith("OperationalError"), line
    # Found dead by the timeout (2 s here), not by something failing at once.
    assert 1.5 <= seconds_of(line) < NOTICED_WITHIN


def test_a_query_waiting_for_its_answer_when_silence_falls_fails_within_seconds(silent_link):
    # The server has the query (acknowledged) and is busy with it when the network
    # falls silent: nothing is left unacknowledged, only keepalives can tell.
    query = "SELECT pg_sleep(30)"
    line = run_client(silent_link, query, wait_for_query=query)
    print(line)
    assert line.endswith("OperationalError"), line
    assert 1.5 <= seconds_of(line) < NOTICED_WITHIN
