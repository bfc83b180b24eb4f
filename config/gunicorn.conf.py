"""gunicorn settings for the `web` process (Procfile: `gunicorn -c config/gunicorn.conf.py`).

The command line gives bind, workers and logging; this file adds the hooks.
"""

import os
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

# Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new
# connections over them. With the one socket they would share otherwise, a threaded
# worker keeps accepting while its threads are busy: the 16 keep-alive connections of a
# load test all landed on one worker in a third of the runs, whose GIL then served them
# on one core while the other worker idled (measured with wrk, 2 workers x 8 threads:
# 380 req/s against 850 when they were spread). The price: connections still waiting
# in a worker's queue when that worker exits are reset, and a second server started on
# the same port by the same user shares it instead of failing to bind
# (WEB_REUSE_PORT=false turns it off).
reuse_port = os.environ.get("WEB_REUSE_PORT", "true").strip().lower() not in {"0", "false", "no"}


def post_fork(server, worker):
    if worker.cfg.threads > 1 and GIL_SWITCH_INTERVAL_MS > 0:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_MS / 1000)


def child_exit(server, worker):
    """A worker exited (restart, crash, max-requests): its live gauges leave the
    /metrics answer. Its counters stay counted (prometheus-client keeps them)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
