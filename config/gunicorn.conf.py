"""gunicorn settings for the `web` process (Procfile: `gunicorn -c config/gunicorn.conf.py`).

The command line gives bind, workers and logging; this file adds the hooks.
"""

import os
import socket
import sys

from prometheus_client import multiprocess

# With several threads per worker (--threads), a thread whose database or Redis answer
# has arrived waits for the GIL until the thread running Python gives it up: by default
# after 5 ms. Requests then queue behind each other's Python for milliseconds per round
# trip, and a worker serves fewer of them than its CPU could (measured with wrk at 16
# connections, 2 workers x 8 threads: the one-query endpoint went from 260-300 req/s
# with a core a third idle to 440-610 req/s with both busy). Handing the GIL over
# after 0.5 ms costs a little more switching and takes that wait away.
GIL_SWITCH_INTERVAL_MS = float(os.environ.get("WEB_GIL_SWITCH_INTERVAL_MS", "0.5"))

# Threaded workers each listen on a socket of their own (SO_REUSEPORT) and the kernel
# spreads new connections over them. On the one socket they would share otherwise, a
# threaded worker keeps accepting while its threads are busy: the 16 keep-alive
# connections of a load test all landed on one worker in a third of the runs, whose GIL
# then served them on one core while the other worker idled (measured with wrk, 2 workers
# x 8 threads: 373-390 req/s against 830-960 when they were spread). Sync workers
# (--threads 1) keep the shared socket: one of them accepts only when it is free, which
# spreads connections by load, not by hash. Only for TCP addresses gunicorn binds itself
# (not sockets handed over by systemd or a re-exec: those stay shared), and only once the
# master has bound each address itself without the option: a port another process holds
# still stops gunicorn at once, instead of workers failing to bind again and again. What
# it costs: connections still waiting in a worker's queue when that worker exits are
# reset. WEB_REUSE_PORT=false keeps the one socket.
WEB_REUSE_PORT = os.environ.get("WEB_REUSE_PORT", "true").strip().lower() not in {
    "0",
    "false",
    "no",
}


def _bindable(address) -> bool:
    """Whether the master can bind `address` (host, port) now, as a socket without
    SO_REUSEPORT would: a port in use by anyone is not."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError:
            return False
    return True


def on_starting(server):
    cfg = server.cfg
    inherited = os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS")
    addresses = cfg.address
    if (
        not WEB_REUSE_PORT
        or cfg.threads <= 1
        or inherited
        or not hasattr(socket, "SO_REUSEPORT")
        or not all(isinstance(a, tuple) and a[1] for a in addresses)
    ):
        return
    if all(_bindable(address) for address in addresses):
        cfg.set("reuse_port", True)


def post_fork(server, worker):
    if worker.cfg.threads > 1 and GIL_SWITCH_INTERVAL_MS > 0:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_MS / 1000)


def child_exit(server, worker):
    """A worker exited (restart, crash, max-requests): its live gauges leave the
    /metrics answer. Its counters stay counted (prometheus-client keeps them)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
