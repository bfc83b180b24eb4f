"""The production shape of background tasks, end to end: a real `celery -A config worker`
process, a Redis broker of our own and the test database.

Confirmations no longer go through Celery (they are outbox messages, sent by `manage.py
outbox_worker`: tests/e2e/test_outbox_faults.py). What Celery still runs are the periodic
jobs and their on-demand calls, e.g. "route this tenant's waiting sessions again" when an
agent is back. Beat sends the periodic runs to the `periodic` queue; on-demand calls go to
`default`, which the Procfile's `worker` consumes. This test publishes one the way the
app does and checks that such a worker process runs it.
"""

import shutil
import uuid

import pytest
from django.conf import settings

from config.celery import app as celery_app
from inbox.models import InboxSession
from inbox.tasks import retry_unassigned_sessions
from tests.e2e.processes import processes, wait_until
from tests.factories import MembershipFactory
from tests.inbox.factories import InboxSessionFactory

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="needs redis-server to run a broker"
    ),
]

TASK_DONE = r"Task inbox\.tasks\.retry_unassigned_sessions\[[^\]]+\] succeeded"


def test_the_default_worker_process_runs_an_on_demand_retry_of_waiting_sessions(tenant):
    agent = MembershipFactory(tenant=tenant)
    session = InboxSessionFactory(tenant=tenant, confirmation=False)  # open, nobody on it
    assert session.assigned_agent_id is None
    queue = celery_app.amqp.router.route({}, retry_unassigned_sessions.name)["queue"].name
    assert queue == "default", "on-demand retries go where the Procfile runs a worker"
    assert "--queues default" in (settings.BASE_DIR / "Procfile").read_text()
    beat_queues = {e["options"]["queue"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert beat_queues == {"periodic"}, "periodic runs keep a worker of their own"

    with processes() as group:
        redis = group.redis()
        worker = group.celery(
            "celery-default",
            [
                "worker",
                "--queues",
                queue,
                "--hostname",
                f"default-{uuid.uuid4().hex[:8]}@%h",
                "--loglevel=INFO",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
            ],
            REDIS_URL=redis.url,
        )
        worker.wait_for(r" ready\.")
        eager = celery_app.conf.task_always_eager
        celery_app.conf.task_always_eager = False  # tests run tasks in-process otherwise
        try:
            with celery_app.connection_for_write(redis.url) as connection:
                retry_unassigned_sessions.apply_async(
                    kwargs={"tenant_id": str(tenant.pk)}, connection=connection
                )
        finally:
            celery_app.conf.task_always_eager = eager

        assigned = wait_until(
            lambda: InboxSession.all_tenants.filter(pk=session.pk, assigned_agent=agent).first(),
            timeout=30,
            what="the worker assigned the waiting session",
            every=0.1,
        )
        [(_, line)] = worker.wait_for(TASK_DONE, timeout=10)

    assert assigned.unassigned_reason == ""
    assert "'assigned': 1" in line, line
