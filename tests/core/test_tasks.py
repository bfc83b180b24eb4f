"""core.tasks: queueing never breaks, or holds up, the caller; nothing for a rollback.

A stand-in task records how it was queued (published to a broker, run in process) and
from which thread, so each mode can be checked without a broker or a worker.
"""

import threading
from types import SimpleNamespace

import pytest
from django.db import transaction

from core.tasks import enqueue, enqueue_on_commit, wait_for_background_tasks


class FakeTask:
    name = "tests.fake_task"

    def __init__(self, *, eager: bool, broker_error: Exception | None = None):
        self.app = SimpleNamespace(conf=SimpleNamespace(task_always_eager=eager))
        self.broker_error = broker_error
        self.release = threading.Event()
        self.release.set()
        self.calls: list[tuple[str, str, tuple, dict]] = []

    def apply_async(self, args=(), kwargs=None):
        self.release.wait(5)
        if self.broker_error is not None:
            raise self.broker_error
        self.calls.append(("apply_async", threading.current_thread().name, args, kwargs))

    def apply(self, args=(), kwargs=None):
        self.calls.append(("apply", threading.current_thread().name, args, kwargs))


@pytest.fixture
def in_background(settings):
    settings.EMBEDDED_TASKS_IN_BACKGROUND = True


def test_in_tests_it_runs_after_commit_in_the_calling_thread(
    db, django_capture_on_commit_callbacks
):
    task = FakeTask(eager=True)

    with django_capture_on_commit_callbacks(execute=True):
        enqueue_on_commit(task, "a", key="b")
        assert task.calls == [], "nothing before the commit"

    assert task.calls == [("apply_async", threading.current_thread().name, ("a",), {"key": "b"})]


def test_nothing_is_queued_for_a_rollback(db, django_capture_on_commit_callbacks):
    task = FakeTask(eager=True)

    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        enqueue_on_commit(task, "a")
        raise RuntimeError("rolled back")

    assert callbacks == []
    assert task.calls == []


def test_with_a_broker_the_caller_does_not_wait_for_the_publish(
    db, django_capture_on_commit_callbacks
):
    task = FakeTask(eager=False)
    task.release.clear()  # a hung broker

    with django_capture_on_commit_callbacks(execute=True):
        enqueue_on_commit(task, "a")
    assert task.calls == [], "the commit returned while the broker hangs"

    task.release.set()
    wait_for_background_tasks(timeout=5)
    [(how, thread, args, _)] = task.calls
    assert (how, args) == ("apply_async", ("a",))
    assert thread != threading.current_thread().name


def test_a_broker_that_refuses_is_logged_not_raised(db, django_capture_on_commit_callbacks, caplog):
    task = FakeTask(eager=False, broker_error=ConnectionRefusedError())

    with django_capture_on_commit_callbacks(execute=True):
        enqueue_on_commit(task, "a")
    wait_for_background_tasks(timeout=5)

    assert task.calls == []
    assert "could not be enqueued (ConnectionRefusedError)" in caplog.text


def test_embedded_mode_runs_the_task_in_a_background_thread(
    db, django_capture_on_commit_callbacks, in_background
):
    task = FakeTask(eager=True)

    with django_capture_on_commit_callbacks(execute=True):
        enqueue_on_commit(task, "a")
    wait_for_background_tasks(timeout=5)

    [(how, thread, args, _)] = task.calls
    assert (how, args) == ("apply", ("a",))
    assert thread != threading.current_thread().name


def test_enqueue_says_whether_the_broker_took_the_task():
    assert enqueue(FakeTask(eager=False), "a") is True
    assert enqueue(FakeTask(eager=False, broker_error=ConnectionRefusedError()), "a") is False
