"""Enqueueing background work so that it never breaks, or holds up, the caller.

* `enqueue(task, ...)` queues now and says whether it could: False when the broker
  refused the task (the error is logged, and the periodic job that owns the work picks
  it up later). For periodic jobs and workers, which want the answer.
* `enqueue_on_commit(task, ...)` queues once the current transaction commits and never
  waits for the broker: for services and requests.

How a task is queued depends on the mode:

* with a broker (REDIS_URL): `apply_async`; `enqueue_on_commit` publishes from a
  short-lived daemon thread, so a hung broker never holds up an HTTP response;
* embedded (no REDIS_URL): Celery runs tasks eagerly, so the task is run in a daemon
  thread, keeping a slow CRM or mail server from holding up the HTTP response;
* in tests (EMBEDDED_TASKS_IN_BACKGROUND off): eagerly, in the calling thread.

The Celery app is the task's own (`task.app`): this module imports no app of ours.
"""

import logging
import threading
from functools import partial

from django.conf import settings
from django.db import close_old_connections, connections, transaction

logger = logging.getLogger(__name__)


_background: list[threading.Thread] = []
_background_lock = threading.Lock()


def wait_for_background_tasks(timeout: float = 30.0) -> None:
    """Let background task and publish threads finish (for commands that exit right
    after)."""
    with _background_lock:
        threads = list(_background)
    for thread in threads:
        thread.join(timeout)
    with _background_lock:
        _background[:] = [t for t in _background if t.is_alive()]


def _start_in_background(name: str, target) -> None:
    thread = threading.Thread(target=target, name=name, daemon=True)
    with _background_lock:
        _background[:] = [t for t in _background if t.is_alive()]
        _background.append(thread)
    thread.start()


def _run_in_thread(task, args, kwargs) -> None:
    def run():
        close_old_connections()
        try:
            task.apply(args=args, kwargs=kwargs)
        except Exception:
            logger.exception("Background task %s failed", task.name)
        finally:
            connections.close_all()

    _start_in_background(f"task:{task.name}", run)


def _runs_in_process(task) -> bool:
    """No broker: Celery runs the task eagerly (embedded mode, tests)."""
    return bool(task.app.conf.task_always_eager)


def _publish(task, args, kwargs) -> bool:
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


def enqueue(task, *args, **kwargs) -> bool:
    """Queue `task(*args, **kwargs)`; False when it could not be queued (broker down)."""
    if _runs_in_process(task) and settings.EMBEDDED_TASKS_IN_BACKGROUND:
        _run_in_thread(task, args, kwargs)
        return True
    return _publish(task, args, kwargs)


def _publish_in_thread(task, args, kwargs) -> None:
    def run():
        try:
            _publish(task, args, kwargs)
        finally:
            connections.close_all()  # in case a publish signal handler touched the database

    _start_in_background(f"enqueue:{task.name}", run)


def _enqueue_without_waiting(task, args, kwargs) -> None:
    if not _runs_in_process(task):
        _publish_in_thread(task, args, kwargs)
    elif settings.EMBEDDED_TASKS_IN_BACKGROUND:
        _run_in_thread(task, args, kwargs)
    else:
        _publish(task, args, kwargs)  # tests: eagerly, in the calling thread


def enqueue_on_commit(task, *args, **kwargs) -> None:
    """Queue `task(*args, **kwargs)` once the current transaction commits (at once outside
    one); nothing is queued if it rolls back. Failures are logged, never raised."""
    transaction.on_commit(partial(_enqueue_without_waiting, task, args, kwargs))
