"""Benchmark of the handover hot path (issue #10): every figure of the issue, with its
goal and the ratio measured in the same run, in one table.

    .venv/bin/python -m tests.benchmarks.bench_hot_path [--quick] [--only SECTION ...]

Needs PostgreSQL (BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres:
a server where it may create a database), `redis-server` and `wrk` on the PATH
(Debian/Ubuntu: `apt-get install -y wrk redis-server`). It creates its own database
(handover_bench_hot), its own Redis on a free port and its own gunicorn, and drops and
stops them at the end, even when interrupted; it touches no other database. Not a pytest
test (pytest collects only test_*.py); run it on an idle machine.

How each figure is taken:

- Served figures (req/s, round-robin spread, revocation): gunicorn as production runs it
  (config/gunicorn.conf.py, 2 workers x 8 threads, settings config.settings_bench, which
  are production's plus the one-query endpoint), driven by wrk at 16 connections.
- In-process figures (p50 ratios, statements): Django's test Client in this process,
  the two sides of each ratio alternating request by request, so drift hits both alike.
- CPU per request, next to the req/s: the CPU time gunicorn (master and workers) and the
  PostgreSQL server's processes spent during each wrk run (from /proc, so the database's
  only when it runs on this machine), over the requests served. Throughput on a small
  machine is CPU over CPU per request; this says where the time went.
- The one-query endpoint (`GET /api/v1/bench/one-query`, tests/benchmarks/bench_urls.py)
  authenticates the API key like every endpoint and does one SELECT by primary key.
- Handover: new contact, `sendHandoverMessage` true (an outbox row is queued), no team
  (the tenant's waterfall) unless a team is named.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from tests.benchmarks.proc_cpu import command, stat_fields, tree_cpu_seconds

DB_NAME = "handover_bench_hot"
SETTINGS = "config.settings_bench"
HANDOVER = "/api/v1/handover"
ONE_QUERY = "/api/v1/bench/one-query"
CONNECTIONS = 16
WORKERS, THREADS = 2, 8
BIG_TEAM = 2000
OUTSIDERS = 20_000
SPREAD_POOL = 10
OPEN_SESSIONS = 100_000
BREACHES = 10_000
IDLE_LEADS = 100_000
SHOW_SQL = False
GUNICORN_PID = None  # the master of the gunicorn start_gunicorn runs
SECTIONS = ["served", "latency", "statements", "teams", "load", "sweep", "revoke"]

# --- figures -------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    measured: str
    goal: str
    ok: bool | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, figure: str, measured: str, goal: str, ok: bool | None = None) -> None:
        self.rows.append(Row(figure, measured, goal, ok))
        mark = "" if ok is None else (" ok" if ok else " MISSED")
        print(f"  {figure}: {measured}" + (f" (goal {goal}){mark}" if goal else ""), flush=True)

    def table(self) -> str:
        headers = ["figure", "measured", "goal", ""]
        cells = [
            [r.figure, r.measured, r.goal, "" if r.ok is None else ("ok" if r.ok else "MISSED")]
            for r in self.rows
        ]
        widths = [max(len(c) for c in col) for col in zip(headers, *cells, strict=True)]

        def line(row):
            return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(headers), rule, *(line(c) for c in cells)])


def p50(values: list[float]) -> float:
    return statistics.median(values)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


# --- the database and the processes ---------------------------------------------------


def admin_url() -> str:
    return os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def bench_url() -> str:
    parts = urlsplit(admin_url())
    return urlunsplit(parts._replace(path=f"/{DB_NAME}"))


def create_database() -> None:
    import psycopg

    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def drop_database() -> None:
    import psycopg

    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def setup_django(redis_url: str) -> None:
    os.environ["DATABASE_URL"] = bench_url()
    os.environ["REDIS_URL"] = redis_url
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    warnings.filterwarnings("ignore", "No directory at", UserWarning)
    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment(debug=False)  # "testserver" allowed; no query log kept
    call_command("migrate", verbosity=0, interactive=False)


def start_redis(procs) -> str:
    """A Redis of our own on a free port; Django is set up to use it (a process of the
    group needs the settings, so they come first)."""
    from tests.e2e.processes import RedisServer, free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    setup_django(url)
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = RedisServer("redis", [*args, "--appendonly", "no"], env=dict(os.environ))
    procs.started.append(server)
    server.wait_for("Ready to accept connections")
    return url


def start_gunicorn(procs, redis_url: str) -> str:
    from tests.e2e.processes import _answers as answers
    from tests.e2e.processes import base_env, free_port, gunicorn_command, wait_until

    port = free_port()
    web = procs.start(
        "gunicorn",
        gunicorn_command(
            port,
            workers=WORKERS,
            threads=THREADS,
            extra=(
                "--access-logfile",
                "-",
                "--access-logformat",
                '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss',
            ),
        ),
        env=base_env(
            DJANGO_SETTINGS_MODULE=SETTINGS,
            DATABASE_URL=bench_url(),
            REDIS_URL=redis_url,
            LOG_LEVEL="WARNING",
        ),
    )
    web.wait_for("Booting worker", count=WORKERS)
    global GUNICORN_PID
    GUNICORN_PID = web.pid
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{base}/healthz"), timeout=30, what="gunicorn answers")
    return base


# --- the tenant ----------------------------------------------------------------------


class Tenant:
    """A tenant with an API key and online agents; teams made on demand."""

    def __init__(self, name: str, agents: int = 10):
        from core.actor import Actor
        from teams import models
        from teams.services import create_api_key

        self.m = models
        self.run = uuid.uuid4().hex[:8]
        self.tenant = models.Tenant.objects.create(name=name, slug=f"{name}-{self.run}".lower())
        self.key, self.api_key = create_api_key(
            tenant=self.tenant, name="benchmark", actor=Actor.system()
        )
        self.agents = self.make_agents(agents, "agent")
        self._contacts = 0

    def make_agents(self, count: int, label: str, role=None) -> list:
        m = self.m
        users = [
            m.User(email=f"{label}-{n}-{self.run}@bench.invalid", full_name=f"{label} {n}")
            for n in range(count)
        ]
        for user in users:
            user.set_unusable_password()
        m.User.objects.bulk_create(users, batch_size=2000)
        extra = {"role": role} if role else {}
        return m.Membership.objects.for_tenant(self.tenant).bulk_create(
            [m.Membership(user=user, **extra) for user in users], batch_size=2000
        )

    def make_team(self, name: str, size: int, strategy: str):
        m = self.m
        agents = self.make_agents(size, name)
        team = m.Team.objects.for_tenant(self.tenant).create(name=name)
        m.AssignmentConfig.objects.for_tenant(self.tenant).create(team=team, strategy=strategy)
        m.TeamMember.objects.for_tenant(self.tenant).bulk_create(
            [m.TeamMember(team=team, membership=agent) for agent in agents], batch_size=2000
        )
        return team, agents

    def contact(self) -> str:
        self._contacts += 1
        return f"bench-{self.run}-{self._contacts}"


def handover_body(tenant: Tenant, team=None) -> str:
    body = {"contactId": tenant.contact(), "sendHandoverMessage": True}
    if team is not None:
        body["teamId"] = str(team.pk)
    return json.dumps(body)


def post_handover(client, tenant: Tenant, team=None) -> float:
    started = time.perf_counter()
    response = client.post(
        HANDOVER,
        data=handover_body(tenant, team),
        content_type="application/json",
        HTTP_X_API_KEY=tenant.api_key,
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"handover answered {response.status_code}: {response.content[:300]!r}")
    return elapsed


def get_one_query(client, tenant: Tenant) -> float:
    started = time.perf_counter()
    response = client.get(
        ONE_QUERY, {"agentId": str(tenant.agents[0].pk)}, HTTP_X_API_KEY=tenant.api_key
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"one-query answered {response.status_code}: {response.content!r}")
    return elapsed


def alternate(requests: int, *calls, block: int = 20) -> list[list[float]]:
    """Latencies of each call, the calls taking turns in blocks of `block` requests (so
    drift in the machine hits all alike, while what one call leaves behind, such as
    garbage to collect, is mostly paid by itself); a warm-up round is not counted."""
    for call in calls:
        for _ in range(max(5, requests // 10)):
            call()
    results = [[] for _ in calls]
    while len(results[-1]) < requests:
        for result, call in zip(results, calls, strict=True):
            for _ in range(min(block, requests - len(result))):
                result.append(call())
    return results


def copy_rows(model, template_pk, count: int, replace: dict[str, str]) -> None:
    """`count` copies of one row in one INSERT … SELECT (ids new; `replace` maps columns
    to SQL expressions over `n`, the copy's number): seeding 100k rows in seconds."""
    from django.db import connection

    columns = [f.column for f in model._meta.concrete_fields]
    values = []
    for column in columns:
        if column == "id":
            values.append("gen_random_uuid()")
        else:
            values.append(replace.get(column, f'src."{column}"'))
    table = model._meta.db_table
    quoted = ", ".join(f'"{c}"' for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO "{table}" ({quoted}) SELECT {", ".join(values)} '  # noqa: S608
            f'FROM "{table}" src CROSS JOIN generate_series(1, %s) AS n WHERE src.id = %s',
            [count, template_pk],
        )
        cursor.execute(f'ANALYZE "{table}"')


# --- served: gunicorn and wrk --------------------------------------------------------


WRK_SCRIPT = """
wrk.method = "{method}"
wrk.headers["X-API-Key"] = "{key}"
wrk.headers["Content-Type"] = "application/json"
local started = 0
function setup(thread)
  started = started + 1
  thread:set("tid", started)
end
local counter = 0
function request()
  if wrk.method == "GET" then
    return wrk.format(nil, "{path}")
  end
  counter = counter + 1
  local body = string.format('{{"contactId":"wrk-{run}-%d-%d","sendHandoverMessage":true{team}}}',
                              tid, counter)
  return wrk.format(nil, "{path}", nil, body)
end
"""


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    requests: int
    errors: int


def _ms(text: str) -> float:
    """wrk's "842.00us", "13.72ms", "1.02s" or "1.50m" in milliseconds."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise ValueError(f"wrk printed a latency this cannot read: {text!r}")
    number, unit = found.groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


def run_wrk(base: str, *, method: str, path: str, key: str, seconds: float, team=None) -> WrkResult:
    script = WRK_SCRIPT.format(
        method=method,
        key=key,
        path=path,
        run=uuid.uuid4().hex[:8],
        team=f',"teamId":"{team.pk}"' if team is not None else "",
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t",
                "2",
                "-c",
                str(CONNECTIONS),
                "-d",
                f"{seconds:g}s",
                "--latency",
                "-s",
                handle.name,
                base + path,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50_ms = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    if m := re.search(r"Socket errors: (.*)", out):
        print(f"    wrk socket errors: {m.group(1)}")
    return WrkResult(rps=rps, p50_ms=p50_ms, requests=requests, errors=errors)


def postgres_server_pid() -> int | None:
    """The local PostgreSQL server's main process (the parent of this connection's
    backend), or None when the database is elsewhere: its pids mean nothing here."""
    from django.db import connection

    host = urlsplit(bench_url()).hostname or ""
    if not (host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")):
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    fields = stat_fields(backend)
    if fields is None:
        return None
    server = int(fields[1])  # ppid
    # A pid from another pid namespace (PostgreSQL in a container) names some other
    # process here, or none.
    return server if command(backend) == command(server) == "postgres" else None


@dataclass
class CpuUse:
    """CPU seconds of gunicorn (master and workers) and of the PostgreSQL server, over
    the requests served."""

    web: float = 0.0
    database: float | None = 0.0
    requests: int = 0

    def per_request_ms(self) -> tuple[float, float | None]:
        served = max(self.requests, 1)  # wrk counted none: the server failed every request
        web = self.web / served * 1000
        database = None if self.database is None else self.database / served * 1000
        return web, database


def wrk_with_cpu(use: CpuUse, base: str, **wrk) -> WrkResult:
    """run_wrk, adding the CPU the run cost to `use`."""
    server = postgres_server_pid() if use.database is not None else None
    web_before, db_before = tree_cpu_seconds(GUNICORN_PID), tree_cpu_seconds(server)
    result = run_wrk(base, **wrk)
    use.web += tree_cpu_seconds(GUNICORN_PID) - web_before
    if server is None:
        use.database = None
    else:
        use.database += tree_cpu_seconds(server) - db_before
    use.requests += result.requests
    return result


def _cpu_text(use: CpuUse) -> str:
    web, database = use.per_request_ms()
    if database is None:
        return f"{web:.2f} ms (gunicorn; the database is not on this machine)"
    return f"{web + database:.2f} ms (gunicorn {web:.2f} + PostgreSQL {database:.2f})"


def served(report: Report, base: str, seconds: float, rounds: int) -> None:
    """Handover vs one-query req/s at 16 connections, rounds alternating the two."""
    from teams.models import Strategy

    tenant = Tenant("served", agents=10)
    get_path = f"{ONE_QUERY}?agentId={tenant.agents[0].pk}"
    # Warm both (every worker's connections, the key's cache entry, the URLconf).
    run_wrk(base, method="GET", path=get_path, key=tenant.api_key, seconds=1)
    run_wrk(base, method="POST", path=HANDOVER, key=tenant.api_key, seconds=1)
    one, hand = [], []
    one_cpu, hand_cpu = CpuUse(), CpuUse()
    for _ in range(rounds):
        one.append(
            wrk_with_cpu(
                one_cpu, base, method="GET", path=get_path, key=tenant.api_key, seconds=seconds
            )
        )
        hand.append(
            wrk_with_cpu(
                hand_cpu, base, method="POST", path=HANDOVER, key=tenant.api_key, seconds=seconds
            )
        )
    for label, results in (("one-query", one), ("handover", hand)):
        errors = sum(r.errors for r in results)
        if errors:
            print(f"    {label}: {errors} non-2xx answers")
    # Each round's pair, for the spread: the machine's speed drifts from round to round.
    pairs = ", ".join(f"{h.rps:.0f}/{o.rps:.0f}" for o, h in zip(one, hand, strict=True))
    print(f"    rounds, handover/one-query req/s: {pairs}", flush=True)
    one_rps = statistics.fmean(r.rps for r in one)
    hand_rps = statistics.fmean(r.rps for r in hand)
    report.add("one-query endpoint, req/s (16 conn)", f"{one_rps:.0f}", "yardstick")
    report.add("handover (new contact, message on, no team), req/s", f"{hand_rps:.0f}", "")
    r = ratio(hand_rps, one_rps)
    report.add("handover / one-query throughput", f"{r:.2f}x", ">= 0.5x", r >= 0.5)
    report.add("CPU per request under wrk, one-query", _cpu_text(one_cpu), "(why)")
    report.add("CPU per request under wrk, handover", _cpu_text(hand_cpu), "(why)")
    if one_cpu.database is not None and hand_cpu.database is not None:
        cost = ratio(sum(one_cpu.per_request_ms()), sum(hand_cpu.per_request_ms()))
        report.add("one-query / handover CPU per request", f"{cost:.2f}x", "(why)")

    # Round robin under 16 concurrent clients: exactly fair?
    team, agents = tenant.make_team("spread", SPREAD_POOL, Strategy.ROUND_ROBIN)
    result = run_wrk(
        base, method="POST", path=HANDOVER, key=tenant.api_key, seconds=seconds, team=team
    )
    counts = spread_counts(team, agents)
    spread = max(counts) - min(counts)
    report.add(
        f"round-robin spread, 16 clients, {SPREAD_POOL} agents",
        f"{spread} (min {min(counts)}, max {max(counts)}, {result.requests} requests)",
        "<= 1",
        spread <= 1,
    )


def spread_counts(team, agents) -> list[int]:
    """Sessions per agent of the team once the server has finished what wrk sent."""
    from inbox.models import InboxSession

    def counts():
        rows = Counter(
            InboxSession.objects.for_tenant(team.tenant_id)
            .filter(team=team)
            .values_list("assigned_agent_id", flat=True)
        )
        return [rows.get(agent.pk, 0) for agent in agents]

    previous = None
    for _ in range(50):  # requests wrk cut off may still be running on the server
        current = counts()
        if current == previous:
            return current
        previous = current
        time.sleep(0.2)
    return previous


# --- in process ----------------------------------------------------------------------


def latency(report: Report, requests: int) -> None:
    from django.test import Client

    tenant = Tenant("latency", agents=10)
    client = Client()
    hand, one = alternate(
        requests, lambda: post_handover(client, tenant), lambda: get_one_query(client, tenant)
    )
    report.add("in-process p50 one-query", f"{p50(one) * 1000:.2f} ms", "yardstick")
    report.add("in-process p50 handover", f"{p50(hand) * 1000:.2f} ms", "")
    r = ratio(p50(hand), p50(one))
    report.add("in-process p50 handover / one-query", f"{r:.2f}x", "<= 2x", r <= 2)
    building_share(report, tenant, client, requests)

    # The API key lookup: remembered (teams.api_key_cache) vs a SELECT every request.
    from teams import api_key_cache

    def whoami(remember: bool) -> float:
        if not remember:
            api_key_cache.clear()  # as before the cache: a SELECT of the key and tenant
        started = time.perf_counter()
        response = client.get("/api/v1/whoami", HTTP_X_API_KEY=tenant.api_key)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.content
        return elapsed

    cached, uncached = alternate(requests, lambda: whoami(True), lambda: whoami(False))
    report.add(
        "in-process p50 GET whoami, key remembered / looked up",
        f"{p50(cached) * 1000:.2f} / {p50(uncached) * 1000:.2f} ms",
        "(auth path)",
    )


def building_share(report: Report, tenant: Tenant, client, requests: int) -> None:
    """A handover's own CPU in process, and the part of it that builds the pick
    statement's rows (the new session with its first rows, then the pick's writes: six
    model instances turned into parameters), timed in place: in a tight loop the same
    calls cost a third as much, the request's other work having emptied the caches."""
    from inbox import services

    builders = ("_new_session", "_new_session_ctes")  # one after the other, not nested
    originals = {name: getattr(services, name) for name in builders}
    building = 0.0

    def timed(function):
        def run(*args, **kwargs):
            nonlocal building
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                building += time.thread_time() - started

        return run

    for name, function in originals.items():
        setattr(services, name, timed(function))
    try:
        started = time.thread_time()
        for _ in range(requests):
            post_handover(client, tenant)
        spent = time.thread_time() - started
    finally:
        for name, function in originals.items():
            setattr(services, name, function)
    report.add(
        "in-process handover thread CPU; of it building the pick's rows",
        f"{spent / requests * 1000:.2f} ms; {building / requests * 1000:.2f} ms"
        f" ({building / spent:.0%})",
        "(why)",
    )


def statements(report: Report) -> None:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    tenant = Tenant("statements", agents=10)
    client = Client()
    for _ in range(3):  # the pool's cursor is created by its first pick
        post_handover(client, tenant)
    counts = []
    for _ in range(5):
        with CaptureQueriesContext(connection) as captured:
            post_handover(client, tenant)
        sql = [q["sql"] for q in captured.captured_queries]
        # Django may not log the BEGIN of an atomic block; the database runs one. (A new
        # session's handover is one statement outside a transaction: no BEGIN at all.)
        begun = any(s.startswith(("BEGIN", "SAVEPOINT")) for s in sql)
        begins = 1 if "COMMIT" in sql and not begun else 0
        counts.append(len(sql) + begins)
    if SHOW_SQL:
        print("\n".join(f"    {s[:160]}" for s in sql))
    report.add(
        "statements per new-session handover (BEGIN/COMMIT included)",
        f"{max(counts)}",
        "<= 6",
        max(counts) <= 6,
    )


def analyze(*models) -> None:
    """Statistics for rows just bulk-loaded, as autovacuum gives a live database within a
    minute: without them PostgreSQL plans for the tables as they were before."""
    from django.db import connection

    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f'ANALYZE "{model._meta.db_table}"')


def compare_teams(
    report: Report, figure: str, client, tenant: Tenant, requests: int, *, base, other, limit=None
) -> None:
    """Handovers to `base` and to `other` in turn: the ratio of their p50 (other / base),
    against `limit` if the issue sets one."""
    first, second = alternate(
        requests,
        lambda: post_handover(client, tenant, base),
        lambda: post_handover(client, tenant, other),
    )
    r = ratio(p50(second), p50(first))
    report.add(
        figure,
        f"{r:.2f}x ({p50(second) * 1000:.1f} / {p50(first) * 1000:.1f} ms)",
        f"<= {limit}x" if limit else "(not in the issue)",
        r <= limit if limit else None,
    )


def teams(report: Report, requests: int) -> None:
    """Team of 2,000 vs team of 1, p50, for round robin and least busy."""
    from django.test import Client

    from teams.models import Strategy

    tenant = Tenant("teams", agents=1)
    client = Client()
    for strategy in (Strategy.ROUND_ROBIN, Strategy.LEAST_BUSY):
        small, _ = tenant.make_team(f"{strategy}-1", 1, strategy)
        big, _ = tenant.make_team(f"{strategy}-{BIG_TEAM}", BIG_TEAM, strategy)
        analyze(tenant.m.Membership, tenant.m.TeamMember, tenant.m.User)
        name = strategy.label.lower()
        figure = f"{name}: team of {BIG_TEAM:,} / team of 1, p50"
        compare_teams(report, figure, client, tenant, requests, base=small, other=big, limit=1.2)
    busy_team_among_idle_outsiders(report, tenant, client, requests)
    lone_agent_among_other_tenants(report, client, requests)


def busy_team_among_idle_outsiders(report: Report, tenant: Tenant, client, requests: int) -> None:
    """Least busy, a team of 2,000 whose members are all busier than 20,000 agents of the
    tenant outside it: the load index walk meets only outsiders, gives up after
    LOAD_WALK_MAX of them and sorts the team's members."""
    from django.db import connection

    from teams.models import Membership, Strategy

    small, _ = tenant.make_team("lb-busy-1", 1, Strategy.LEAST_BUSY)
    big, members = tenant.make_team(f"lb-busy-{BIG_TEAM}", BIG_TEAM, Strategy.LEAST_BUSY)
    tenant.make_agents(OUTSIDERS, "outsider")
    with connection.cursor() as cursor:
        cursor.execute(
            f'UPDATE "{Membership._meta.db_table}" SET open_session_count = 5'  # noqa: S608
            " WHERE id = ANY(%s::uuid[])",
            [[agent.pk for agent in members]],
        )
    analyze(tenant.m.Membership, tenant.m.TeamMember, tenant.m.User)
    figure = (
        f"least busy: team of {BIG_TEAM:,} busier than {OUTSIDERS:,} outsiders / team of 1, p50"
    )
    compare_teams(report, figure, client, tenant, requests, base=small, other=big)


def lone_agent_among_other_tenants(report: Report, client, requests: int) -> None:
    """Round robin over a tenant's only agent, so that every pick wraps round to the
    pool's first agent, while another tenant has 20,000 agents; against the same agent
    as a team of one. The pick is a prepared statement on a generic plan, made without
    knowing the tenant: it must still read the tenant's own pool."""
    from teams.models import Strategy

    lone = Tenant("lone", agents=0)
    team, _ = lone.make_team("lone-1", 1, Strategy.ROUND_ROBIN)
    Tenant("crowd", agents=0).make_agents(OUTSIDERS, "crowd")
    analyze(lone.m.Membership, lone.m.TeamMember, lone.m.User)
    as_team, as_tenant = alternate(
        requests, lambda: post_handover(client, lone, team), lambda: post_handover(client, lone)
    )
    r = ratio(p50(as_tenant), p50(as_team))
    report.add(
        f"round robin: a tenant's one agent, {OUTSIDERS:,} agents in another tenant"
        " / as a team of 1, p50",
        f"{r:.2f}x ({p50(as_tenant) * 1000:.1f} / {p50(as_team) * 1000:.1f} ms)",
        "(not in the issue)",
    )


def load(report: Report, requests: int) -> None:
    """Least busy with 100k open sessions on the pool's agents vs a pool with none."""
    from django.db import connection
    from django.test import Client

    from inbox.models import InboxSession
    from teams.models import Membership, Strategy

    tenant = Tenant("load", agents=1)
    client = Client()
    idle, _ = tenant.make_team("idle", 20, Strategy.LEAST_BUSY)
    busy, busy_agents = tenant.make_team("busy", 20, Strategy.LEAST_BUSY)
    post_handover(client, tenant, busy)  # a template open session of the busy pool
    template = InboxSession.objects.for_tenant(tenant.tenant).get(team=busy)
    agent_ids = "ARRAY[" + ",".join(f"'{a.pk}'::uuid" for a in busy_agents) + "]"
    copy_rows(
        InboxSession,
        template.pk,
        OPEN_SESSIONS - 1,
        {
            "contact_id": f"'seed-' || n || '-{tenant.run}'",
            "assigned_agent_id": f"({agent_ids})[1 + n %% {len(busy_agents)}]",
            "confirmation_message_id": "NULL",
        },
    )
    with connection.cursor() as cursor:  # the counters, as the handover keeps them
        cursor.execute(
            f'UPDATE "{Membership._meta.db_table}" m SET open_session_count = '  # noqa: S608
            f'(SELECT count(*) FROM "{InboxSession._meta.db_table}" s '
            "WHERE s.assigned_agent_id = m.id AND s.status = 'open') WHERE m.tenant_id = %s",
            [tenant.tenant.pk],
        )
    figure = f"least busy: {OPEN_SESSIONS // 1000}k open sessions / none, p50"
    compare_teams(report, figure, client, tenant, requests, base=idle, other=busy, limit=1.1)


def breach_sweep(report: Report, breaches: int, *, webhooks: bool, run_sweep=None) -> Tenant:
    """`breaches` leads past their claim deadline, in a tenant with two admins (each
    breach: two notices, two emails, an audit row; and an event, with `webhooks`)."""
    from django.utils import timezone

    from leads.models import Lead, LeadStatus, Notification
    from leads.services import sweep_sla_breaches
    from outbox.models import OutboundMessage
    from teams.models import Role
    from webhooks.models import WebhookEndpoint

    tenant = Tenant("sweep", agents=1)
    tenant.make_agents(2, "admin", role=Role.ADMIN)
    if webhooks:
        WebhookEndpoint.objects.for_tenant(tenant.tenant).create(
            url="https://crm.bench.invalid/hook", secret_encrypted="x"
        )
        type(tenant.tenant).objects.filter(pk=tenant.tenant.pk).update(has_active_webhooks=True)
    now = timezone.now()
    agent = tenant.agents[0]
    template = Lead.objects.for_tenant(tenant.tenant).create(
        name="Lead",
        status=LeadStatus.NEW,
        assigned_agent=agent,
        assigned_at=now,
        claim_deadline=now - timedelta(minutes=5),
    )
    copy_rows(Lead, template.pk, breaches - 1, {"name": "'Lead ' || n"})
    type(agent).all_tenants.filter(pk=agent.pk).update(current_lead_count=breaches)

    started = time.perf_counter()
    counts = (run_sweep or sweep_sla_breaches)(now=now)
    elapsed = time.perf_counter() - started
    notices = Notification.objects.for_tenant(tenant.tenant).count()
    messages = OutboundMessage.objects.for_tenant(tenant.tenant).count()
    if counts["claim"] != breaches or notices != 2 * breaches:
        raise RuntimeError(f"sweep recorded {counts}, {notices} notices, {messages} messages")
    hooks = ", webhook endpoint" if webhooks else ""
    report.add(
        f"SLA sweep, {breaches:,} breaches (2 admins{hooks}: {messages:,} outbox rows)",
        f"{elapsed:.2f} s ({breaches / elapsed:,.0f}/s)",
        "<= 3 s" if not webhooks else "(no goal)",
        elapsed <= 3 if not webhooks else None,
    )
    return tenant


def sweep(report: Report, breaches: int, idle_leads: int) -> None:
    """The SLA sweep with `breaches` due, without and with a webhook endpoint; then with
    nothing due over `idle_leads` open leads."""
    from django.db import connection
    from django.utils import timezone

    from leads.models import Lead, LeadStatus
    from leads.services import sweep_sla_breaches

    breach_sweep(report, breaches, webhooks=True)
    tenant = breach_sweep(report, breaches, webhooks=False)
    now = timezone.now()
    agent = tenant.agents[0]

    # Idle: open leads whose deadlines are all ahead (claim and contact), none due.
    Lead.objects.for_tenant(tenant.tenant).delete()
    later = now + timedelta(hours=1)
    template = Lead.objects.for_tenant(tenant.tenant).create(
        name="Lead",
        status=LeadStatus.NEW,
        assigned_agent=agent,
        assigned_at=now,
        claim_deadline=later,
    )
    copy_rows(
        Lead,
        template.pk,
        idle_leads - 1,
        {
            "name": "'Lead ' || n",
            "status": "CASE WHEN n %% 2 = 0 THEN 'new' ELSE 'claimed' END",
            "claim_deadline": "CASE WHEN n %% 2 = 0 THEN src.claim_deadline END",
            "claimed_at": f"CASE WHEN n %% 2 = 1 THEN '{now.isoformat()}'::timestamptz END",
            "contact_deadline": "CASE WHEN n %% 2 = 1 THEN src.claim_deadline END",
        },
    )
    with connection.cursor() as cursor:
        cursor.execute(f'VACUUM ANALYZE "{Lead._meta.db_table}"')
    timings = []
    for _ in range(25):
        started = time.perf_counter()
        counts = sweep_sla_breaches(now=now)
        timings.append(time.perf_counter() - started)
        assert counts == {"claim": 0, "contact": 0}, counts
    idle_ms = p50(timings[5:]) * 1000
    report.add(
        f"idle SLA sweep over {idle_leads // 1000}k open leads, p50",
        f"{idle_ms:.1f} ms",
        "<= 20 ms",
        idle_ms <= 20,
    )


def revoke(report: Report, base: str) -> None:
    """A key in use on every worker, revoked by `manage.py revoke_api_key` (another
    process): how long until the server refuses it on every request."""
    import requests

    from tests.e2e.processes import base_env

    tenant = Tenant("revoke", agents=1)
    url = f"{base}/api/v1/whoami"
    headers = {"X-API-Key": tenant.api_key, "Connection": "close"}
    for _ in range(50):  # a new connection each: both workers remember the key
        assert requests.get(url, headers=headers, timeout=5).status_code == 200
    subprocess.run(
        [sys.executable, "manage.py", "revoke_api_key", tenant.key.prefix],
        env=base_env(DJANGO_SETTINGS_MODULE=SETTINGS, DATABASE_URL=bench_url()),
        check=True,
        capture_output=True,
    )
    revoked_at = time.monotonic()
    refused_since, last_accepted = None, 0.0
    while time.monotonic() - revoked_at < 30:
        moment = time.monotonic()
        status = requests.get(url, headers=headers, timeout=5).status_code
        if status == 200:
            refused_since, last_accepted = None, moment - revoked_at
        elif status == 401:
            refused_since = refused_since if refused_since is not None else moment
            if moment - refused_since > 1.0:  # a second of nothing but refusals
                break
        time.sleep(0.02)
    report.add(
        "revoked key refused by every worker within",
        f"{last_accepted:.2f} s",
        "<= 5 s",
        last_accepted <= 5,
    )


# --- main ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_hot_path", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--show-sql", action="store_true", help="print a handover's statements")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="sections to run"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("wrk", "redis-server") if shutil.which(tool) is None]
    if missing and {"served", "revoke"} & set(args.only):
        sys.exit(
            f"Needs {' and '.join(missing)} on the PATH (Debian/Ubuntu: "
            f"apt-get install -y {' '.join(missing)})."
        )
    quick = args.quick
    global SHOW_SQL
    SHOW_SQL = args.show_sql
    seconds, rounds, requests = (3, 1, 60) if quick else (10, 3, 300)
    from tests.e2e.processes import processes

    report = Report()
    create_database()
    try:
        with processes() as procs:
            redis_url = start_redis(procs)
            import django.db

            print(
                f"Hot-path benchmark: database {DB_NAME}, {os.cpu_count()} CPUs, "
                f"Python {sys.version.split()[0]}, {'quick' if quick else 'full'} run, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            base = start_gunicorn(procs, redis_url) if {"served", "revoke"} & set(args.only) else ""
            steps = {
                "served": lambda: served(report, base, seconds, rounds),
                "latency": lambda: latency(report, requests),
                "statements": lambda: statements(report),
                "teams": lambda: teams(report, requests),
                "load": lambda: load(report, requests),
                "sweep": lambda: sweep(report, BREACHES, IDLE_LEADS),
                "revoke": lambda: revoke(report, base),
            }
            for name in SECTIONS:
                if name in args.only:
                    print(f"\n[{name}]", flush=True)
                    steps[name]()
            django.db.connections.close_all()
            procs.started[-1].lines.clear()  # gunicorn's access log is not worth printing
            for process in procs.started:
                process.lines[:] = process.lines[-5:]
    finally:
        with contextlib.suppress(Exception):
            import django.db

            django.db.connections.close_all()
        drop_database()
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)")
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
