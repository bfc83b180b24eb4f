"""Enqueueing background work so that it never breaks, or holds up, the caller.

`enqueue(task, ...)` is what services register with `transaction.on_commit`:

* with a broker (REDIS_URL): `apply_async`; when the broker is down the error is logged
  and False returned, and the periodic job that owns the work picks it up later;
* embedded (no REDIS_URL): Celery runs tasks eagerly, so the task is run in a daemon
  thread, keeping a slow CRM or mail server from holding up the HTTP response;
* in tests (EMBEDDED_TASKS_IN_BACKGROUND off): eagerly, in the calling thread.
"""

import logging
import random
import threading

from django.conf import settings
from django.db import close_old_connections, connections

from config.celery import app as celery_app

logger = logging.getLogger(__name__)


_background: list[threading.Thread] = []


def wait_for_background_tasks(timeout: float = 30.0) -> None:
    """Let embedded-mode task threads finish (for commands that exit right after)."""
    for thread in list(_background):
        thread.join(timeout)
    _background[:] = [t for t in _background if t.is_alive()]


def _run_in_thread(task, args, kwargs) -> None:
    def run():
        close_old_connections()
        try:
            task.apply(args=args, kwargs=kwargs)
        except Exception:
            logger.exception("Background task %s failed", task.name)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, name=f"task:{task.name}", daemon=True)
    _background[:] = [t for t in _background if t.is_alive()]
    _background.append(thread)
    thread.start()


def enqueue(task, *args, **kwargs) -> bool:
    """Queue `task(*args, **kwargs)`; False when it could not be queued (broker down)."""
    if celery_app.conf.task_always_eager and settings.EMBEDDED_TASKS_IN_BACKGROUND:
        _run_in_thread(task, args, kwargs)
        return True
    try:
        task.apply_async(args=args, kwargs=kwargs)
    except Exception as exc:  # kombu/redis raise transport-specific errors
        logger.warning(
            "Task %s could not be enqueued (%s); the periodic job will pick the work up.",
            task.name,
            type(exc).__name__,
        )
        return False
    return True


BACKOFF_CAP_SECONDS = 300
BACKOFF_JITTER = 0.1


def backoff_seconds(retries: int, base_seconds: float, *, jitter: bool = True) -> float:
    """base * 2**retries, capped at 5 minutes, plus up to 10% jitter so that work that
    failed together (a CRM or mail outage) does not come back all at once."""
    wait = min(float(base_seconds) * 2 ** max(0, retries), BACKOFF_CAP_SECONDS)
    return wait + (random.uniform(0, wait * BACKOFF_JITTER) if jitter else 0.0)


def retry_or_give_up(
    task, exc, *, max_retries: int, countdown: float, give_up, exhausted: bool = False
) -> str:
    """In a bound task's `except` block: retry later, or, with retries spent (or
    `exhausted` by the caller's own count), record the failure with `give_up()`."""
    if exhausted or task.request.retries >= max_retries:
        give_up()
        return "failed"
    raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries) from None
