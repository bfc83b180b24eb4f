"""503, not 500, for outages: a database or broker that cannot be reached (or refuses for
a moment) answers `503 service_unavailable` with Retry-After on every page, and writes
nothing; a bug still answers 500 and logs its traceback.

Outages are made with Django's own hook into query execution
(`connection.execute_wrapper`), with the errors the drivers really raise; the tests
marked `postgres` make real ones (a statement timeout, a connection terminated in the
middle of a handover).
"""

import json
import logging
import sqlite3
from contextlib import contextmanager

import kombu.exceptions
import psycopg
import psycopg.errors
import pytest
import redis.exceptions
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    connection,
)
from django.test import Client, RequestFactory

from audit.models import ActivityLog
from core.api import json_or_html_500
from core.middleware import ServiceUnavailableMiddleware
from inbox.models import HandoverRequest, InboxSession
from leads.models import LeadStatus
from outbox.models import OutboundMessage
from tests.leads.factories import LeadFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/handover"
AUDIT_INSERT = 'INSERT INTO "audit_activitylog"'


def writes_the_assignment(sql: str) -> bool:
    """The handover's last statement before COMMIT: the pick, which also writes the
    session's agent and its "session.assigned" audit row (teams.routing attaches them).
    The session, the idempotency key and the confirmation are written by then."""
    return AUDIT_INSERT in sql and "routed_agent" in sql


def caused_by(django_error: type[DatabaseError], cause: Exception) -> DatabaseError:
    """What Django raises for a driver error: its own class, the driver's as the cause."""
    error = django_error(*cause.args)
    error.__cause__ = cause
    return error


def sqlite_error(tmp_path, kind: str) -> sqlite3.OperationalError:
    """A real SQLite error: "locked" (another writer holds the lock) or "no_table"."""
    path = tmp_path / "probe.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        if kind == "locked":
            holder.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")
        else:
            other.execute("SELECT * FROM no_such_table")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        holder.close()
        other.close()
    raise AssertionError(f"SQLite raised nothing for {kind!r}")


@contextmanager
def database_failing(error, when=lambda sql: True):
    """Every statement for which `when(sql)` holds raises `error` instead of running."""

    def wrapper(execute, sql, params, many, context):
        if when(sql):
            raise error
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield


def handover(client, contact="+4915100000001", **headers):
    return client.post(URL, {"contactId": contact}, format="json", **headers)


def rows_written(tenant) -> dict:
    return {
        "sessions": InboxSession.objects.for_tenant(tenant).count(),
        "idempotency keys": HandoverRequest.all_tenants.filter(tenant=tenant).count(),
        "messages": OutboundMessage.all_tenants.filter(tenant=tenant).count(),
        "activity": ActivityLog.all_tenants.filter(
            tenant=tenant, action__startswith="session."
        ).count(),
    }


NOTHING = {"sessions": 0, "idempotency keys": 0, "messages": 0, "activity": 0}


def assert_service_unavailable(response, what="database", seconds=5):
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == str(seconds)
    assert json.loads(response.content) == {
        "error": {
            "code": "service_unavailable",
            "message": f"The {what} is unavailable for the moment; try again in {seconds} seconds.",
        }
    }


# --- the API -------------------------------------------------------------------------------

OUTAGES = {
    "connection refused": lambda _: caused_by(
        OperationalError,
        psycopg.OperationalError(
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            "Connection refused"
        ),
    ),
    "connection closed": lambda _: caused_by(
        InterfaceError, psycopg.InterfaceError("the connection is closed")
    ),
    "statement timeout": lambda _: caused_by(
        OperationalError,
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    ),
    "deadlock": lambda _: caused_by(
        OperationalError, psycopg.errors.DeadlockDetected("deadlock detected")
    ),
    "serialization failure": lambda _: caused_by(
        OperationalError,
        psycopg.errors.SerializationFailure("could not serialize access"),
    ),
    "lock timeout": lambda _: caused_by(
        OperationalError,
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
    ),
    "server shutting down": lambda _: caused_by(
        OperationalError,
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    ),
    "too many connections": lambda _: caused_by(
        OperationalError, psycopg.errors.TooManyConnections("too many clients already")
    ),
    "sqlite locked": lambda tmp_path: caused_by(OperationalError, sqlite_error(tmp_path, "locked")),
}

BUGS = {
    "undefined table": lambda _: caused_by(
        ProgrammingError, psycopg.errors.UndefinedTable('relation "x" does not exist')
    ),
    "unique violation": lambda _: caused_by(
        IntegrityError, psycopg.errors.UniqueViolation("duplicate key value")
    ),
    "value out of range": lambda _: caused_by(
        DataError, psycopg.errors.NumericValueOutOfRange("integer out of range")
    ),
    "statement too complex": lambda _: caused_by(
        OperationalError, psycopg.errors.StatementTooComplex("stack depth limit exceeded")
    ),
    "sqlite no such table": lambda tmp_path: caused_by(
        OperationalError, sqlite_error(tmp_path, "no_table")
    ),
}


@pytest.mark.postgres  # the failure is injected into the pick (PostgreSQL's path)
@pytest.mark.parametrize("outage", OUTAGES)
def test_an_outage_in_the_middle_of_a_handover_answers_503_and_writes_nothing(
    outage, tenant, teammate, tenant_client, tmp_path
):
    error = OUTAGES[outage](tmp_path)

    with database_failing(error, when=writes_the_assignment):
        response = handover(tenant_client, HTTP_IDEMPOTENCY_KEY="retry-me")

    assert_service_unavailable(response)
    assert rows_written(tenant) == NOTHING

    retried = handover(tenant_client, HTTP_IDEMPOTENCY_KEY="retry-me")

    assert retried.status_code == 201, retried.content
    assert rows_written(tenant) == {
        "sessions": 1,
        "idempotency keys": 1,
        "messages": 1,
        "activity": 2,  # session.created, session.assigned
    }


@pytest.mark.postgres  # the failure is injected into the pick (PostgreSQL's path)
@pytest.mark.parametrize("bug", BUGS)
def test_a_database_bug_stays_a_500_and_writes_nothing(
    bug, tenant, teammate, tenant_client, tmp_path
):
    error = BUGS[bug](tmp_path)

    with database_failing(error, when=writes_the_assignment):
        response = handover(tenant_client)

    assert response.status_code == 500, response.content
    assert "Retry-After" not in response
    assert response.json()["error"]["code"] == "database_error"
    assert rows_written(tenant) == NOTHING


def test_the_database_down_before_the_api_key_is_checked_answers_503(tenant_client):
    with database_failing(caused_by(OperationalError, psycopg.OperationalError("refused"))):
        response = tenant_client.get("/api/v1/whoami")

    assert_service_unavailable(response)


def test_retry_after_is_a_setting(settings, tenant_client):
    settings.SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS = 30

    with database_failing(OperationalError("server closed the connection unexpectedly")):
        response = tenant_client.get("/api/v1/whoami")

    assert_service_unavailable(response, seconds=30)


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379."),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379."),
    ],
    ids=["redis refused", "redis timeout", "kombu"],
)
def test_a_broker_outage_met_in_a_request_answers_503(
    error, monkeypatch, tenant, teammate, tenant_client
):
    def broker_down(**kwargs):
        raise error

    monkeypatch.setattr("inbox.api.handover", broker_down)

    assert_service_unavailable(handover(tenant_client), what="message broker")


# --- pages outside the API ---------------------------------------------------------------


def assert_unavailable_page(response, seconds=5):
    assert response.status_code == 503, response.content[:500]
    assert response["Retry-After"] == str(seconds)
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "<h1>Temporarily unavailable</h1>" in page
    assert f"Try again in {seconds} seconds." in page


@pytest.mark.parametrize("path", ["/leads/", "/admin/", "/admin/inbox/inboxsession/"])
def test_a_page_with_the_database_down_is_a_503_page(client, owner, path):
    client.force_login(owner.user)

    with database_failing(caused_by(OperationalError, psycopg.OperationalError("refused"))):
        response = client.get(path)

    assert_unavailable_page(response)


def test_a_login_with_the_database_down_is_a_503_page(client, owner):
    with database_failing(caused_by(OperationalError, psycopg.OperationalError("refused"))):
        response = client.post(
            "/accounts/login/", {"username": owner.user.email, "password": "whatever"}
        )

    assert_unavailable_page(response)


def test_an_outage_in_a_middleware_on_the_way_out_is_a_503_page(owner, tenant):
    """Claiming stores a message in the session, which SessionMiddleware saves after the
    view: the outage happens outside any view, and Django answers it with handler500."""
    lead = LeadFactory(assigned_agent=owner)
    client = Client(raise_request_exception=False)
    client.force_login(owner.user)

    session_write = ('UPDATE "django_session"', 'INSERT INTO "django_session"')
    with database_failing(
        OperationalError("server closed the connection unexpectedly"),
        when=lambda sql: sql.startswith(session_write),
    ):
        response = client.post(f"/leads/{lead.pk}/claim/")

    assert_unavailable_page(response)
    lead.refresh_from_db()
    assert lead.status == LeadStatus.CLAIMED  # committed before the session was saved


def test_an_api_path_outside_drf_answers_in_the_api_shape():
    request = RequestFactory().get("/api/v1/anything")
    middleware = ServiceUnavailableMiddleware(lambda request: None)

    response = middleware.process_exception(request, InterfaceError("connection closed"))

    assert_service_unavailable(response)


@pytest.mark.parametrize("path", ["/api/v1/whoami", "/leads/"])
def test_handler500_answers_an_outage_raised_in_a_middleware_with_503(path):
    """Django calls handler500 inside its `except` for whatever a middleware raised."""
    request = RequestFactory().get(path)
    try:
        raise caused_by(OperationalError, psycopg.OperationalError("connection refused"))
    except OperationalError:
        response = json_or_html_500(request)

    if path.startswith("/api/"):
        assert_service_unavailable(response)
    else:
        assert_unavailable_page(response)


def test_handler500_still_answers_a_bug_with_500():
    request = RequestFactory().get("/api/v1/whoami")
    try:
        raise caused_by(ProgrammingError, psycopg.errors.UndefinedTable("no relation"))
    except ProgrammingError:
        response = json_or_html_500(request)

    assert response.status_code == 500
    assert json.loads(response.content)["error"]["code"] == "server_error"


def test_any_other_error_is_left_to_django(client):
    request = RequestFactory().get("/leads/")
    middleware = ServiceUnavailableMiddleware(lambda request: None)

    assert middleware.process_exception(request, ValueError("a bug")) is None
    assert middleware.process_exception(request, ProgrammingError("a bug")) is None


def test_healthz_with_the_database_down_is_503_with_retry_after(client, caplog):
    caplog.set_level(logging.INFO)

    with database_failing(caused_by(OperationalError, psycopg.OperationalError("refused"))):
        response = client.get("/healthz")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"]["ok"] is False
    assert body["database"]["error"] == "OperationalError"
    assert body["outbox"] == {"ok": False, "error": "database"}
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.getMessage()) for r in logged] == [
        ("WARNING", "Health check: database unreachable (OperationalError)")
    ]


# --- logging -------------------------------------------------------------------------------


@pytest.mark.postgres  # the failure is injected into the pick (PostgreSQL's path)
def test_an_outage_logs_one_warning_line_without_traceback_or_key(
    caplog, tenant, teammate, api_key, tenant_client
):
    error = caused_by(
        OperationalError,
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    )
    caplog.set_level(logging.INFO)

    with database_failing(error, when=writes_the_assignment):
        handover(tenant_client)

    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname) for r in logged] == [("core.api", "WARNING")]
    line = logged[0].getMessage()
    assert line == (
        "Service unavailable (database: psycopg.QueryCanceled [57014]: canceling statement "
        "due to statement timeout): POST /api/v1/handover"
    )
    assert logged[0].exc_info is None
    assert api_key[1] not in caplog.text


def test_an_outage_on_a_page_logs_one_warning_line(caplog, client, owner):
    client.force_login(owner.user)
    caplog.set_level(logging.INFO)

    with database_failing(OperationalError("server closed the connection unexpectedly")):
        client.get("/leads/")

    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname, r.exc_info) for r in logged] == [("core.api", "WARNING", None)]
    assert logged[0].getMessage().endswith("): GET /leads/")


@pytest.mark.postgres  # the failure is injected into the pick (PostgreSQL's path)
def test_a_bug_still_logs_its_traceback(caplog, tenant, teammate, tenant_client):
    error = caused_by(IntegrityError, psycopg.errors.UniqueViolation("duplicate key value"))

    with database_failing(error, when=writes_the_assignment):
        handover(tenant_client)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(r.exc_info and r.exc_info[0] is IntegrityError for r in errors), errors


# --- real outages on PostgreSQL ----------------------------------------------------------


@pytest.mark.postgres
def test_a_real_statement_timeout_mid_handover_answers_503_and_writes_nothing(
    tenant, teammate, tenant_client
):
    def slow_audit_insert(execute, sql, params, many, context):
        if writes_the_assignment(sql):
            execute("SET LOCAL statement_timeout = '50ms'", None, False, context)
            execute("SELECT pg_sleep(2)", None, False, context)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(slow_audit_insert):
        response = handover(tenant_client)

    assert_service_unavailable(response)
    assert rows_written(tenant) == NOTHING


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_dropped_mid_handover_answers_503_and_writes_nothing(
    tenant, teammate, tenant_client
):
    """The server ends the request's connection after the session, the idempotency key
    and the message were written, before the audit row: the transaction is lost whole."""
    from tests.e2e.processes import pg_connect

    def drop_connection_before_audit(execute, sql, params, many, context):
        if writes_the_assignment(sql):
            pid = connection.connection.info.backend_pid
            with pg_connect() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(drop_connection_before_audit):
        response = handover(tenant_client, HTTP_IDEMPOTENCY_KEY="after-the-drop")

    assert_service_unavailable(response)
    assert rows_written(tenant) == NOTHING

    retried = handover(tenant_client, HTTP_IDEMPOTENCY_KEY="after-the-drop")

    assert retried.status_code == 201, retried.content
    assert rows_written(tenant)["sessions"] == 1


@pytest.mark.parametrize("path", ["/leads/", "/admin/", "/admin/inbox/inboxsession/"])
def test_the_same_pages_answer_200_with_the_database_up(client, owner, path):
    client.force_login(owner.user)

    assert client.get(path).status_code == 200
