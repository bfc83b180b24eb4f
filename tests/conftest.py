"""Shared fixtures.

Every test can reach an owner (tenant admin), a
teammate (member) and an outsider (an agent of another tenant), so access checks are
one line. Tests marked `postgres` need PostgreSQL (row locks, partial indexes, real
concurrency); on SQLite they are skipped and the summary says how many and why.
"""

import os
import uuid

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from config.celery import app as celery_app
from core.actor import Actor
from teams.models import Role
from teams.services import create_api_key
from tests.factories import MembershipFactory, TenantFactory

ON_POSTGRES = settings.DATABASE_IS_POSTGRES
POSTGRES_SKIP_REASON = "needs PostgreSQL: set DATABASE_URL=postgres://… to run it"


def pytest_report_header(config):
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    broker = "embedded (eager)" if not settings.REDIS_URL else settings.REDIS_URL
    return [f"database: {engine}", f"redis: {broker}"]


def pytest_configure(config):
    if os.environ.get("REQUIRE_POSTGRES") == "1" and not ON_POSTGRES:
        raise pytest.UsageError(
            "REQUIRE_POSTGRES=1 but the tests would run on SQLite: set DATABASE_URL."
        )


def pytest_collection_modifyitems(config, items):
    if ON_POSTGRES:
        return
    skip = pytest.mark.skip(reason=POSTGRES_SKIP_REASON)
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if POSTGRES_SKIP_REASON in str(r.longrepr)
    ]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} tests were skipped because they need PostgreSQL "
            "(this run used SQLite). Set DATABASE_URL to run them.",
            yellow=True,
        )
    else:
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        terminalreporter.write_line(f"All tests ran on {engine}.")


@pytest.fixture(autouse=True)
def _fast_password_hashing_and_foreground_tasks(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Eager tasks run in the test's own thread, so their effects can be asserted.
    settings.EMBEDDED_TASKS_IN_BACKGROUND = False
    # Fake CRMs in tests are local http servers (tests of the guard switch it back on).
    settings.OUTBOUND_ALLOW_HTTP = True
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True


@pytest.fixture(autouse=True)
def _fresh_api_throttle(settings):
    """Each test counts failed API-key attempts and request rates from zero: the counters
    live in the cache, which outlives a test (in Redis, the whole run)."""
    throttle = {**settings.CACHES["throttle"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"}
    settings.CACHES = {**settings.CACHES, "throttle": throttle}


@pytest.fixture(autouse=True)
def _celery_runs_tasks_in_process():
    """Tasks run synchronously in tests, and their errors surface instead of vanishing."""
    previous = (celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates)
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = previous


@pytest.fixture
def deliver_outbox(db):
    """What the outbox worker would do now: send every due message; how many."""
    from outbox.delivery import deliver_due

    return lambda: deliver_due(limit=10_000)


@pytest.fixture
def tenant(db):
    return TenantFactory(name="Acme", slug="acme")


@pytest.fixture
def other_tenant(db):
    return TenantFactory(name="Globex", slug="globex")


@pytest.fixture
def owner(tenant):
    """An admin agent of `tenant`."""
    return MembershipFactory(tenant=tenant, role=Role.ADMIN, user__is_staff=True)


@pytest.fixture
def teammate(tenant):
    """A member agent of `tenant`."""
    return MembershipFactory(tenant=tenant, role=Role.MEMBER)


@pytest.fixture
def outsider(other_tenant):
    """An agent of another tenant: must never see or touch `tenant`'s rows."""
    return MembershipFactory(tenant=other_tenant, role=Role.ADMIN, user__is_staff=True)


@pytest.fixture
def api_key(tenant):
    """(ApiKey, plaintext) for `tenant`."""
    return create_api_key(tenant=tenant, name="Test key", actor=Actor.system())


@pytest.fixture
def other_api_key(other_tenant):
    return create_api_key(tenant=other_tenant, name="Other key", actor=Actor.system())


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def tenant_client(api_key):
    """An API client authenticated with `tenant`'s key in the X-API-Key header."""
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key[1])
    return client


@pytest.fixture(autouse=True)
def _fresh_email_connection():
    """The email channel keeps one connection per thread; a test that switches
    EMAIL_BACKEND must not inherit the previous test's."""
    from outbox.email import _drop_connection

    _drop_connection()
    yield
    _drop_connection()
