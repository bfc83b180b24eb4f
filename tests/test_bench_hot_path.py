"""The hot-path benchmark's yardstick (tests/benchmarks/bench_hot_path.py is run by hand,
not by the suite): the one-query endpoint exists only under the benchmark's settings, and
is what it claims to be, one SELECT once the API key is remembered."""

import pytest
from django.urls import Resolver404, resolve

from teams import api_key_cache
from tests.benchmarks import bench_hot_path

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
