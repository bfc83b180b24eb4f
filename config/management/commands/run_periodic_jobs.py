import logging
import signal
import threading
import time
from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections, connection

from outbox.delivery import deliver_due
from outbox.worker import OutboxWorker

logger = logging.getLogger(__name__)


def _seconds(schedule) -> float:
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    return float(schedule)


def _task(dotted: str):
    module, name = dotted.rsplit(".", 1)
    return getattr(import_module(module), name)


class Command(BaseCommand):
    help = (
        "Run the periodic jobs of CELERY_BEAT_SCHEDULE and an outbox worker in this process. "
        "For embedded mode (no Redis, no Celery beat): `bin/run` starts it next to the web "
        "server."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="Run every job once, then exit.")

    def handle(self, *args, once: bool, **options):
        jobs = {
            name: (_task(entry["task"]), _seconds(entry["schedule"]), entry.get("kwargs", {}))
            for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
        }
        # One INFO line per job every 30-60 s would drown the web server's log.
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        worker = None
        if not once:
            # Embedded mode has no `outbox_worker` process: deliver from a thread here.
            worker = OutboxWorker(threads=2)
            threading.Thread(target=worker.run, name="outbox-worker", daemon=True).start()
        next_run = dict.fromkeys(jobs, 0.0)
        while not stop:
            for name, (task, every, kwargs) in jobs.items():
                if time.monotonic() < next_run[name]:
                    continue
                if not connection.in_atomic_block:
                    close_old_connections()
                try:
                    result = task.apply(kwargs=kwargs).get(propagate=True)
                    self.stdout.write(f"{name}: {result}")
                except Exception:
                    logger.exception("Periodic job %s failed", name)
                next_run[name] = time.monotonic() + every
            if once:
                self.stdout.write(f"outbox: {deliver_due(limit=1000)} message(s) handled")
                return
            time.sleep(1)
        if worker is not None:
            worker.stop()
