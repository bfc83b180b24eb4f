"""Settings of the hot-path benchmark (tests/benchmarks/bench_hot_path.py): production's,
plus the one-query endpoint the benchmark compares a handover against. Never used by a
deployment: the endpoint exists only in this URLconf."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "tests.benchmarks.bench_urls"
