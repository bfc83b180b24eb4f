"""Benchmark of POST /api/v1/handover, through the whole Django/DRF stack, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/handover_bench \\
        .venv/bin/python -m tests.benchmarks.bench_handover [--requests N] [--threads T]
        [--processes P] [--show-sql]

DATABASE_URL must point at a scratch database: the script migrates it, creates a tenant
of its own (with an API key, agents and teams), measures, and deletes the tenant and its
users again, even when interrupted. Not a pytest test (pytest collects only test_*.py).

What it measures (`sendHandoverMessage` is false throughout, so no task is queued):

a. sequential latency and throughput, round robin, team of 1 agent vs team of 200
   (requests alternate between the two, so drift in the database hits both alike);
b. concurrent throughput on one pool of agents with T threads, and how evenly the work
   was shared (min/max per agent), next to one thread. Threads share one interpreter, so
   their throughput is capped by the GIL (most of a handover is Python, not SQL): the
   same load is also run by P forked processes, each with its own connection, which is
   the shape of gunicorn workers. Round robin, then least busy for comparison; every run
   gets a fresh pool, so one run's load does not steer the next;
c. SQL statements per handover (django.test.utils.CaptureQueriesContext), with and
   without the BEGIN/COMMIT that Django logs too;
d. a handover that reuses the contact's open session vs one that creates a session.
"""

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field

URL = "/api/v1/handover"
TRANSACTION_STATEMENTS = {"BEGIN", "COMMIT", "ROLLBACK"}
BIG_TEAM = 200
CONCURRENT_POOL = 10
WARM_UP = 20


# --- measuring -----------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of `values` (not empty)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Run:
    label: str
    latencies: list[float] = field(default_factory=list)  # seconds
    wall: float = 0.0  # seconds, for throughput
    agents: Counter = field(default_factory=Counter)

    def ms(self, pct: float) -> float:
        return percentile(self.latencies, pct) * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


class Bench:
    """A throwaway tenant with an API key, agents and teams; `cleanup()` removes it all."""

    def __init__(self):
        from core.actor import Actor
        from teams.models import (
            AssignmentConfig,
            Membership,
            Strategy,
            Team,
            TeamMember,
            Tenant,
            User,
        )
        from teams.services import create_api_key

        self.run_id = uuid.uuid4().hex[:10]
        self.slug = f"bench-{self.run_id}"
        self.email_domain = f"{self.slug}.bench.invalid"
        self.tenant = Tenant.objects.create(name=f"Benchmark {self.run_id}", slug=self.slug)
        _, self.api_key = create_api_key(tenant=self.tenant, name="benchmark", actor=Actor.system())
        self._User, self._Membership, self._TeamMember = User, Membership, TeamMember
        self._Team, self._AssignmentConfig, self._Tenant = Team, AssignmentConfig, Tenant
        self.team_1 = self.make_team("rr-1", 1, Strategy.ROUND_ROBIN)
        self.team_200 = self.make_team(f"rr-{BIG_TEAM}", BIG_TEAM, Strategy.ROUND_ROBIN)
        self._contacts = 0
        self._lock = threading.Lock()

    @property
    def agent_count(self) -> int:
        return self._Membership.objects.for_tenant(self.tenant).count()

    def make_team(self, name: str, size: int, strategy: str):
        users = [
            self._User(email=f"{name}-{n}@{self.email_domain}", full_name=f"{name} agent {n}")
            for n in range(size)
        ]
        for user in users:
            user.set_unusable_password()
        self._User.objects.bulk_create(users)
        scoped = self._Membership.objects.for_tenant(self.tenant)
        agents = scoped.bulk_create([self._Membership(user=user) for user in users])
        team = self._Team.objects.for_tenant(self.tenant).create(name=name)
        self._AssignmentConfig.objects.for_tenant(self.tenant).create(team=team, strategy=strategy)
        self._TeamMember.objects.for_tenant(self.tenant).bulk_create(
            [self._TeamMember(team=team, membership=agent) for agent in agents]
        )
        return team

    def new_contact(self) -> str:
        with self._lock:
            self._contacts += 1
            return f"+49{self.run_id}{self._contacts:08d}"

    def cleanup(self) -> None:
        from django.db import transaction

        with transaction.atomic():
            self._Tenant.objects.filter(pk=self.tenant.pk).delete()
            self._User.objects.filter(email__endswith=f"@{self.email_domain}").delete()


def post(client, api_key: str, body: dict, expected: int) -> tuple[float, dict]:
    body = {"sendHandoverMessage": False, **body}
    started = time.perf_counter()
    response = client.post(
        URL, data=json.dumps(body), content_type="application/json", HTTP_X_API_KEY=api_key
    )
    elapsed = time.perf_counter() - started
    if response.status_code != expected:
        raise RuntimeError(
            f"POST {URL} {body} answered {response.status_code}, expected {expected}: "
            f"{response.content[:500]!r}"
        )
    return elapsed, response.json()


def new_session_body(bench: Bench, team) -> dict:
    return {"contactId": bench.new_contact(), "teamId": str(team.pk)}


# --- scenarios -----------------------------------------------------------------------


def sequential_team_sizes(bench: Bench, client, requests: int) -> tuple[Run, Run]:
    """(a) 1 agent vs 200 agents, requests alternating between the two teams."""
    small, big = Run("team of 1"), Run(f"team of {BIG_TEAM}")
    for _ in range(WARM_UP):
        for team in (bench.team_1, bench.team_200):
            post(client, bench.api_key, new_session_body(bench, team), 201)
    for _ in range(requests):
        for run, team in ((small, bench.team_1), (big, bench.team_200)):
            elapsed, body = post(client, bench.api_key, new_session_body(bench, team), 201)
            run.latencies.append(elapsed)
            run.agents[body["assignedAgent"]["id"]] += 1
    for run in (small, big):
        run.wall = sum(run.latencies)
    return small, big


def _post_share(api_key: str, warm_body: dict, bodies: list, start, take) -> tuple:
    """One client's share of a concurrent run: warm up, wait for the others, post."""
    from django.test import Client

    client = Client()
    latencies, agents = [], Counter()
    post(client, api_key, warm_body, 201)  # opens this client's database connection
    start.wait()
    while (body := take(bodies)) is not None:
        elapsed, answer = post(client, api_key, body, 201)
        latencies.append(elapsed)
        agents[answer["assignedAgent"]["id"]] += 1
    return latencies, agents


def _process_main(api_key, warm_body, bodies, start, results) -> None:
    from django.db import connections

    try:
        results.put(
            _post_share(api_key, warm_body, bodies, start, lambda b: b.pop() if b else None)
        )
    except BaseException as exc:
        start.abort()
        results.put(exc)
    finally:
        connections.close_all()


def concurrent(bench: Bench, strategy: str, requests: int, clients: int, processes: bool) -> Run:
    """(b) `requests` new sessions on a fresh pool, posted by `clients` threads or processes.

    Threads take the next request from one shared list; processes get equal shares.
    """
    from django.db import connections

    kind = "process" if processes else "thread"
    plural = {"thread": "threads", "process": "processes"}[kind] if clients > 1 else kind
    run = Run(f"{strategy.replace('_', ' ')}, {clients} {plural}")
    team = bench.make_team(f"{strategy}-{clients}-{kind}", CONCURRENT_POOL, strategy)
    bodies = [new_session_body(bench, team) for _ in range(requests)]
    warm = [new_session_body(bench, team) for _ in range(clients)]

    if processes:
        context = multiprocessing.get_context("fork")
        start, results = context.Barrier(clients + 1), context.Queue()
        connections.close_all()  # a forked child must not share the parent's connection
        shares = [bodies[n::clients] for n in range(clients)]
        workers = [
            context.Process(target=_process_main, args=(bench.api_key, w, share, start, results))
            for w, share in zip(warm, shares, strict=True)
        ]
    else:
        lock = threading.Lock()
        start, results = threading.Barrier(clients + 1), []
        shared = iter(bodies)

        def take(_):
            with lock:
                return next(shared, None)

        def thread_main(warm_body):
            try:
                results.append(_post_share(bench.api_key, warm_body, [], start, take))
            except BaseException as exc:
                start.abort()
                results.append(exc)
            finally:
                connections.close_all()

        workers = [threading.Thread(target=thread_main, args=(w,)) for w in warm]

    for worker in workers:
        worker.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    began = time.perf_counter()
    outcomes = [results.get(timeout=600) for _ in workers] if processes else None
    for worker in workers:
        worker.join()
    run.wall = time.perf_counter() - began
    for outcome in outcomes if processes else results:
        if isinstance(outcome, BaseException):
            raise outcome
        latencies, agents = outcome
        run.latencies.extend(latencies)
        run.agents.update(agents)
    return run


def queries_per_handover(bench: Bench, client, show_sql: bool) -> list[tuple[str, int, int]]:
    """(c) SQL statements of one handover, as the database sees them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    reused_contact = bench.new_contact()
    post(client, bench.api_key, {"contactId": reused_contact, "teamId": str(bench.team_1.pk)}, 201)
    # The first handover of a pool creates its round-robin cursor (2 statements, once).
    post(client, bench.api_key, {"contactId": bench.new_contact()}, 201)
    agents = bench.agent_count
    cases = [
        ("new session, team of 1", new_session_body(bench, bench.team_1), 201),
        (f"new session, team of {BIG_TEAM}", new_session_body(bench, bench.team_200), 201),
        (
            f"new session, no team (waterfall, {agents} members)",
            {"contactId": bench.new_contact()},
            201,
        ),
        (
            "reused open session",
            {"contactId": reused_contact, "teamId": str(bench.team_1.pk)},
            200,
        ),
    ]
    counts = []
    for label, body, expected in cases:
        with CaptureQueriesContext(connection) as captured:
            post(client, bench.api_key, body, expected)
        statements = [query["sql"] for query in captured.captured_queries]
        transaction_statements = [sql for sql in statements if sql in TRANSACTION_STATEMENTS]
        counts.append((label, len(statements), len(statements) - len(transaction_statements)))
        if show_sql:
            print(f"\n-- {label}: {len(captured.captured_queries)} statements")
            for query in captured.captured_queries:
                print(f"   {query['sql'][:200]}")
    return counts


def reused_vs_new(bench: Bench, client, requests: int) -> tuple[Run, Run]:
    """(d) the same contact again (open session, already assigned) vs a new contact."""
    reused, new = Run("reused open session (200)"), Run("new session (201)")
    contact = bench.new_contact()
    team = str(bench.team_1.pk)
    post(client, bench.api_key, {"contactId": contact, "teamId": team}, 201)
    for _ in range(WARM_UP):
        post(client, bench.api_key, {"contactId": contact, "teamId": team}, 200)
    for _ in range(requests):
        elapsed, _ = post(client, bench.api_key, {"contactId": contact, "teamId": team}, 200)
        reused.latencies.append(elapsed)
        elapsed, _ = post(client, bench.api_key, new_session_body(bench, bench.team_1), 201)
        new.latencies.append(elapsed)
    for run in (reused, new):
        run.wall = sum(run.latencies)
    return reused, new


# --- printing ------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(cells):
        padded = [
            f" {c!s:<{w}} " if i == 0 else f" {c!s:>{w}} "
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "|" + "|".join(padded) + "|"

    return "\n".join([line, fmt(headers), line, *(fmt(r) for r in rows), line])


LATENCY_HEADERS = ["scenario", "requests", "p50 ms", "p95 ms", "p99 ms", "mean ms", "req/s"]


def latency_row(run: Run) -> list[str]:
    return [
        run.label,
        str(len(run.latencies)),
        f"{run.ms(50):.2f}",
        f"{run.ms(95):.2f}",
        f"{run.ms(99):.2f}",
        f"{statistics.fmean(run.latencies) * 1000:.2f}",
        f"{run.throughput:.0f}",
    ]


def fairness(run: Run, pool: int = CONCURRENT_POOL) -> str:
    counts = list(run.agents.values()) + [0] * (pool - len(run.agents))
    return f"{min(counts)}/{max(counts)} (ideal {len(run.latencies) / pool:g})"


# --- main ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_handover", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=500, help="per scenario (default 500)")
    parser.add_argument("--threads", type=int, default=8, help="for (b) (default 8)")
    parser.add_argument(
        "--processes", type=int, default=None, help="for (b), 0 to skip (default: as --threads)"
    )
    parser.add_argument("--show-sql", action="store_true", help="print the statements of (c)")
    args = parser.parse_args(argv)
    if args.processes is None:
        args.processes = args.threads
    if args.requests < 1 or args.threads < 1 or args.processes < 0:
        parser.error("--requests and --threads must be at least 1, --processes at least 0")
    return args


def setup_django() -> None:
    if not os.environ.get("DATABASE_URL"):
        sys.exit(
            "Set DATABASE_URL to a scratch PostgreSQL database, e.g. "
            "postgres://postgres@127.0.0.1:5432/handover_bench (it is migrated, and a "
            "throwaway tenant is created in it and deleted afterwards)."
        )
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    # Django's test Client runs the middleware; whitenoise warns once about STATIC_ROOT.
    warnings.filterwarnings("ignore", "No directory at", UserWarning)
    django.setup()
    from django.conf import settings
    from django.test.utils import setup_test_environment

    if not settings.DATABASE_IS_POSTGRES:
        sys.exit("The benchmark needs PostgreSQL: DATABASE_URL=postgres://…")
    # DEBUG off (no query log kept on every request); "testserver" allowed for the Client.
    setup_test_environment(debug=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection, connections
    from django.test import Client

    from teams.models import Strategy

    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (pg_version,) = cursor.fetchone()
    db = settings.DATABASES["default"]
    print(
        f"Handover benchmark: PostgreSQL {pg_version} at {db['HOST']}:{db['PORT']}/{db['NAME']}, "
        f"CONN_MAX_AGE={db['CONN_MAX_AGE']}, Python {sys.version.split()[0]}, "
        f"{args.requests} requests per scenario, {args.threads} threads, "
        f"{args.processes} processes, {os.cpu_count()} CPUs"
    )

    started = time.perf_counter()
    bench = Bench()
    print(
        f"Tenant {bench.slug}: teams of 1 and {BIG_TEAM} agents, set up in "
        f"{time.perf_counter() - started:.1f}s\n"
    )
    client = Client()
    try:
        small, big = sequential_team_sizes(bench, client, args.requests)
        print("(a) Sequential, round robin, by team size (requests alternate)")
        print(table(LATENCY_HEADERS, [latency_row(small), latency_row(big)]))
        print(
            f"    p50 ratio {BIG_TEAM}/1 = {big.ms(50) / small.ms(50):.2f}, "
            f"p95 ratio = {big.ms(95) / small.ms(95):.2f}, "
            f"throughput ratio = {big.throughput / small.throughput:.2f}; "
            f"picks per agent min/max: {fairness(big, BIG_TEAM)}\n"
        )

        runs = [concurrent(bench, Strategy.ROUND_ROBIN, args.requests, 1, processes=False)]
        for strategy in (Strategy.ROUND_ROBIN, Strategy.LEAST_BUSY):
            runs.append(concurrent(bench, strategy, args.requests, args.threads, processes=False))
            if args.processes:
                runs.append(
                    concurrent(bench, strategy, args.requests, args.processes, processes=True)
                )
        print(
            f"(b) Concurrent, a fresh pool of {CONCURRENT_POOL} agents per run, "
            "wall-clock throughput"
        )
        rows = [
            [*latency_row(run), f"{run.throughput / runs[0].throughput:.2f}x", fairness(run)]
            for run in runs
        ]
        print(table([*LATENCY_HEADERS, "vs 1 thread", "per agent min/max"], rows))
        print()

        counts = queries_per_handover(bench, client, args.show_sql)
        print("(c) SQL statements per handover")
        print(
            table(
                ["case", "all statements", "without BEGIN/COMMIT"],
                [[label, str(total), str(sql)] for label, total, sql in counts],
            )
        )
        print()

        reused, new = reused_vs_new(bench, client, args.requests)
        print("(d) Reused open session vs new session (team of 1, requests alternate)")
        print(table(LATENCY_HEADERS, [latency_row(reused), latency_row(new)]))
        print(
            f"    p50 ratio reused/new = {reused.ms(50) / new.ms(50):.2f}, "
            f"p95 ratio = {reused.ms(95) / new.ms(95):.2f}"
        )
    finally:
        started = time.perf_counter()
        bench.cleanup()
        print(f"\nCleaned up tenant {bench.slug} in {time.perf_counter() - started:.1f}s.")
        connections.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
