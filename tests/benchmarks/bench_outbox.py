"""Delivery throughput of `manage.py outbox_worker` against a no-op Celery task, measured
in the same run, on PostgreSQL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m tests.benchmarks.bench_outbox [--messages N] [--rounds R]
        [--threads T] [--concurrency C] [--timeout S] [--skip-webhooks]

DATABASE_URL names the PostgreSQL server (and a database there to connect to for
CREATE DATABASE): the script creates a database of its own (outbox_bench_<random>),
migrates it, measures, and drops it again, even when interrupted. It also starts, and
stops, a redis-server of its own on a free port (the Celery broker), a local CRM, a local
webhook receiver and the two workers. Not a pytest test (pytest collects only test_*.py).

a. Celery baseline: a real `celery -A config worker` (prefork, --concurrency C, default
   2 as in the Procfile; a queue of its own; --loglevel WARNING, so it logs nothing per
   task) runs N tasks that only note when they ran (one RPUSH to Redis). Timed from the
   first publish until the last task has run.
b. Outbox delivery: N WhatsApp messages (outbox.services.build_message/queue_messages,
   one transaction, one tenant with an active CRM integration) to a local CRM that
   answers 200 at once (a ThreadingHTTPServer, HTTP/1.1 keep-alive, in a process of its
   own), sent by `manage.py outbox_worker` processes (--workers, default as many as
   Celery gets; T sending threads each, default
   OUTBOX_WORKER_THREADS). Timed from the commit until the last `finished_at`.
c. Webhook delivery (unless --skip-webhooks): N events (`webhooks.events.emit`, one
   transaction, `lead.claimed`, each about a subject of its own, so that no ordering key
   holds one back) for a second tenant with one webhook endpoint
   (`webhooks.services.create_endpoint`) at a local receiver (the same kind of server as
   the CRM, in a process of its own, counting requests), sent, signed, by the same
   `outbox_worker`. Timed from the commit until the last `finished_at`; every message of
   channel "webhook" must be `sent`, with one request and one successful
   `WebhookAttempt` per event (no duplicates).

Both workers are started and warmed up first; then the R rounds run a, b, c in turn, so
that a change in the machine's load hits all alike. Latency is per message, from its
publish (a) or from the commit (b, c) until it ran or was finished. CPU seconds are read
from /proc: the worker with its children, and the other side of each run (the Redis
broker for a; the PostgreSQL backends serving the bench database for b and c). The
"requests" column is what the local server received (CRM for b, receiver for c).
"""

import argparse
import contextlib
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from celery import shared_task

from tests.benchmarks.bench_handover import percentile, table
from tests.benchmarks.proc_cpu import cpu_by_pid, process_tree

REPO = Path(__file__).resolve().parents[2]
BENCH_MODULE = "tests.benchmarks.bench_outbox"  # the Celery worker imports it (--include)
NOOP_TASK = f"{BENCH_MODULE}.noop"
DATABASE_PREFIX = "outbox_bench_"
MEASURED, WARM_UP = "bench.measured", "bench.warm-up"
CRM_ANSWER = b'{"messaging_product": "whatsapp", "messages": [{"id": "wamid.bench"}]}'
POLL = 0.02  # seconds between checks whether a run is done
GOAL = 0.5

# --- the Celery side (the worker imports this module: --include) ------------------------

_task_redis = None


@shared_task(name=NOOP_TASK, ignore_result=True)
def noop(key: str, index: int) -> None:
    """The baseline's task: does nothing but note when it ran."""
    global _task_redis
    if _task_redis is None:
        import redis

        _task_redis = redis.Redis.from_url(os.environ["REDIS_URL"])
    _task_redis.rpush(key, f"{index} {time.time()!r}")


# --- measuring -----------------------------------------------------------------------


@dataclass
class Run:
    label: str
    started: float = 0.0  # time.time() of the first publish / of the commit
    done: list[float] = field(default_factory=list)  # time.time() each one finished
    latencies: list[float] = field(default_factory=list)  # seconds
    worker_cpu: float | None = None  # CPU seconds of the worker and its children
    other_cpu: float | None = None  # CPU seconds of the broker / the database backends
    requests: int | None = None  # HTTP requests the local CRM / receiver got

    @property
    def seconds(self) -> float:
        return max(self.done) - self.started


class CpuMeter:
    """CPU seconds a set of processes (`pids()`, asked at start and end) used in between.
    A process that ended meanwhile is not counted; `None` without /proc."""

    def __init__(self, pids):
        self.pids = pids
        self.before = cpu_by_pid(pids()) if os.path.isdir("/proc/self") else None

    def used(self) -> float | None:
        if self.before is None:
            return None
        after = cpu_by_pid(self.pids())
        return sum(cpu - self.before.get(pid, 0.0) for pid, cpu in after.items())


# --- helpers: processes, ports, the database -------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def log_tail(path: Path | None, lines: int = 30) -> str:
    with contextlib.suppress(OSError, AttributeError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def wait_for(condition, *, timeout: float, what: str, process=None, log=None, progress=None):
    end = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{what}: the worker exited ({process.returncode}):\n{log_tail(log)}"
            )
        if time.monotonic() > end:
            done = f" ({progress()})" if progress else ""
            raise RuntimeError(f"{what}: not done within {timeout:g}s{done}:\n{log_tail(log)}")
        time.sleep(POLL)


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    import redis

    port = free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port),
               "--save", "", "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        with contextlib.suppress(redis.ConnectionError):
            client.ping()
            client.close()
            return process, url
        if process.poll() is not None:
            break
        time.sleep(0.025)
    stop_process(process)
    raise RuntimeError("Could not start redis-server (is it installed?).")


class _CrmHandler(BaseHTTPRequestHandler):
    """The CRM: 200 and a Cloud-API-shaped answer at once, keep-alive, no logging."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # status line, headers and body leave in one write
    counter = None

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(CRM_ANSWER)))
        self.end_headers()
        self.wfile.write(CRM_ANSWER)
        with self.counter.get_lock():
            self.counter.value += 1

    def log_message(self, format, *args):
        pass


def _serve_crm(server: ThreadingHTTPServer, counter) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _CrmHandler.counter = counter
    server.serve_forever()


def start_crm():
    """The CRM in a forked process (its own GIL): (process, base URL, request counter).
    Answers 200 to a POST on any path, so a second one serves as the webhook receiver."""
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CrmHandler)
    server.daemon_threads = True
    process = context.Process(target=_serve_crm, args=(server, counter), daemon=True)
    process.start()
    server.server_close()  # the child serves; the parent keeps no copy of the socket
    return process, f"http://127.0.0.1:{server.server_address[1]}/", counter


def database_urls(server_url: str, name: str) -> tuple[str, str]:
    """(libpq URL of the database in DATABASE_URL, DATABASE_URL of database `name`)."""
    parts = urlsplit(server_url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql", "psql"}:
        sys.exit("The benchmark needs PostgreSQL: DATABASE_URL=postgres://…")
    path = parts.path if parts.path not in {"", "/"} else "/postgres"
    maintenance = urlunsplit(parts._replace(scheme="postgresql", path=path))
    return maintenance, urlunsplit(parts._replace(path=f"/{name}"))


def create_database(maintenance_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(maintenance_url: str, name: str) -> None:
    import psycopg

    assert name.startswith(DATABASE_PREFIX)  # only ever the database this run created
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_backends() -> list[int]:
    """Pids of the PostgreSQL backends serving the bench database, but for ours."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]


# --- (a) Celery baseline ---------------------------------------------------------------


class CeleryBaseline:
    def __init__(self, args, env: dict, workdir: Path, redis_server: subprocess.Popen):
        import redis

        from config.celery import app

        self.args, self.app, self.redis_server = args, app, redis_server
        self.queue = f"bench-outbox-{uuid.uuid4().hex[:10]}"
        self.log = workdir / "celery.log"
        self.client = redis.Redis.from_url(env["REDIS_URL"])
        self.rounds = 0
        self.publish_seconds: list[float] = []
        command = [sys.executable, "-m", "celery", "-A", "config", "worker",
                   "--include", BENCH_MODULE, "--queues", self.queue,
                   "--hostname", f"{self.queue}@%h", "--concurrency", str(args.concurrency),
                   "--loglevel", "WARNING"]  # fmt: skip
        self.worker = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def label(self) -> str:
        return f"Celery no-op task, prefork concurrency {self.args.concurrency}"

    def _batch(self, key: str, count: int, timeout: float) -> list[float]:
        """Publish `count` tasks and wait for them; when each was published."""
        published = []
        with self.app.producer_or_acquire() as producer:
            for index in range(count):
                published.append(time.time())
                self.app.send_task(
                    NOOP_TASK, args=[key, index], queue=self.queue, producer=producer
                )
        self.publish_seconds.append(time.time() - published[0])
        wait_for(
            lambda: self.client.llen(key) >= count,
            timeout=timeout,
            what="Celery run",
            process=self.worker,
            log=self.log,
            progress=lambda: f"{self.client.llen(key)} of {count} tasks ran",
        )
        return published

    def warm_up(self) -> None:
        self._batch(f"{self.queue}:warm-up", 4 * self.args.concurrency, timeout=60)
        self.publish_seconds.clear()

    def run(self) -> Run:
        self.rounds += 1
        key = f"{self.queue}:round-{self.rounds}"
        worker_cpu = CpuMeter(lambda: process_tree(self.worker.pid))
        broker_cpu = CpuMeter(lambda: [self.redis_server.pid])
        published = self._batch(key, self.args.messages, self.args.timeout)
        run = Run(self.label(), started=published[0])
        run.worker_cpu, run.other_cpu = worker_cpu.used(), broker_cpu.used()
        for entry in self.client.lrange(key, 0, -1):
            index, finished = entry.decode().split()
            run.done.append(float(finished))
            run.latencies.append(float(finished) - published[int(index)])
        if len(run.done) != self.args.messages:
            raise RuntimeError(f"Celery ran {len(run.done)} tasks, {self.args.messages} sent")
        return run

    def stop(self) -> None:
        stop_process(self.worker)
        self.client.close()


# --- (b) outbox delivery ---------------------------------------------------------------


class OutboxDelivery:
    def __init__(self, args, env: dict, workdir: Path, crm_url: str, crm_counter):
        from teams.models import Tenant
        from tests.inbox.factories import CrmIntegrationFactory

        self.args, self.crm_counter = args, crm_counter
        run_id = uuid.uuid4().hex[:10]
        self.tenant = Tenant.objects.create(name=f"Outbox bench {run_id}", slug=f"b-{run_id}")
        CrmIntegrationFactory(tenant=self.tenant, name="Benchmark CRM", api_url=crm_url)
        self.log = workdir / "outbox.log"
        self.crm_requests = 0
        command = [sys.executable, "manage.py", "outbox_worker"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        # As many worker processes as Celery gets (--workers, default --concurrency): the
        # same number of CPUs' worth of Python on each side.
        self.workers = [
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=(self.log if n == 0 else workdir / f"outbox-{n}.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            for n in range(args.workers or args.concurrency)
        ]
        self.worker = self.workers[0]

    def worker_pids(self) -> list[int]:
        return [pid for worker in self.workers for pid in process_tree(worker.pid)]

    @property
    def threads(self) -> str:
        started = re.search(r"Outbox worker started: (\d+) sending threads", log_tail(self.log))
        return started.group(1) if started else "?"

    def label(self) -> str:
        return f"{len(self.workers)} outbox_worker x {self.threads} threads, WhatsApp to local CRM"

    def _queue(self, kind: str, count: int) -> tuple[list, float]:
        """`count` messages in one transaction, as a handover queues its confirmation;
        (their ids, time.time() right after the commit)."""
        from django.db import transaction

        from outbox.services import build_message, queue_messages

        with transaction.atomic():
            messages = [
                build_message(
                    tenant=self.tenant,
                    channel="whatsapp",
                    kind=kind,
                    target=f"49151{index:07d}",
                    payload={"session_id": str(uuid.uuid4()), "text": "Connecting you..."},
                )
                for index in range(count)
            ]
            queue_messages(messages)
        return [message.pk for message in messages], time.time()

    def _wait(self, ids, timeout: float, tenant=None) -> None:
        from outbox.models import MessageStatus, OutboundMessage

        # Asked every POLL seconds while the workers run: it must cost the database
        # little. The tenant's earlier messages are all finished, so its open rows are
        # this run's (read through the partial indexes of pending and sending rows);
        # `ids IN (…a thousand…)` cost the server about a millisecond each time.
        def unfinished():
            rows = OutboundMessage.all_tenants.filter(tenant=tenant or self.tenant)
            return rows.filter(status__in=[MessageStatus.PENDING, MessageStatus.SENDING]).count()

        wait_for(
            lambda: unfinished() == 0,
            timeout=timeout,
            what="Outbox run",
            process=self.worker,
            log=self.log,
            progress=lambda: f"{len(ids) - unfinished()} of {len(ids)} messages finished",
        )

    def warm_up(self) -> None:
        ids, _ = self._queue(WARM_UP, 20)
        self._wait(ids, timeout=60)

    def run(self) -> Run:
        from django.db.models import Count

        from outbox.models import MessageStatus, OutboundMessage

        requests_before = self.crm_counter.value
        worker_cpu = CpuMeter(self.worker_pids)
        database_cpu = CpuMeter(database_backends)
        ids, committed = self._queue(MEASURED, self.args.messages)
        self._wait(ids, self.args.timeout)
        run = Run(self.label(), started=committed)
        run.worker_cpu, run.other_cpu = worker_cpu.used(), database_cpu.used()
        run.requests = self.crm_counter.value - requests_before
        self.crm_requests += run.requests

        rows = OutboundMessage.all_tenants.filter(pk__in=ids)
        statuses = dict(rows.values_list("status").annotate(n=Count("pk")))
        if statuses != {MessageStatus.SENT: len(ids)}:
            errors = rows.exclude(status=MessageStatus.SENT).values_list("last_error", flat=True)
            raise RuntimeError(f"Outbox run ended with {statuses}; e.g. {list(errors[:3])}")
        for finished_at in rows.values_list("finished_at", flat=True):
            run.done.append(finished_at.timestamp())
            run.latencies.append(finished_at.timestamp() - committed)
        return run

    def stop(self) -> None:
        for worker in self.workers:
            stop_process(worker)


# --- (c) webhook delivery --------------------------------------------------------------


class WebhookDelivery:
    """Webhook events of a tenant with one endpoint, sent by the outbox worker of b."""

    def __init__(self, args, outbox: OutboxDelivery, receiver_url: str, receiver_counter):
        from core.actor import Actor
        from core.crypto import decrypt_secret
        from teams.models import Tenant
        from webhooks.services import create_endpoint

        self.args, self.outbox, self.receiver_counter = args, outbox, receiver_counter
        run_id = uuid.uuid4().hex[:10]
        self.tenant = Tenant.objects.create(name=f"Webhook bench {run_id}", slug=f"w-{run_id}")
        self.endpoint, secret = create_endpoint(
            tenant=self.tenant,
            actor=Actor.system(),
            url=f"{receiver_url}webhooks/bench",
            description="Benchmark receiver",
        )
        # The worker decrypts with the CRM_ENCRYPTION_KEYS / SECRET_KEY that setup_django
        # passed on; a mismatch would fail the warm-up ("cannot be decrypted").
        assert decrypt_secret(self.endpoint.secret_encrypted) == secret
        self.requests = 0
        self.duplicates = 0  # requests beyond one per event, over all measured runs

    def label(self) -> str:
        return (
            f"{len(self.outbox.workers)} outbox_worker x {self.outbox.threads} threads, "
            "webhooks to local receiver"
        )

    def _queue(self, count: int) -> tuple[list, float]:
        """`count` events in one transaction, each about a subject of its own; (the ids
        of their outbox messages, time.time() right after the commit)."""
        from django.db import transaction

        from outbox.models import OutboundMessage
        from webhooks.events import LEAD_CLAIMED, Event, emit

        subjects = [str(uuid.uuid4()) for _ in range(count)]
        with transaction.atomic():
            queued = emit(
                [
                    Event(
                        tenant_id=self.tenant.pk,
                        type=LEAD_CLAIMED,
                        data={"leadId": subject, "agentId": "bench-agent", "index": index},
                        subject_id=subject,
                    )
                    for index, subject in enumerate(subjects)
                ]
            )
            keys = [f"{self.endpoint.pk}:{subject}" for subject in subjects]
            ids = list(
                OutboundMessage.all_tenants.filter(
                    tenant=self.tenant, channel="webhook", ordering_key__in=keys
                ).values_list("pk", flat=True)
            )
        committed = time.time()
        if queued != count or len(ids) != count:
            raise RuntimeError(f"{count} events queued {queued} messages ({len(ids)} found)")
        return ids, committed

    def _check(self, ids, what: str) -> None:
        """Every message sent, with exactly one successful attempt, each its own webhook-id."""
        from django.db.models import Count

        from outbox.models import MessageStatus, OutboundMessage
        from webhooks.models import WebhookAttempt

        rows = OutboundMessage.all_tenants.filter(pk__in=ids)
        statuses = dict(rows.values_list("status").annotate(n=Count("pk")))
        if statuses != {MessageStatus.SENT: len(ids)}:
            errors = rows.exclude(status=MessageStatus.SENT).values_list("last_error", flat=True)
            raise RuntimeError(f"{what} ended with {statuses}; e.g. {list(errors[:3])}")
        attempts = WebhookAttempt.all_tenants.filter(message_id__in=ids)
        succeeded = attempts.filter(succeeded=True)
        distinct = succeeded.values("webhook_id").distinct().count()
        if attempts.count() != len(ids) or succeeded.count() != len(ids) or distinct != len(ids):
            raise RuntimeError(
                f"{what}: {attempts.count()} attempts, {succeeded.count()} succeeded, "
                f"{distinct} webhook-ids for {len(ids)} events"
            )

    def warm_up(self) -> None:
        ids, _ = self._queue(20)
        self.outbox._wait(ids, timeout=60, tenant=self.tenant)
        self._check(ids, "Webhook warm-up")

    def run(self) -> Run:
        from outbox.models import OutboundMessage

        requests_before = self.receiver_counter.value
        worker_cpu = CpuMeter(self.outbox.worker_pids)
        database_cpu = CpuMeter(database_backends)
        ids, committed = self._queue(self.args.messages)
        self.outbox._wait(ids, self.args.timeout, tenant=self.tenant)
        run = Run(self.label(), started=committed)
        run.worker_cpu, run.other_cpu = worker_cpu.used(), database_cpu.used()
        # A request is counted after its answer is written: let the last ones land.
        wait_for(
            lambda: self.receiver_counter.value - requests_before >= len(ids),
            timeout=5,
            what="Webhook receiver count",
            progress=lambda: f"{self.receiver_counter.value - requests_before} requests",
        )
        run.requests = self.receiver_counter.value - requests_before
        self.requests += run.requests
        self.duplicates += max(0, run.requests - len(ids))
        self._check(ids, "Webhook run")
        rows = OutboundMessage.all_tenants.filter(pk__in=ids)
        for finished_at in rows.values_list("finished_at", flat=True):
            run.done.append(finished_at.timestamp())
            run.latencies.append(finished_at.timestamp() - committed)
        return run


# --- printing ------------------------------------------------------------------------

HEADERS = ["run", "messages", "requests", "seconds", "msg/s", "p50 ms", "p95 ms",
           "mean ms", "worker CPU s", "Redis/PG CPU s", "vs Celery"]  # fmt: skip


def row(label: str, runs: list[Run], baseline: float) -> list[str]:
    count = sum(len(run.done) for run in runs)
    seconds = sum(run.seconds for run in runs)
    latencies = [latency for run in runs for latency in run.latencies]
    worker_cpu = [run.worker_cpu for run in runs]
    other_cpu = [run.other_cpu for run in runs]
    requests = [run.requests for run in runs]

    def cpu(values):
        return "n/a" if None in values else f"{sum(values):.2f}"

    return [
        label,
        str(count),
        "-" if None in requests else str(sum(requests)),
        f"{seconds:.2f}",
        f"{count / seconds:.0f}",
        f"{percentile(latencies, 50) * 1000:.0f}",
        f"{percentile(latencies, 95) * 1000:.0f}",
        f"{statistics.fmean(latencies) * 1000:.0f}",
        cpu(worker_cpu),
        cpu(other_cpu),
        f"{count / seconds / baseline:.2f}x",
    ]


def throughput(runs: list[Run]) -> float:
    return sum(len(run.done) for run in runs) / sum(run.seconds for run in runs)


# --- main ----------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.bench_outbox", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--messages", type=int, default=1000, help="per run (default 1000)")
    parser.add_argument("--rounds", type=int, default=1, help="a, b, a, b… (default 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="outbox worker (default OUTBOX_WORKER_THREADS)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=2, help="Celery worker (default 2, as the Procfile)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="outbox_worker processes (default: as many as --concurrency)",
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="per run (default 90 s)")
    parser.add_argument(
        "--skip-webhooks", action="store_true", help="no webhook run (c), only a and b"
    )
    args = parser.parse_args(argv)
    if min(args.messages, args.rounds, args.concurrency, args.threads or 1) < 1:
        parser.error("--messages, --rounds, --threads and --concurrency must be at least 1")
    return args


def setup_django(bench_url: str, redis_url: str) -> dict:
    """Point this process at the bench database and Redis; the workers' environment."""
    env = {
        **os.environ,
        "DATABASE_URL": bench_url,
        "REDIS_URL": redis_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CRM_ALLOW_HTTP": "1",
        "CRM_ALLOW_PRIVATE_NETWORKS": "1",
        "OUTBOUND_ALLOW_HTTP": "1",
        "OUTBOUND_ALLOW_PRIVATE_NETWORKS": "1",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    if not settings.DATABASE_IS_POSTGRES:
        sys.exit("The benchmark needs PostgreSQL: DATABASE_URL=postgres://…")
    # The worker must decrypt the webhook secret this process encrypts (core/crypto.py):
    # the same CRM_ENCRYPTION_KEYS, or none and the same SECRET_KEY, whatever .env says.
    env["SECRET_KEY"] = settings.SECRET_KEY
    env["CRM_ENCRYPTION_KEYS"] = ",".join(settings.CRM_ENCRYPTION_KEYS or [])
    call_command("migrate", verbosity=0, interactive=False)
    return env


def measure(args, env: dict, workdir: Path, redis_server, crm, receiver) -> None:
    """`crm` and `receiver`: (base URL, request counter); receiver None: no webhook run."""
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        (pg_version,) = cursor.fetchone()
    db = settings.DATABASES["default"]
    load = "/".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"Outbox benchmark: PostgreSQL {pg_version} at {db['HOST']}:{db['PORT']}/{db['NAME']}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs (load average {load}), "
        f"{args.messages} messages per run, {args.rounds} round(s)"
        + ("" if receiver else ", no webhook run")
    )

    celery = outbox = webhooks = None
    try:
        celery = CeleryBaseline(args, env, workdir, redis_server)
        outbox = OutboxDelivery(args, env, workdir, *crm)
        if receiver:
            webhooks = WebhookDelivery(args, outbox, *receiver)
        celery.warm_up()
        outbox.warm_up()
        if webhooks:
            webhooks.warm_up()
        celery_runs, outbox_runs, webhook_runs = [], [], []
        for _ in range(args.rounds):
            celery_runs.append(celery.run())
            outbox_runs.append(outbox.run())
            if webhooks:
                webhook_runs.append(webhooks.run())
        # Read before the workers stop (the outbox worker's log gives its thread count).
        celery_label, outbox_label = celery.label(), outbox.label()
        webhook_label = webhooks.label() if webhooks else ""
        publish = statistics.fmean(celery.publish_seconds)
    finally:
        for worker in (celery, outbox):
            if worker is not None:
                worker.stop()

    baseline = throughput(celery_runs)
    rows = [row(celery_label, celery_runs, baseline), row(outbox_label, outbox_runs, baseline)]
    if webhooks:
        rows.append(row(webhook_label, webhook_runs, baseline))
    if args.rounds > 1:
        for number in range(args.rounds):
            rows.append(row(f"  round {number + 1}: Celery", [celery_runs[number]], baseline))
            rows.append(row(f"  round {number + 1}: outbox", [outbox_runs[number]], baseline))
            if webhooks:
                rows.append(
                    row(f"  round {number + 1}: webhooks", [webhook_runs[number]], baseline)
                )
    total = args.messages * args.rounds
    webhook_note = (
        f"Webhooks: one endpoint, {webhooks.requests} receiver requests for {total} events "
        f"({webhooks.duplicates} duplicates), each `sent` with one successful attempt. "
        if webhooks
        else ""
    )
    print(
        f"outbox_worker: {outbox.threads} sending threads, OUTBOX_ENDPOINT_CONCURRENCY="
        f"{settings.OUTBOX_ENDPOINT_CONCURRENCY} (one tenant: one endpoint), poll "
        f"{settings.OUTBOX_POLL_SECONDS:g} s, {outbox.crm_requests} CRM requests for "
        f"{total} messages. {webhook_note}Celery: prefork, concurrency "
        f"{args.concurrency}, publishing {args.messages} tasks took {publish:.2f} s. "
        f"CPUs: {os.cpu_count()}.\n"
    )
    print(table(HEADERS, rows))
    ratio = throughput(outbox_runs) / baseline
    webhook_ratio = (
        f"; webhooks/baseline = {throughput(webhook_runs) / baseline:.2f}x" if webhooks else ""
    )
    outbox_runs_named = "outbox and webhooks" if webhooks else "outbox"
    print(
        f"    delivery/baseline throughput = {ratio:.2f}x "
        f"({'meets' if ratio >= GOAL else 'misses'} the {GOAL}x goal){webhook_ratio}. "
        f"Latency: Celery from each publish, {outbox_runs_named} from the commit. Redis/PG "
        "CPU: the Redis broker (Celery), the PostgreSQL backends of the bench database "
        f"({outbox_runs_named})."
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        sys.exit(
            "Set DATABASE_URL to a PostgreSQL server, e.g. "
            "postgres://postgres@127.0.0.1:5432/postgres (the benchmark creates a database "
            "of its own there and drops it afterwards)."
        )
    name = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:10]}"
    maintenance_url, bench_url = database_urls(server_url, name)

    # Forked before anything opens a connection or starts a thread.
    crm, crm_url, crm_counter = start_crm()
    receiver = receiver_url = receiver_counter = None
    if not args.skip_webhooks:
        receiver, receiver_url, receiver_counter = start_crm()
    redis_server, created = None, False
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        try:
            redis_server, redis_url = start_redis(Path(tmp))
            create_database(maintenance_url, name)
            created = True
            started = time.perf_counter()
            env = setup_django(bench_url, redis_url)
            print(f"Created and migrated database {name} in {time.perf_counter() - started:.1f}s.")
            measure(
                args,
                env,
                Path(tmp),
                redis_server,
                (crm_url, crm_counter),
                (receiver_url, receiver_counter) if receiver else None,
            )
        finally:
            started = time.perf_counter()
            if created:
                with contextlib.suppress(Exception):
                    from django.db import connections

                    connections.close_all()
                drop_database(maintenance_url, name)
                print(f"\nDropped database {name} in {time.perf_counter() - started:.1f}s.")
            stop_process(redis_server)
            for server in (crm, receiver):
                if server is not None:
                    server.terminate()
                    server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
