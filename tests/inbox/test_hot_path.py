"""Issue #10, the handover hot path: statement budget, counters kept by every service that
assigns, moves or closes a session (and repaired by reconcile_counters), the routing
cache's lifetime, and round robin and capacity under concurrency in a 2,000-agent team."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from psycopg import _queries as psycopg_queries
from rest_framework.test import APIClient

from core.actor import Actor
from inbox.models import InboxSession, SessionNotice
from inbox.services import assign_session_to, close_session, run_session_assignment
from teams.models import Membership, Strategy, TeamMember, User
from teams.routing import config as routing_config
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
)

URL = "/api/v1/handover"
BUDGET = 6  # BEGIN and COMMIT included (issue #10)


def counts(*agents):
    return [
        Membership.objects.for_tenant(a.tenant_id).get(pk=a.pk).open_session_count for a in agents
    ]


# --- prepared statements ------------------------------------------------------------------


def prepared_statements() -> dict:
    """This connection's prepared statements: {statement: times run}."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        return dict(cursor.fetchall())


def runs_of(prepared: dict, start: str) -> int:
    return sum(runs for statement, runs in prepared.items() if statement.startswith(start))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_connection_plans_the_handovers_statement_once_and_reuses_it(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    for n in range(12):
        response = tenant_client.post(URL, {"contactId": f"c-{n}"}, format="json")
        assert response.status_code == 201 and response.json()["status"] == "assigned"

    prepared = prepared_statements()
    # psycopg prepares a statement on its 5th run: of 12 runs, the last 7 or 8 reuse it.
    assert runs_of(prepared, "WITH routing_lock AS (") >= 7, prepared


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_handovers_statements_keep_their_converted_text_in_psycopgs_cache(
    tenant, tenant_client
):
    """psycopg converts the text of a statement again on every run unless it is within
    its cache's limits (core.statement_cache raises them): the handover's statement
    (NULLs written into its text, to keep the parameters few) fits them."""
    MembershipFactory(tenant=tenant)
    seen = []

    def record(execute, sql, params, many, context):
        seen.append((sql, len(params or ())))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        response = tenant_client.post(URL, {"contactId": "c-1"}, format="json")
    assert response.status_code == 201 and response.json()["status"] == "assigned"

    handover_statements = [
        (len(sql.encode()), count) for sql, count in seen if sql.startswith("WITH routing_lock")
    ]
    assert handover_statements, seen  # twice: the pool's first pick creates its cursor
    length, params = max(handover_statements)
    assert length <= psycopg_queries.MAX_CACHED_STATEMENT_LENGTH
    assert params <= psycopg_queries.MAX_CACHED_STATEMENT_PARAMS
    # ... and psycopg does remember it: a second handover converts nothing again.
    misses = psycopg_queries._query2pg.cache_info().misses
    assert tenant_client.post(URL, {"contactId": "c-2"}, format="json").status_code == 201
    assert psycopg_queries._query2pg.cache_info().misses == misses


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_prepared_statements_can_be_turned_off_for_poolers_in_transaction_mode(
    tenant, tenant_client
):
    """DB_PREPARED_STATEMENTS=false (PgBouncer in transaction mode): nothing is prepared."""
    MembershipFactory(tenant=tenant)
    connection.close()
    options = connection.settings_dict["OPTIONS"]
    saved = options.get("prepare_threshold")
    options["prepare_threshold"] = None
    try:
        for n in range(8):
            assert (
                tenant_client.post(URL, {"contactId": f"c-{n}"}, format="json").status_code == 201
            )
        assert prepared_statements() == {}
    finally:
        connection.close()
        options["prepare_threshold"] = saved


# --- the statement budget ---------------------------------------------------------------


# The budget is PostgreSQL's: SQLite (embedded mode) has no data-modifying CTEs and runs
# the same steps as separate statements.
@pytest.mark.postgres
@pytest.mark.parametrize("strategy", [Strategy.ROUND_ROBIN, Strategy.LEAST_BUSY])
@pytest.mark.parametrize("team_size", [1, 300])
@pytest.mark.django_db(transaction=True)
def test_new_session_handover_is_the_pools_lock_then_one_statement(
    tenant, tenant_client, strategy, team_size
):
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=strategy)
    for _ in range(team_size):
        TeamMemberFactory(team=team)
    tenant_client.post(URL, {"contactId": "warm-up", "teamId": str(team.id)}, format="json")

    with CaptureQueriesContext(connection) as captured:
        response = tenant_client.post(
            URL, {"contactId": "measured", "teamId": str(team.id)}, format="json"
        )

    statements = [q["sql"] for q in captured.captured_queries]
    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["confirmationMessage"]) == ("assigned", "queued")
    assert len(statements) <= BUDGET, statements
    # The pool's cursor is locked, then the pick inserts the session and everything
    # with it: one round trip and one implicit transaction (no BEGIN or COMMIT), so the
    # pool's lock lasts those two statements (core.locked_statement).
    assert len(statements) == 2, statements
    assert statements[0].startswith("SELECT 1 FROM teams_roundrobincursor"), statements
    assert statements[0].endswith("FOR UPDATE")
    assert "FOR UPDATE" in statements[1] and "routing_lock" in statements[1]
    # What a user sees of it: the session, its activity, the agent's notice, the message.
    session = InboxSession.objects.for_tenant(tenant).get(pk=body["sessionId"])
    agent_id = body["assignedAgent"]["id"]
    assert str(session.assigned_agent_id) == agent_id
    assert session.last_assignment_attempt["agentId"] == agent_id
    assert session.last_assignment_attempt["tier"] == "team"
    assert session.confirmation_message.payload["session_id"] == str(session.pk)
    notice = SessionNotice.all_tenants.get(session=session)
    assert str(notice.recipient_id) == agent_id
    from audit.models import ActivityLog

    actions = ActivityLog.objects.for_tenant(tenant).filter(target_id=str(session.pk))
    assigned = actions.get(action="session.assigned")
    assert assigned.data["agent_id"] == agent_id
    assert assigned.data["agent_email"] == body["assignedAgent"]["email"]
    assert actions.filter(action="session.created").count() == 1


@pytest.mark.postgres
@pytest.mark.parametrize("wants_email", [True, False])
@pytest.mark.django_db(transaction=True)
def test_the_agents_notice_and_email_are_part_of_the_pick_statement(
    tenant, tenant_client, wants_email
):
    from outbox.models import OutboundMessage

    agent = MembershipFactory(tenant=tenant, email_on_conversation=wants_email)
    tenant_client.post(URL, {"contactId": "warm-up"}, format="json")

    with CaptureQueriesContext(connection) as captured:
        response = tenant_client.post(URL, {"contactId": "c-1", "name": "Jane"}, format="json")

    assert response.status_code == 201
    assert [q["sql"].split()[0] for q in captured.captured_queries] == ["SELECT", "WITH"]
    notice = SessionNotice.all_tenants.get(session_id=response.json()["sessionId"])
    assert (notice.recipient_id, notice.title) == (agent.pk, "New conversation: Jane")
    emails = OutboundMessage.all_tenants.filter(channel="email", kind="inbox.session_assigned")
    if not wants_email:
        assert notice.email_message_id is None
        assert not emails.exists()
        return
    email = emails.get(payload__notice_id=str(notice.pk))
    assert notice.email_message_id == email.pk
    assert email.target == agent.user.email
    assert email.idempotency_key == f"session-notice/{notice.pk}"
    from inbox.notices import render_for_outbox

    assert "Jane" in render_for_outbox(email).subject


@pytest.mark.postgres
@pytest.mark.parametrize("why", ["idempotency_key", "webhooks", "both"])
@pytest.mark.django_db(transaction=True)
def test_a_handover_with_more_to_write_locks_the_pool_for_its_last_statement_only(
    tenant, tenant_client, why
):
    """An Idempotency-Key (its record) or the tenant's webhooks (their messages) add
    writes: one transaction, within the budget, whose last statement before COMMIT is
    the pick (which writes them too), so the pool's lock is held for that one statement."""
    MembershipFactory(tenant=tenant)
    headers = {}
    if why in ("webhooks", "both"):
        from webhooks.services import create_endpoint

        create_endpoint(
            tenant=tenant,
            url="https://mine.example.com/in",
            events=["session.assigned"],
            actor=Actor.system(),
        )
    tenant_client.post(URL, {"contactId": "warm-up"}, format="json")

    with CaptureQueriesContext(connection) as captured:
        if why in ("idempotency_key", "both"):
            headers["HTTP_IDEMPOTENCY_KEY"] = "k-1"
        response = tenant_client.post(URL, {"contactId": "measured"}, format="json", **headers)

    assert response.status_code == 201 and response.json()["status"] == "assigned"
    statements = [q["sql"] for q in captured.captured_queries]
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT", statements
    assert len(statements) <= BUDGET, statements
    picks = [n for n, sql in enumerate(statements) if "routing_lock" in sql]
    assert picks == [len(statements) - 2], statements
    if why in ("webhooks", "both"):
        from outbox.models import OutboundMessage

        assert OutboundMessage.all_tenants.filter(channel="webhook").count() == 2
    if why in ("idempotency_key", "both"):
        replay = tenant_client.post(URL, {"contactId": "measured"}, format="json", **headers)
        assert replay["Idempotent-Replayed"] == "true"
        assert (replay.status_code, replay.json()) == (201, response.json())


@pytest.mark.postgres
@pytest.mark.parametrize("full_name", ['Zoë "Z" O\'Brien \\ 東京 </script> \u2028', ""])
@pytest.mark.django_db(transaction=True)
def test_what_the_pick_writes_about_its_agent_is_what_the_answer_says(
    tenant, tenant_client, full_name
):
    """The webhook events and the answer to replay are written by the pick statement,
    which alone knows whom it picked: the agent's id, name (the email when there is no
    name) and email in them are the answer's, whatever characters they hold."""
    from outbox.models import OutboundMessage
    from webhooks.services import create_endpoint

    agent = MembershipFactory(
        tenant=tenant, user__full_name=full_name, user__email='o\'brien+"1"@example.com'
    )
    create_endpoint(
        tenant=tenant, url="https://mine.example.com/in", events=None, actor=Actor.system()
    )
    headers = {"HTTP_IDEMPOTENCY_KEY": "k-names"}

    response = tenant_client.post(URL, {"contactId": "+49151"}, format="json", **headers)

    assert response.status_code == 201, response.content
    answer = response.json()
    assert answer["assignedAgent"] == {
        "id": str(agent.pk),
        "name": full_name or agent.user.email,
        "email": agent.user.email,
    }
    hooks = OutboundMessage.all_tenants.filter(channel="webhook").order_by("created_at")
    assert sorted(m.kind for m in hooks) == ["session.assigned", "session.created"]
    bodies = {m.kind: json.loads(m.payload["body"]) for m in hooks}
    for body in bodies.values():
        assert body["data"]["assignedAgent"] == answer["assignedAgent"]
        assert body["data"]["sessionId"] == answer["sessionId"]
    replay = tenant_client.post(URL, {"contactId": "+49151"}, format="json", **headers)
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == answer


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_handover_without_team_fits_the_budget_too(tenant, tenant_client):
    for _ in range(50):
        MembershipFactory(tenant=tenant)
    tenant_client.post(URL, {"contactId": "warm-up"}, format="json")

    with CaptureQueriesContext(connection) as captured:
        response = tenant_client.post(URL, {"contactId": "measured"}, format="json")

    assert response.json()["status"] == "assigned"
    assert len(captured.captured_queries) <= BUDGET


# --- a contact who has an open session ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_handover_for_an_open_session_costs_the_pool_nothing(tenant, tenant_client):
    """The new-session statement fails on the contact's open session and is rolled back
    (the pick in it included) before the session is reused: the rotation, the counters
    and the records are as if it had never run."""
    first, second = sorted(
        (MembershipFactory(tenant=tenant) for _ in range(2)), key=lambda agent: agent.pk
    )
    opened = tenant_client.post(URL, {"contactId": "c-1"}, format="json").json()
    assert opened["assignedAgent"]["id"] == str(first.pk)

    again = tenant_client.post(URL, {"contactId": "c-1", "name": "Jane"}, format="json")
    assert again.status_code == 200, again.content
    assert again.json()["sessionId"] == opened["sessionId"]
    assert again.json()["assignedAgent"]["id"] == str(first.pk)

    # The rotation did not move: the next new contact goes to the second agent.
    other = tenant_client.post(URL, {"contactId": "c-2"}, format="json").json()
    assert other["assignedAgent"]["id"] == str(second.pk)
    assert counts(first, second) == [1, 1]
    session = InboxSession.objects.for_tenant(tenant).get(pk=opened["sessionId"])
    assert session.contact_name == "Jane"
    assert SessionNotice.all_tenants.filter(session=session).count() == 1
    from audit.models import ActivityLog

    actions = ActivityLog.objects.for_tenant(tenant).filter(target_id=str(session.pk))
    assert sorted(actions.values_list("action", flat=True)) == [
        "session.assigned",
        "session.created",
    ]


@pytest.mark.django_db(transaction=True)
def test_an_idempotency_key_survives_the_retry_of_a_reused_session(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    opened = tenant_client.post(URL, {"contactId": "c-1"}, format="json").json()
    headers = {"HTTP_IDEMPOTENCY_KEY": "retry-1"}
    again = tenant_client.post(URL, {"contactId": "c-1"}, format="json", **headers)
    replay = tenant_client.post(URL, {"contactId": "c-1"}, format="json", **headers)
    assert again.status_code == replay.status_code == 200
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.json() == again.json()
    assert again.json()["sessionId"] == opened["sessionId"]


# --- counters ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_open_session_count_follows_every_assignment_move_and_close(tenant, tenant_client):
    team = TeamFactory(tenant=tenant)
    ann, bob = (TeamMemberFactory(team=team).membership for _ in range(2))
    first = tenant_client.post(URL, {"contactId": "c1", "teamId": str(team.id)}, format="json")
    second = tenant_client.post(URL, {"contactId": "c2", "teamId": str(team.id)}, format="json")
    assert counts(ann, bob) == [1, 1]

    session_id = first.json()["sessionId"]
    holder = first.json()["assignedAgent"]["id"]
    other = bob if holder == str(ann.pk) else ann
    assign_session_to(tenant=tenant, session_id=session_id, agent=other, actor=Actor.system())
    assert sorted(counts(ann, bob)) == [0, 2], "moved: one less for one, one more for the other"

    close_session(tenant=tenant, session_id=session_id, actor=Actor.system())
    close_session(tenant=tenant, session_id=session_id, actor=Actor.system())  # no-op
    assert counts(ann, bob) == [1, 1] or sorted(counts(ann, bob)) == [0, 1]
    close_session(tenant=tenant, session_id=second.json()["sessionId"], actor=Actor.system())
    assert counts(ann, bob) == [0, 0]


@pytest.mark.django_db
def test_a_retried_session_is_counted_and_noticed(tenant, tenant_client):
    agent = MembershipFactory(tenant=tenant, presence="away")
    body = tenant_client.post(URL, {"contactId": "c1"}, format="json").json()
    assert body["status"] == "unassigned"
    Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(presence="online")

    session = run_session_assignment(
        tenant=tenant, session_id=body["sessionId"], actor=Actor.system(), trigger="retry"
    )

    assert session.assigned_agent_id == agent.pk
    assert counts(agent) == [1]
    assert SessionNotice.all_tenants.filter(session=session, recipient=agent).count() == 1


@pytest.mark.django_db
def test_capacity_is_read_from_the_counter(tenant, tenant_client):
    agent = MembershipFactory(tenant=tenant, capacity=1)
    assert tenant_client.post(URL, {"contactId": "a"}, format="json").json()["status"] == (
        "assigned"
    )
    full = tenant_client.post(URL, {"contactId": "b"}, format="json").json()
    assert full["unassignedReason"] == "all_at_capacity"

    close_session(
        tenant=tenant,
        session_id=InboxSession.objects.for_tenant(tenant).get(contact_id="a").pk,
        actor=Actor.system(),
    )
    assert counts(agent) == [0]
    assert tenant_client.post(URL, {"contactId": "c"}, format="json").json()["status"] == (
        "assigned"
    )


@pytest.mark.django_db
def test_reconcile_counters_reports_and_repairs_both_counters(tenant, tenant_client):
    agent = MembershipFactory(tenant=tenant)
    tenant_client.post(URL, {"contactId": "c1"}, format="json")
    tenant_client.post(URL, {"contactId": "c2"}, format="json")
    Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(
        open_session_count=7, current_lead_count=3
    )

    report = StringIO()
    call_command("reconcile_counters", stdout=report)
    assert "open sessions: stored 7, actual 2" in report.getvalue()
    assert "open leads: stored 3, actual 0" in report.getvalue()
    assert counts(agent) == [7], "without --fix nothing is written"

    call_command("reconcile_counters", "--fix", "--tenant", tenant.slug, stdout=StringIO())
    agent.refresh_from_db()
    assert (agent.open_session_count, agent.current_lead_count) == (2, 0)
    clean = StringIO()
    call_command("reconcile_counters", stdout=clean)
    assert "No drift" in clean.getvalue()


# --- the routing cache ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_config_change_shows_up_at_once_in_this_process(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    assert tenant_client.post(URL, {"contactId": "a"}, format="json").json()["status"] == (
        "assigned"
    )
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)  # saved: dropped

    body = tenant_client.post(URL, {"contactId": "b"}, format="json").json()

    assert body["unassignedReason"] == "manual_strategy"


@pytest.mark.django_db
def test_a_change_made_elsewhere_shows_up_within_the_lifetime(tenant, tenant_client, monkeypatch):
    MembershipFactory(tenant=tenant)
    config = AssignmentConfigFactory(tenant=tenant, strategy=Strategy.ROUND_ROBIN)
    clock = [1_000_000.0]
    monkeypatch.setattr(routing_config.time, "time", lambda: clock[0])
    tenant_client.post(URL, {"contactId": "a"}, format="json")  # cached now
    # Another process changes the config: no signal reaches this one.
    type(config).all_tenants.filter(pk=config.pk).update(strategy=Strategy.MANUAL)

    clock[0] += routing_config.CACHE_SECONDS - 0.5
    still = tenant_client.post(URL, {"contactId": "b"}, format="json").json()
    clock[0] += 1
    after = tenant_client.post(URL, {"contactId": "c"}, format="json").json()

    assert still["status"] == "assigned", "within its lifetime the entry is used"
    assert after["unassignedReason"] == "manual_strategy", "after it, the change applies"


@pytest.mark.django_db
def test_made_up_team_ids_do_not_fill_the_cache(tenant, tenant_client):
    import uuid

    routing_config.forget_all()
    for _ in range(50):
        response = tenant_client.post(
            URL, {"contactId": "x", "teamId": str(uuid.uuid4())}, format="json"
        )
        assert response.status_code == 404
    assert len(routing_config._entries.get(tenant.pk, {})) <= 2  # the tenant's own rows


@pytest.mark.django_db
def test_expired_entries_leave_when_the_tenant_is_cached_again(tenant, monkeypatch):
    clock = [1_000_000.0]
    monkeypatch.setattr(routing_config.time, "time", lambda: clock[0])
    routing_config.forget_all()
    teams = [TeamFactory(tenant=tenant) for _ in range(3)]
    for team in teams:
        routing_config.team_snapshot(tenant.pk, team.pk)
    clock[0] += routing_config.CACHE_SECONDS + 1
    routing_config.team_snapshot(tenant.pk, teams[0].pk)
    assert len(routing_config._entries[tenant.pk]) == 1


# --- 2,000 agents, real threads ---------------------------------------------------------


def _big_team(tenant, size, **membership):
    team = TeamFactory(tenant=tenant)
    users = User.objects.bulk_create(
        [User(email=f"agent{n}@big.test", full_name=f"Agent {n}") for n in range(size)]
    )
    agents = Membership.all_tenants.bulk_create(
        [Membership(tenant=tenant, user=user, **membership) for user in users]
    )
    TeamMember.all_tenants.bulk_create(
        [TeamMember(tenant=tenant, team=team, membership=agent) for agent in agents]
    )
    return team, agents


def _post(api_key, body):
    client = APIClient()
    try:
        response = client.post(URL, body, format="json", HTTP_X_API_KEY=api_key)
        return response.status_code, response.json()
    finally:
        connection.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_round_robin_over_2000_agents_is_exactly_fair_under_16_clients(tenant, api_key):
    team, agents = _big_team(tenant, 2000)
    online = sorted(agents[:16], key=lambda a: str(a.pk))
    # 16 online agents among 2,000: the pick walks past the 1,984 away ones by index.
    Membership.objects.for_tenant(tenant).exclude(pk__in=[a.pk for a in online]).update(
        presence="away"
    )
    bodies = [
        {"contactId": f"c{n}", "teamId": str(team.id), "sendHandoverMessage": False}
        for n in range(160)
    ]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda body: _post(api_key[1], body), bodies))

    assert Counter(status for status, _ in results) == {201: 160}
    per_agent = Counter(body["assignedAgent"]["id"] for _, body in results)
    assert per_agent == {str(agent.pk): 10 for agent in online}
    assert counts(*online) == [10] * 16


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_capacity_holds_in_a_2000_agent_team_under_16_clients(tenant, api_key):
    team, agents = _big_team(tenant, 2000, capacity=1)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=Strategy.LEAST_BUSY)
    Membership.objects.for_tenant(tenant).exclude(pk__in=[a.pk for a in agents[:5]]).update(
        presence="away"
    )
    bodies = [
        {"contactId": f"c{n}", "teamId": str(team.id), "sendHandoverMessage": False}
        for n in range(40)
    ]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda body: _post(api_key[1], body), bodies))

    statuses = Counter(body["status"] for _, body in results)
    assert statuses == {"assigned": 5, "unassigned": 35}
    held = Counter(
        InboxSession.objects.for_tenant(tenant)
        .filter(assigned_agent__isnull=False)
        .values_list("assigned_agent_id", flat=True)
    )
    assert sorted(held.values()) == [1] * 5
    assert counts(*agents[:5]) == [1] * 5
