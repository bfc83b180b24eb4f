"""config/gunicorn.conf.py: the hooks gunicorn runs in the web process."""

import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

CONF = Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py"


@pytest.fixture
def switch_interval():
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield
    sys.setswitchinterval(saved)


def worker(threads: int):
    return SimpleNamespace(cfg=SimpleNamespace(threads=threads))


def test_a_threaded_worker_hands_the_gil_over_after_half_a_millisecond(switch_interval):
    hooks = runpy.run_path(str(CONF))
    hooks["post_fork"](None, worker(threads=8))
    assert sys.getswitchinterval() == pytest.approx(0.0005)


def test_a_worker_of_one_thread_keeps_pythons_default(switch_interval):
    hooks = runpy.run_path(str(CONF))
    hooks["post_fork"](None, worker(threads=1))
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_the_interval_comes_from_the_environment(switch_interval, monkeypatch):
    monkeypatch.setenv("WEB_GIL_SWITCH_INTERVAL_MS", "2")
    hooks = runpy.run_path(str(CONF))
    hooks["post_fork"](None, worker(threads=4))
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_each_worker_listens_on_its_own_socket_unless_turned_off(monkeypatch):
    assert runpy.run_path(str(CONF))["reuse_port"] is True
    monkeypatch.setenv("WEB_REUSE_PORT", "false")
    assert runpy.run_path(str(CONF))["reuse_port"] is False
