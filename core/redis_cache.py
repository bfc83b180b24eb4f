"""Django's Redis cache backend, with one redis-py client per connection pool.

Django's `RedisCacheClient.get_client` builds a new `redis.Redis` for every cache
operation; building one copies redis-py's table of about 170 response callbacks, which
cost more CPU than the GET it then sends (77 µs against 61 µs here). Every API-key
request reads the throttle's counter, so every request paid it. A redis-py client is
safe to share between threads (it takes a connection from its pool for each command and
gives it back), so one per pool does; pools, options and behaviour stay Django's. It
leans on the client's private attributes (`_pools`, `_pool_class`, …) as Django 5.2 names
them: `tests/core/test_redis_cache.py` goes red if an upgrade renames them.
"""

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class ReusedClientRedisCacheClient(RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients: dict = {}

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            pool = self._pools.get(index)
            if pool is None:
                pool = self._pools.setdefault(
                    index, self._pool_class.from_url(self._servers[index], **self._pool_options)
                )
            client = self._clients.setdefault(index, self._client(connection_pool=pool))
        return client


class ReusedClientRedisCache(RedisCache):
    """`django.core.cache.backends.redis.RedisCache`, reusing its redis-py clients."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = ReusedClientRedisCacheClient
