"""Outages against a running server: gunicorn reaches PostgreSQL through a local TCP proxy
that the test cuts, black-holes and restores, and a broker that is not there at all.

What a caller notices: while the database cannot be reached every request answers
`503 service_unavailable` with Retry-After, soon (a refused connection fails at once, a
black-holed one after connect_timeout), never a 500; once it is back, requests succeed
again on their own; and every handover either happened whole or not at all, also the one
whose connection was cut in the middle of its transaction. A broker that cannot be
reached costs a handover nothing.
"""

from urllib.parse import quote

import pytest
import requests
from django.conf import settings
from django.test import Client

from audit.models import ActivityLog
from core.actor import Actor
from inbox.models import HandoverRequest, InboxSession
from outbox.models import OutboundMessage
from teams.models import Role
from teams.services import create_api_key
from tests.e2e.processes import TcpProxy, free_port, processes, wait_until
from tests.factories import MembershipFactory, TenantFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

URL = "/api/v1/handover"
AUDIT_INSERT = b'INSERT INTO "audit_activitylog"'
# A request during an outage must be answered within this long (a refused connection
# fails at once; a black-holed one after the 2 s connect_timeout given to gunicorn).
ANSWER_TIMEOUT = 15


def database_url_through(port: int, **options: str) -> str:
    db = settings.DATABASES["default"]
    user = quote(db.get("USER") or "", safe="")
    password = db.get("PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"postgres://{credentials}127.0.0.1:{port}/{quote(db['NAME'], safe='')}?{query}"


@pytest.fixture
def proxy():
    db = settings.DATABASES["default"]
    server = TcpProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
    yield server
    server.close()


@pytest.fixture
def procs(proxy):
    with processes() as group:
        yield group


def start_gunicorn(procs, **env: str):
    """gunicorn with two workers; its base URL and its process (for its log)."""
    return procs.gunicorn(**env)


class Caller:
    """Hands conversations over, one new contact each, and keeps every answer."""

    def __init__(self, base: str, api_key: str):
        self.base = base
        self.api_key = api_key
        self.answers: dict[str, requests.Response] = {}
        self.count = 0

    def handover(self, **headers: str) -> requests.Response:
        self.count += 1
        contact = f"+49170{self.count:07d}"
        response = requests.post(
            f"{self.base}{URL}",
            json={"contactId": contact},
            headers={"X-API-Key": self.api_key, **headers},
            timeout=ANSWER_TIMEOUT,
        )
        self.answers[contact] = response
        return response


def assert_service_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:500])
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "service_unavailable", response.text


def assert_whole_or_nothing(tenant, answers: dict[str, requests.Response]) -> dict:
    """Each contact has its session, confirmation and audit rows, or none of them; a
    contact answered 2xx has them all. How many of each kind of answer there were."""
    sessions = set(InboxSession.objects.for_tenant(tenant).values_list("contact_id", flat=True))
    messages = set(
        OutboundMessage.all_tenants.filter(tenant=tenant).values_list("target", flat=True)
    )
    sessions_audited = set(
        str(pk)
        for pk in ActivityLog.all_tenants.filter(
            tenant=tenant, action="session.created"
        ).values_list("target_id", flat=True)
    )
    audited = set(
        InboxSession.objects.for_tenant(tenant)
        .filter(pk__in=list(sessions_audited))
        .values_list("contact_id", flat=True)
    )
    for contact, response in answers.items():
        written = (contact in sessions, contact in messages, contact in audited)
        assert written in ((True, True, True), (False, False, False)), (contact, written)
        if response.status_code in (200, 201):
            assert written == (True, True, True), contact
    assert sessions <= set(answers), "a session for a contact nobody handed over"
    statuses = [response.status_code for response in answers.values()]
    return {status: statuses.count(status) for status in sorted(set(statuses))}


@pytest.fixture
def tenant_and_key():
    tenant = TenantFactory()
    MembershipFactory(tenant=tenant)
    _, key = create_api_key(tenant=tenant, name="e2e", actor=Actor.system())
    return tenant, key


def test_a_cut_database_answers_503_then_recovers_with_nothing_half_written(
    procs, proxy, tenant_and_key
):
    tenant, key = tenant_and_key
    owner = MembershipFactory(tenant=tenant, role=Role.ADMIN, user__is_staff=True)
    browser = Client()
    browser.force_login(owner.user)
    session_cookie = {"sessionid": browser.cookies["sessionid"].value}
    base, web = start_gunicorn(
        procs,
        DATABASE_URL=database_url_through(proxy.port, connect_timeout="2"),
        REDIS_URL="",  # embedded mode: this test is about the database
    )
    caller = Caller(base, key)

    for _ in range(6):  # both workers hold a connection through the proxy
        assert caller.handover().status_code == 201
    assert requests.get(f"{base}/leads/", cookies=session_cookie, timeout=10).status_code == 200

    # 1. Refused: every open connection is closed and nothing listens on the port.
    proxy.cut()
    for _ in range(10):
        assert_service_unavailable(caller.handover())
    page = requests.get(f"{base}/leads/", cookies=session_cookie, timeout=ANSWER_TIMEOUT)
    assert page.status_code == 503
    assert page.headers["Retry-After"] == "5"
    assert "Temporarily unavailable" in page.text
    admin = requests.get(f"{base}/admin/", cookies=session_cookie, timeout=ANSWER_TIMEOUT)
    assert admin.status_code == 503
    health = requests.get(f"{base}/healthz", timeout=ANSWER_TIMEOUT)
    assert health.status_code == 503
    assert health.headers["Retry-After"] == "5"
    assert health.json()["status"] == "unavailable"
    assert health.json()["database"]["ok"] is False

    # 2. Back: requests succeed again by themselves.
    proxy.restore()
    wait_until(
        lambda: caller.handover().status_code == 201,
        timeout=10,
        every=0.2,
        what="a handover succeeds once the database is back",
    )
    for _ in range(4):
        assert caller.handover().status_code == 201

    # 3. Black-holed: connections are accepted and never answered; gunicorn gives up
    # after connect_timeout.
    proxy.black_hole()
    for _ in range(3):
        assert_service_unavailable(caller.handover())
    proxy.restore()
    wait_until(
        lambda: caller.handover().status_code == 201,
        timeout=10,
        every=0.2,
        what="a handover succeeds once the database answers again",
    )

    # 4. Cut in the middle of a transaction: the session, its idempotency key and its
    # confirmation are written, the audit row never reaches the server.
    proxy.cut_when_sent(AUDIT_INSERT)
    cut_mid_transaction = caller.handover(**{"Idempotency-Key": "cut-mid-transaction"})
    assert_service_unavailable(cut_mid_transaction)
    assert proxy.trigger is None, "the proxy never saw the audit INSERT"
    proxy.restore()
    wait_until(
        lambda: caller.handover().status_code == 201,
        timeout=10,
        every=0.2,
        what="a handover succeeds after the mid-transaction cut",
    )
    assert not HandoverRequest.all_tenants.filter(key="cut-mid-transaction").exists()
    # Logged as the connection lost mid-statement, not as the reconnect Django tries
    # while leaving the atomic block.
    assert web.matching(r"Service unavailable \(database: .*server closed the connection")

    answers = assert_whole_or_nothing(tenant, caller.answers)
    print(f"answers by status: {answers}")
    assert set(answers) == {201, 503}, answers
    assert answers[503] >= 14
    assert InboxSession.objects.for_tenant(tenant).count() == answers[201]
    # One warning line per 503 (14 handovers, 2 pages, 1 health check; a wait_until may
    # have added some), no error and no traceback.
    assert len(web.matching(r"WARNING .*(Service unavailable|Health check)")) >= 17
    assert not web.matching(r" ERROR |Traceback| 500 ")


def test_an_unreachable_broker_costs_a_handover_nothing(procs, tenant_and_key):
    tenant, key = tenant_and_key
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    base, _ = start_gunicorn(procs, REDIS_URL=nothing_listens)
    caller = Caller(base, key)

    for _ in range(20):
        response = caller.handover()
        assert response.status_code == 201, response.text
        assert response.json()["confirmationMessage"] == "queued"

    health = requests.get(f"{base}/healthz", timeout=10).json()
    assert health["status"] == "degraded"
    assert health["broker"]["ok"] is False
    assert assert_whole_or_nothing(tenant, caller.answers) == {201: 20}


def test_a_broker_that_stops_costs_a_handover_nothing(procs, tenant_and_key):
    tenant, key = tenant_and_key
    redis = procs.redis()
    base, _ = start_gunicorn(procs, REDIS_URL=redis.url)
    caller = Caller(base, key)
    assert caller.handover().status_code == 201

    redis.stop()
    for _ in range(10):
        response = caller.handover()
        assert response.status_code == 201, response.text

    assert assert_whole_or_nothing(tenant, caller.answers) == {201: 11}
