"""config/gunicorn.conf.py: the hooks gunicorn runs in the web process."""

import runpy
import socket
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


class _Cfg:
    def __init__(self, *, threads: int, address: list):
        self.threads, self.address, self.settings = threads, address, {}

    def set(self, name, value):
        self.settings[name] = value


def reuse_port_after_starting(monkeypatch, *, threads=8, address=None, **env) -> bool:
    for name in ("WEB_REUSE_PORT", "GUNICORN_FD", "LISTEN_FDS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = _Cfg(threads=threads, address=address or [("127.0.0.1", free_port())])
    runpy.run_path(str(CONF))["on_starting"](SimpleNamespace(cfg=cfg))
    return cfg.settings.get("reuse_port", False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_threaded_workers_listen_on_a_socket_each(monkeypatch):
    assert reuse_port_after_starting(monkeypatch, threads=8) is True


def test_sync_workers_share_the_one_socket(monkeypatch):
    assert reuse_port_after_starting(monkeypatch, threads=1) is False


def test_a_socket_each_can_be_turned_off(monkeypatch):
    assert reuse_port_after_starting(monkeypatch, WEB_REUSE_PORT="false") is False


def test_sockets_handed_over_by_systemd_or_a_re_exec_stay_shared(monkeypatch):
    assert reuse_port_after_starting(monkeypatch, LISTEN_FDS="1") is False
    assert reuse_port_after_starting(monkeypatch, GUNICORN_FD="5") is False


def test_a_unix_socket_or_any_free_port_stays_shared(monkeypatch):
    assert reuse_port_after_starting(monkeypatch, address=["/tmp/web.sock"]) is False
    assert reuse_port_after_starting(monkeypatch, address=[("127.0.0.1", 0)]) is False


def test_a_port_another_process_holds_is_left_for_gunicorn_to_refuse(monkeypatch):
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert reuse_port_after_starting(monkeypatch, address=[("127.0.0.1", port)]) is False
