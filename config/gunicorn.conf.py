"""gunicorn settings for the `web` process (Procfile: `gunicorn -c config/gunicorn.conf.py`).

The command line gives bind, workers and logging; this file adds the hooks.
"""

import os

from prometheus_client import multiprocess


def child_exit(server, worker):
    """A worker exited (restart, crash, max-requests): its live gauges leave the
    /metrics answer. Its counters stay counted (prometheus-client keeps them)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
