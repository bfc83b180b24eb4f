import json
import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils import timezone

from leads.services import SWEEP_BATCH_SIZE, sweep_sla_breaches
from outbox.delivery import deliver_due

logger = logging.getLogger(__name__)

# Embedded mode sends at most this many due messages after a sweep (a retry that falls
# due later waits for the next run); the breach emails of one sweep are far fewer.
DELIVERY_LIMIT = 1000

STAGE_LABELS = {
    "claim": "stage 1, claim window",
    "contact": "stage 2, contact window",
}


class Command(BaseCommand):
    help = (
        "Record missed claim (stage 1) and contact (stage 2) deadlines: the sweep Celery "
        "beat runs every 30 seconds. Once by default; --loop keeps sweeping. In embedded "
        "mode (no REDIS_URL, so maybe no outbox worker) each sweep then sends the emails it "
        "queued before the command goes on or exits."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--loop", action="store_true", help="Sweep every --interval seconds until stopped."
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=30.0,
            help="Seconds between sweeps with --loop (default 30).",
        )
        parser.add_argument(
            "--max-runs",
            type=int,
            default=None,
            help="With --loop, stop after this many sweeps (default: run until stopped).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=SWEEP_BATCH_SIZE,
            help=f"Leads per transaction (default {SWEEP_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print one JSON object per sweep: {at, claim, contact}.",
        )

    def handle(self, *args, loop, interval, max_runs, batch_size, as_json, **options):
        if interval < 0:
            raise CommandError("--interval cannot be negative.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if max_runs is not None and max_runs < 1:
            raise CommandError("--max-runs must be at least 1.")
        if not loop:
            self._report(self._sweep(batch_size), as_json=as_json)
            return

        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        runs = 0
        try:
            while not stop.is_set():
                started = time.monotonic()
                _drop_stale_connections()
                try:
                    self._report(self._sweep(batch_size), as_json=as_json)
                except Exception:
                    # One failed sweep (database restarting, say) must not end the loop;
                    # the next one records whatever this one missed.
                    logger.exception("SLA sweep failed")
                runs += 1
                if max_runs is not None and runs >= max_runs:
                    break
                stop.wait(max(0.0, interval - (time.monotonic() - started)))
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _sweep(self, batch_size: int) -> dict:
        """One sweep; in embedded mode also the sending of what it queued: nothing else
        may be running an outbox worker there (`bin/run` not started, or a cron job), and
        the breach emails would otherwise wait for the next run. With REDIS_URL the
        `outbox` process sends them within milliseconds of the commit."""
        counts = sweep_sla_breaches(batch_size=batch_size)
        counts["delivered"] = None if settings.REDIS_URL else deliver_due(limit=DELIVERY_LIMIT)
        return counts

    def _report(self, counts: dict, *, as_json: bool) -> None:
        at = timezone.now().isoformat()
        if as_json:
            self.stdout.write(json.dumps({"at": at, **counts}))
            return
        parts = ", ".join(
            f"{counts.get(stage, 0)} {stage} ({label})" for stage, label in STAGE_LABELS.items()
        )
        line = f"{at} SLA breaches recorded: {parts}"
        if counts.get("delivered") is not None:
            line += f"; outbox: {counts['delivered']} message(s) handled"
        self.stdout.write(line)


def _drop_stale_connections() -> None:
    """What a request boundary does: drop connections that broke or passed CONN_MAX_AGE,
    so a long-running loop survives a database restart. Never one inside a transaction
    its caller opened."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
