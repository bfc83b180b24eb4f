"""The hot-path benchmark's yardstick (tests/benchmarks/bench_hot_path.py is run by hand,
not by the suite): the one-query endpoint exists only under the benchmark's settings, and
is what it claims to be, one SELECT once the API key is remembered."""

import pytest
from django.urls import Resolver404, resolve

from teams import api_key_cache
from tests.benchmarks import bench_hot_path, proc_cpu

pytestmark = pytest.mark.django_db

ONE_QUERY = "/api/v1/bench/one-query"


def test_production_urls_do_not_have_the_one_query_endpoint(tenant_client):
    with pytest.raises(Resolver404):
        resolve(ONE_QUERY)
    assert tenant_client.get(ONE_QUERY).status_code == 404


def test_the_one_query_endpoint_is_one_select(
    settings, tenant_client, tenant, django_assert_num_queries
):
    from tests.factories import MembershipFactory

    settings.ROOT_URLCONF = "tests.benchmarks.bench_urls"
    agent = MembershipFactory(tenant=tenant)
    api_key_cache.clear()
    assert tenant_client.get(ONE_QUERY, {"agentId": str(agent.pk)}).status_code == 200

    with django_assert_num_queries(1):
        response = tenant_client.get(ONE_QUERY, {"agentId": str(agent.pk)})

    assert response.status_code == 200
    assert response.json()["agent"]["id"] == str(agent.pk)


def test_the_benchmark_prints_one_table():
    args = bench_hot_path.parse_args(["--quick", "--only", "sweep"])
    report = bench_hot_path.Report()
    report.add("a figure", "1.00x", "<= 2x", True)
    report.add("a yardstick", "300", "yardstick")

    assert args.quick and args.only == ["sweep"]
    lines = report.table().splitlines()
    assert lines[0].startswith("| figure") and len(lines) == 4
    assert "ok" in lines[2]


def test_tree_cpu_counts_a_process_and_its_children_and_keeps_a_reaped_childs_time():
    import os
    import subprocess
    import sys
    import time

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    before = proc_cpu.tree_cpu_seconds(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", burn + "\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while proc_cpu.tree_cpu_seconds(os.getpid()) - before < 0.3:
            assert time.monotonic() < deadline, "the child's CPU was never counted"
            time.sleep(0.05)
        while_alive = proc_cpu.tree_cpu_seconds(os.getpid()) - before
    finally:
        child.kill()
        child.wait()  # reaped: its time moves to this process's children's total
    after_exit = proc_cpu.tree_cpu_seconds(os.getpid()) - before
    # Clock ticks, summed two ways (the live child's own, then this process's children's
    # total): equal up to the float rounding of the sums (0.32999… against 0.33000…).
    assert after_exit >= while_alive - 1e-6
    assert while_alive >= 0.3
    assert proc_cpu.tree_cpu_seconds(2**22 + 1) == 0.0  # above pid_max: no such process


def test_stat_gives_the_parent_pid_where_the_server_lookup_reads_it():
    import os

    assert proc_cpu.stat_fields(os.getpid())[1] == str(os.getppid())


@pytest.mark.postgres
def test_the_postgresql_server_found_is_the_parent_of_this_connections_backend():
    from django.db import connection

    server = bench_hot_path.postgres_server_pid()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
    assert server is not None and proc_cpu.command(server) == "postgres"
    with open(f"/proc/{server}/task/{server}/children") as handle:
        assert str(backend) in handle.read().split()


@pytest.mark.postgres
def test_a_server_pid_that_is_not_postgres_here_is_not_measured(monkeypatch):
    # PostgreSQL in a container: its pids name other processes (or none) on this host.
    monkeypatch.setattr(bench_hot_path, "command", lambda pid: "python")
    assert bench_hot_path.postgres_server_pid() is None


def test_cpu_per_request_divides_by_the_requests_served():
    use = bench_hot_path.CpuUse(web=3.0, database=1.0, requests=1000)
    assert use.per_request_ms() == (3.0, 1.0)
    remote = bench_hot_path.CpuUse(web=3.0, database=None, requests=1000)
    assert remote.per_request_ms() == (3.0, None)
    assert "not on this machine" in bench_hot_path._cpu_text(remote)
    failed = bench_hot_path.CpuUse(web=3.0, database=1.0, requests=0)  # wrk counted none
    assert failed.per_request_ms() == (3000.0, 1000.0)
    assert proc_cpu.tree_cpu_seconds(None) == 0.0


def test_the_building_share_is_timed_in_place_and_the_builders_are_put_back():
    import re

    from django.test import Client

    from inbox import services

    builders = (services._new_session, services._new_session_ctes)
    tenant = bench_hot_path.Tenant("share", agents=2)
    report = bench_hot_path.Report()

    bench_hot_path.building_share(report, tenant, Client(), 5)

    assert (services._new_session, services._new_session_ctes) == builders
    (row,) = report.rows
    spent, building = (float(ms) for ms in re.findall(r"([\d.]+) ms", row.measured))
    assert 0 < building < spent
