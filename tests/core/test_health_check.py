"""core.backends.postgresql: a reused connection is checked at the start of each request
without a round trip, and a connection the server ended meanwhile is still replaced
before the request uses it.

A request is what gunicorn runs between Django's request_started and request_finished
signals; both close old connections (`close_old_connections`), which marks the
connection for a health check before its next query. The test client switches that
off, so the tests here send the signals themselves.
"""

import json
import select
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from django.core.signals import request_finished, request_started
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper as DjangoDatabaseWrapper
from psycopg import pq

from teams.models import Tenant
from tests.e2e.processes import pg_connect, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def between_requests() -> None:
    """The end of one request and the start of the next, as gunicorn runs them."""
    request_finished.send(sender=None)
    request_started.send(sender=None, environ={})


@contextmanager
def statements_sent():
    """The statements this connection sends the server meanwhile (libpq's own trace of
    the protocol: a simple Query, or an Execute of the extended protocol, each)."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    sent: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace"
        with trace.open("w") as handle:
            pgconn.trace(handle.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                yield sent
            finally:
                if connection.connection is not None and connection.connection.pgconn is pgconn:
                    pgconn.untrace()
        for line in trace.read_text().splitlines():
            direction, _, kind, *rest = [*line.split("\t"), "", "", ""]
            if direction == "F" and kind in ("Query", "Execute", "Parse"):
                sent.append(f"{kind} {' '.join(rest).strip()}")


def executed(sent: list[str]) -> list[str]:
    return [line for line in sent if line.startswith(("Query", "Execute"))]


def test_a_request_on_a_healthy_reused_connection_sends_only_its_own_statement(tenant):
    assert Tenant.objects.count() == 1  # the connection is open and has been used
    between_requests()

    with statements_sent() as sent:
        assert Tenant.objects.count() == 1

    assert len(executed(sent)) == 1, sent
    assert not any("SELECT 1" in line for line in sent), sent


def test_handovers_in_a_row_each_send_only_the_pool_s_lock_and_the_pick(
    tenant, teammate, tenant_client
):
    """The pick's pipelined exchange reads everything the server answered: the next
    request finds nothing waiting on the connection, and no `SELECT 1` is sent."""
    for number in range(3):  # the pool's cursor is made by the first pick
        between_requests()
        response = tenant_client.post(
            "/api/v1/handover", {"contactId": f"warm-{number}"}, content_type="application/json"
        )
        assert response.status_code == 201, response.content

    for number in range(3):
        between_requests()
        with statements_sent() as sent:
            response = tenant_client.post(
                "/api/v1/handover", {"contactId": f"row-{number}"}, content_type="application/json"
            )
        assert response.status_code == 201, response.content
        assert len(executed(sent)) == 2, sent  # Django's check would have been a third


def test_django_s_own_check_would_have_sent_select_1_first(tenant, monkeypatch):
    """What the check above saves: Django's health check is a round trip of its own."""
    monkeypatch.setattr(
        type(connections["default"]),
        "close_if_health_check_failed",
        DjangoDatabaseWrapper.close_if_health_check_failed,
    )
    assert Tenant.objects.count() == 1
    between_requests()

    with statements_sent() as sent:
        assert Tenant.objects.count() == 1

    assert len(executed(sent)) == 2, sent
    assert "SELECT 1" in executed(sent)[0], sent


def test_a_connection_the_server_ended_between_requests_is_replaced_before_it_is_used(
    tenant,
):
    assert Tenant.objects.count() == 1
    between_requests()
    ended = connection.connection.info.backend_pid
    with pg_connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [ended])
        wait_until(
            lambda: (
                not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [ended]
                ).fetchone()
            ),
            timeout=10,
            what="the server ends the request's connection",
        )

    assert Tenant.objects.count() == 1  # no OperationalError: a new connection
    assert connection.connection.info.backend_pid != ended


def test_a_connection_with_something_to_read_gets_the_full_check_and_is_kept(tenant):
    """A notification waiting on an idle connection makes its socket readable, like the
    server's goodbye would: the full check (`SELECT 1`) runs, finds the connection
    healthy, and the request goes on with it."""
    with connection.cursor() as cursor:
        cursor.execute("LISTEN health_check_probe")
    try:
        kept = connection.connection.info.backend_pid
        between_requests()
        with pg_connect() as admin:
            admin.execute("SELECT pg_notify('health_check_probe', %s)", [json.dumps("ping")])
        # The listening backend sends the notification once it has been signalled:
        # soon, not at once.
        socket = connection.connection.pgconn.socket
        readable, _, _ = select.select([socket], [], [], 10)
        assert readable, "the notification never reached the connection"

        with statements_sent() as sent:
            assert Tenant.objects.count() == 1

        assert [line for line in executed(sent) if "SELECT 1" in line], sent
        assert connection.connection.info.backend_pid == kept
    finally:
        with connection.cursor() as cursor:
            cursor.execute("UNLISTEN *")


def test_a_connection_left_in_a_failed_transaction_is_replaced_before_it_is_used(tenant):
    """Something that used psycopg directly left the connection in a transaction that
    failed: its socket is quiet, but the next request could not run a query on it."""
    assert Tenant.objects.count() == 1
    raw = connection.connection
    raw.execute("BEGIN")
    with pytest.raises(psycopg.errors.DivisionByZero):
        raw.execute("SELECT 1 / 0")
    left = raw.info.backend_pid
    between_requests()

    assert Tenant.objects.count() == 1  # not "current transaction is aborted"
    assert connection.connection.info.backend_pid != left


def test_a_connection_on_a_descriptor_past_1024_is_checked_without_a_round_trip_too(tenant):
    """select() cannot watch a descriptor numbered past FD_SETSIZE; a busy process's
    database connection can have one."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"this process may open at most {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    connection.close()
    held = []
    try:
        while not held or held[-1] <= 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        assert Tenant.objects.count() == 1  # a new connection, on a high descriptor
        assert connection.connection.pgconn.socket > 1024
        between_requests()

        with statements_sent() as sent:
            assert Tenant.objects.count() == 1

        assert len(executed(sent)) == 1, sent
    finally:
        for descriptor in held:
            os.close(descriptor)
        connection.close()  # its descriptor is past the limit set back below
        if soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
