"""API throttling on a running server: gunicorn with two workers (so the counters must be
shared between processes) and a Redis of our own, called over HTTP with `requests`.
"""

import contextlib
import shutil
import socket
import statistics
import time
import uuid

import pytest
import requests
from django.test import Client

from core.actor import Actor
from teams.services import create_api_key
from tests.e2e.processes import Processes, free_port, processes
from tests.factories import TenantFactory

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

WHOAMI = "/api/v1/whoami"
LIMIT = 20  # API_KEY_FAILURES_PER_MINUTE
# How long a request may take while the throttle's Redis is stopped: over ten times the
# cache's 0.08 s timeout, so only a request that waits on the cache fails it.
ANSWER_WITHIN = 1.0


@pytest.fixture
def procs():
    with processes() as group:
        yield group


def gunicorn(procs: Processes, *, redis_url: str, workers: int = 2) -> str:
    """A gunicorn serving the app with `redis_url` as its Redis; its base URL once every
    worker has booted and it answers."""
    base, _ = procs.gunicorn(workers=workers, REDIS_URL=redis_url)
    for _ in range(2 * workers):  # every worker loads the URLconf; no key, so nothing counts
        requests.get(base + WHOAMI, timeout=10)
    return base


def random_key() -> str:
    return f"wk_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}{uuid.uuid4().hex[:10]}"


def call(base: str, key: str) -> requests.Response:
    """GET whoami with `key`, failing the test if no answer comes within ANSWER_WITHIN."""
    try:
        return requests.get(base + WHOAMI, headers={"X-API-Key": key}, timeout=ANSWER_WITHIN)
    except requests.Timeout:
        pytest.fail(f"no answer within {ANSWER_WITHIN} s: the request waited on the cache")


def whoami_seconds(client: Client, key: str) -> float:
    """How long an in-process GET whoami with `key` takes; it must be answered 200."""
    started = time.perf_counter()
    response = client.get(WHOAMI, HTTP_X_API_KEY=key)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.content
    return elapsed


def start_of_a_fresh_minute_if_this_one_ends_soon(margin: float = 20) -> None:
    """The counters are per calendar minute: keep a test's requests within one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.2)


def test_a_running_server_refuses_random_keys_after_twenty(procs):
    tenant = TenantFactory()
    _, valid = create_api_key(tenant=tenant, name="e2e", actor=Actor.system())
    redis = procs.redis()
    base = gunicorn(procs, redis_url=redis.url)
    start_of_a_fresh_minute_if_this_one_ends_soon()

    answers = [
        requests.get(base + WHOAMI, headers={"X-API-Key": random_key()}, timeout=10)
        for _ in range(25)
    ]
    with_valid_key = requests.get(base + WHOAMI, headers={"X-API-Key": valid}, timeout=10)

    assert [a.status_code for a in answers] == [401] * LIMIT + [429] * 5
    assert {a.json()["error"]["code"] for a in answers[:LIMIT]} == {"api_key_invalid"}
    for answer in [*answers[LIMIT:], with_valid_key]:
        assert answer.status_code == 429
        assert answer.json()["error"]["code"] == "too_many_attempts"
        assert 1 <= int(answer.headers["Retry-After"]) <= 60, answer.headers


def test_a_stopped_redis_holds_no_request_and_throttles_nothing(procs):
    tenant = TenantFactory()
    limited = TenantFactory(api_rate_limit_per_minute=2)
    _, valid = create_api_key(tenant=tenant, name="e2e", actor=Actor.system())
    _, limited_key = create_api_key(tenant=limited, name="e2e", actor=Actor.system())
    redis = procs.redis()
    base = gunicorn(procs, redis_url=redis.url, workers=1)
    redis.pause()  # connections are accepted, nothing ever answers

    assert call(base, valid).status_code == 200
    bad = [call(base, random_key()).status_code for _ in range(LIMIT + 5)]
    assert bad == [401] * (LIMIT + 5), "with the cache down nothing is refused as throttled"
    assert [call(base, limited_key).status_code for _ in range(5)] == [200] * 5
    assert call(base, valid).status_code == 200


def test_a_redis_that_is_gone_throttles_nothing(procs):
    tenant = TenantFactory()
    _, valid = create_api_key(tenant=tenant, name="e2e", actor=Actor.system())
    base = gunicorn(procs, redis_url=f"redis://127.0.0.1:{free_port()}/0", workers=1)

    bad = [call(base, random_key()).status_code for _ in range(LIMIT + 5)]

    assert bad == [401] * (LIMIT + 5)
    assert call(base, valid).status_code == 200


def test_a_hung_redis_holds_a_request_for_the_throttles_timeout_and_no_more(procs, settings):
    """The bound: a hung cache holds a request for the throttle's 0.08 s timeout, once,
    and no more (not once per call, nor redis-py's retries): under the 100 ms a hung
    cache may cost a request. Production's throttle cache (its options as
    config/settings.py makes them) against a Redis that accepts connections and never
    answers; a Redis that refuses costs next to nothing. Measured in process, against the
    same request with the Redis answering."""
    throttle = settings.CACHES["throttle"]
    if not throttle["BACKEND"].endswith("RedisCache"):
        pytest.skip("needs REDIS_URL: production's throttle cache is Redis (CI sets it)")
    assert settings.THROTTLE_CACHE_TIMEOUT_SECONDS == 0.08
    tenant = TenantFactory()
    _, key = create_api_key(tenant=tenant, name="e2e", actor=Actor.system())
    redis = procs.redis()
    settings.CACHES = {**settings.CACHES, "throttle": {**throttle, "LOCATION": redis.url}}
    client = Client()

    def timed() -> float:
        return whoami_seconds(client, key)

    healthy = statistics.median([timed() for _ in range(20)][5:])
    redis.pause()  # connections are accepted, nothing ever answers
    try:
        hung = [timed() - healthy for _ in range(5)]
    finally:
        redis.resume()
    redis.stop()
    refused = [timed() - healthy for _ in range(5)]

    # Medians: one request slowed by the machine must not decide; a retry or a second
    # call would slow every one of them.
    assert statistics.median(hung) >= 0.07, f"the requests did not wait on the hung Redis: {hung}"
    assert statistics.median(hung) <= 0.1, f"a hung Redis held requests beyond 100 ms: {hung}"
    assert statistics.median(refused) <= 0.05, f"a refusing Redis held requests: {refused}"


@contextlib.contextmanager
def address_that_drops_connections():
    """A local port whose connections never complete, as a Redis host that is gone and
    drops packets: a listener with a backlog of one that never accepts, filled by a
    first connection; the kernel then drops every further SYN, so a connect waits for
    the client's own timeout (a refusal or a reset would answer at once)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=1)
    probe = socket.socket()
    probe.settimeout(0.3)
    try:
        with pytest.raises(TimeoutError):  # the port really drops connections
            probe.connect(listener.getsockname())
        yield "redis://{}:{}/0".format(*listener.getsockname())
    finally:
        for sock in (probe, filler, listener):
            sock.close()


def test_a_redis_host_that_drops_packets_holds_a_request_for_the_timeout_and_no_more(
    settings,
):
    """A dead cache host (its address silent, nothing refused) costs a request the
    throttle's connect timeout, once: under the 100 ms a dead cache may cost, and the
    request is answered. Production's throttle cache options, in process, against the
    same request with a Redis that refuses (which costs next to nothing)."""
    throttle = settings.CACHES["throttle"]
    if not throttle["BACKEND"].endswith("RedisCache"):
        pytest.skip("needs REDIS_URL: production's throttle cache is Redis (CI sets it)")
    assert throttle["OPTIONS"]["socket_connect_timeout"] == 0.08
    tenant = TenantFactory()
    _, key = create_api_key(tenant=tenant, name="e2e", actor=Actor.system())
    client = Client()

    def timed(location: str) -> float:
        settings.CACHES = {**settings.CACHES, "throttle": {**throttle, "LOCATION": location}}
        return whoami_seconds(client, key)

    refusing = f"redis://127.0.0.1:{free_port()}/0"
    baseline = statistics.median([timed(refusing) for _ in range(10)][3:])
    with address_that_drops_connections() as silent:
        dead = [timed(silent) - baseline for _ in range(5)]

    assert statistics.median(dead) >= 0.07, f"the requests did not wait on the dead host: {dead}"
    assert statistics.median(dead) <= 0.1, f"a dead Redis host held requests beyond 100 ms: {dead}"
