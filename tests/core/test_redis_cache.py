"""The Redis cache backend (core.redis_cache): Django's, with one redis-py client per
connection pool instead of a new one per operation; against a Redis of its own."""

import shutil
import threading

import pytest
import redis
from django.core.cache.backends.redis import RedisCache

from core.redis_cache import ReusedClientRedisCache
from tests.e2e.processes import processes

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


@pytest.fixture
def procs():
    with processes() as group:
        yield group


def cache_at(url: str, backend=ReusedClientRedisCache, **options):
    return backend(url, {"KEY_PREFIX": "test", "OPTIONS": options})


def count_clients(monkeypatch) -> list:
    built = []
    original = redis.Redis.__init__

    def counting(self, *args, **kwargs):
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting)
    return built


def test_a_hundred_operations_build_one_client(procs, monkeypatch):
    cache = cache_at(procs.redis().url)
    built = count_clients(monkeypatch)

    for n in range(25):
        cache.set(f"k{n}", n)
        assert cache.get(f"k{n}") == n
        assert cache.add(f"counter{n}", 1) is True
        assert cache.incr(f"counter{n}") == 2

    assert len(built) == 1


def test_django_s_own_backend_builds_one_per_operation(procs, monkeypatch):
    """What the reuse saves (and why this module exists): the same work, Django's way."""
    cache = cache_at(procs.redis().url, backend=RedisCache)
    built = count_clients(monkeypatch)

    for n in range(25):
        cache.set(f"k{n}", n)
        cache.get(f"k{n}")

    assert len(built) == 50


def test_threads_share_the_client_and_each_gets_its_own_answers(procs):
    cache = cache_at(procs.redis().url)
    wrong, clients = [], set()

    def work(thread: int) -> None:
        for n in range(200):
            cache.set(f"t{thread}:{n}", (thread, n))
            if cache.get(f"t{thread}:{n}") != (thread, n):
                wrong.append((thread, n))
        clients.add(id(cache._cache.get_client()))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert wrong == []
    assert len(clients) == 1


def test_after_a_redis_restart_the_same_cache_works_again(procs):
    first = procs.redis()
    cache = cache_at(first.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    cache.set("before", 1)
    first.stop()

    with pytest.raises(redis.ConnectionError):
        cache.get("before")

    procs.redis(port=first.port)
    cache.set("after", 2)
    assert cache.get("after") == 2
