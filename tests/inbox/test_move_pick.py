"""Issue #10 for the moves of an open session to an agent the engine picks (a transfer
to a team, the accept sweep moving a missed session on, the admin's "Redistribute"): on
PostgreSQL every write about the move (the previous agent's counter, the session, the
activity, the new agent's notice and email, the webhook event) is attached to the pick,
the transaction's last statement, so the pool's lock is held from it to COMMIT alone.

Each move runs twice on two tenants set up alike: attached to the pick, and in Python
after it (as on SQLite); what each wrote, ids and times aside, is the same."""

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import ActivityLog
from core.actor import Actor
from inbox import services as inbox_services
from inbox.acceptance import sweep_accept_windows, transfer_session
from inbox.models import InboxSession, SessionNotice
from inbox.redistribution import redistribute_sessions
from outbox.models import OutboundMessage
from teams.models import Membership, Presence, Role
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory, TenantFactory
from tests.inbox.factories import InboxSessionFactory
from webhooks.services import create_endpoint

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TIMES = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
OTHER_IDS = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")


class Scene:
    """A tenant with a 10-minute accept window and a webhook endpoint; a team of two
    online agents, Ann and Bob; an admin. Ann has the open session."""

    def __init__(self, name: str):
        self.name = name
        self.tenant = TenantFactory(
            name=name, slug=name, session_accept_window_minutes=10, session_accept_max_misses=3
        )
        create_endpoint(tenant=self.tenant, actor=Actor.system(), url="https://hooks.example.test/")
        self.admin = self.person("admin", "Ada Admin", role=Role.ADMIN)
        self.team = TeamFactory(tenant=self.tenant, name="Support")
        self.ann = self.person("ann", "Ann O'Neil \u2028", email_on_conversation=True)
        self.bob = self.person("bob", 'Bob "B" </script>', email_on_conversation=True)
        for agent in (self.ann, self.bob):
            TeamMemberFactory(tenant=self.tenant, team=self.team, membership=agent)
        now = timezone.now()
        self.session = InboxSessionFactory(
            tenant=self.tenant,
            team=self.team,
            contact_id="+4915100000001",
            contact_name="Jane Roe",
            assigned_agent=self.ann,
            assigned_at=now,
            strategy="round_robin",
            accept_deadline=now + timedelta(minutes=10),
            confirmation=False,
        )
        Membership.objects.for_tenant(self.tenant).filter(pk=self.ann.pk).update(
            open_session_count=1
        )

    def person(self, label: str, full_name: str, **fields) -> Membership:
        return MembershipFactory(
            tenant=self.tenant,
            user__email=f"{label}@{self.name}.test",
            user__full_name=full_name,
            presence=Presence.ONLINE,
            **fields,
        )

    def labels(self) -> dict[str, str]:
        return {
            str(self.tenant.pk): "<tenant>",
            str(self.team.pk): "<team>",
            str(self.admin.pk): "<admin>",
            str(self.ann.pk): "<ann>",
            str(self.bob.pk): "<bob>",
            str(self.session.pk): "<session>",
            f"@{self.name}.test": "@tenant.test",
        }

    def written(self) -> dict:
        """What the move wrote, with ids named and times left out."""
        session = InboxSession.all_tenants.get(pk=self.session.pk)
        attempt = dict(session.last_assignment_attempt or {})
        attempt.pop("at", None)
        notices = SessionNotice.all_tenants.filter(session=session).order_by("kind", "created_at")
        emails = OutboundMessage.all_tenants.filter(tenant=self.tenant, channel="email")
        hooks = OutboundMessage.all_tenants.filter(tenant=self.tenant, channel="webhook")
        state = {
            "session": {
                "agent": str(session.assigned_agent_id),
                "strategy": session.strategy,
                "reason": session.unassigned_reason,
                "window": str(session.accept_deadline - session.assigned_at),
                "accepted": session.accepted_at,
                "team": str(session.team_id),
                "misses": session.accept_misses,
                "missed": session.missed_agent_ids,
                "attempt": attempt,
            },
            "counters": {
                str(m.pk): m.open_session_count
                for m in Membership.objects.for_tenant(self.tenant).order_by("pk")
            },
            "activities": sorted(
                (a.action, a.actor_label, json.dumps(a.data, sort_keys=True))
                for a in ActivityLog.all_tenants.filter(target_id=str(session.pk))
            ),
            "notices": [
                (str(n.recipient_id), n.kind, n.title, n.body, n.dedupe_key, n.email_message_id)
                for n in notices
            ],
            "emails": sorted(
                (e.target, e.kind, e.idempotency_key.split("/")[1], e.payload["notice_id"])
                for e in emails
            ),
            "events": sorted(
                (h.kind, json.dumps(json.loads(h.payload["body"])["data"], sort_keys=True))
                for h in hooks
            ),
        }
        # The email a notice points at is one of the emails, whatever its id.
        email_ids = {str(e.pk) for e in emails}
        notice_ids = {str(n.pk) for n in notices}
        for notice in state["notices"]:
            assert notice[5] is None or str(notice[5]) in email_ids
        for email in state["emails"]:
            assert email[3] in notice_ids
        state["notices"] = [(*n[:5], n[5] is not None) for n in state["notices"]]
        state["emails"] = [e[:3] for e in state["emails"]]
        text = TIMES.sub("<time>", json.dumps(state, sort_keys=True, default=str))
        for raw, label in self.labels().items():
            text = text.replace(raw, label)
        return json.loads(OTHER_IDS.sub("<id>", text))  # rows of its own, such as a notice


def transfer(scene: Scene):
    return transfer_session(
        tenant=scene.tenant,
        session_id=scene.session.pk,
        actor=Actor.for_membership(scene.admin, via="agent_page"),
        to_team=scene.team,
    )


def sweep(scene: Scene):
    InboxSession.all_tenants.filter(pk=scene.session.pk).update(
        accept_deadline=timezone.now() - timedelta(seconds=1)
    )
    return sweep_accept_windows()


def redistribute(scene: Scene):
    Membership.objects.for_tenant(scene.tenant).filter(pk=scene.ann.pk).update(
        presence=Presence.OFFLINE
    )
    return redistribute_sessions(
        tenant=scene.tenant, agent=scene.ann, actor=Actor.for_membership(scene.admin)
    )


MOVES = {"transfer to a team": transfer, "accept sweep": sweep, "redistribute": redistribute}


@pytest.mark.parametrize("move", MOVES)
def test_the_move_ends_with_the_pick_and_writes_what_python_would(move, monkeypatch):
    attached = Scene("attached")
    with CaptureQueriesContext(connection) as captured:
        MOVES[move](attached)
    statements = [q["sql"] for q in captured.captured_queries]
    picks = [n for n, sql in enumerate(statements) if "routing_lock" in sql]
    assert statements[picks[-1] + 1 :] == ["COMMIT"], statements
    # Before it only the pool's first pick ever, which finds no cursor (nothing locked)
    # and creates it.
    between = statements[picks[0] : picks[-1]]
    assert all(
        "routing_lock" in sql
        or sql.startswith(
            ("SAVEPOINT", "ROLLBACK TO SAVEPOINT", 'INSERT INTO "teams_roundrobincursor"')
        )
        for sql in between
    ), between

    # The same move written in Python after the pick (SQLite's way, and the way when the
    # tenant's endpoints keep changing).
    monkeypatch.setattr(inbox_services, "pick_with_endpoints", lambda *a, **k: _kept_changing())
    in_python = Scene("python")
    MOVES[move](in_python)

    written = attached.written()
    assert written["session"]["agent"] == "<bob>"
    assert written["counters"] == {"<admin>": 0, "<ann>": 0, "<bob>": 1}
    assert written == in_python.written()


def _kept_changing():
    from webhooks.events import EndpointsKeptChanging

    raise EndpointsKeptChanging


def test_sixteen_transfers_at_once_spread_evenly_and_every_counter_is_right():
    from concurrent.futures import ThreadPoolExecutor

    scene = Scene("busy")
    holders = [scene.person(f"holder{n}", f"Holder {n}") for n in range(4)]
    takers = [scene.person(f"taker{n}", f"Taker {n}") for n in range(5)]
    team = TeamFactory(tenant=scene.tenant, name="Takers")
    for agent in takers:
        TeamMemberFactory(tenant=scene.tenant, team=team, membership=agent)
    sessions = [
        InboxSessionFactory(
            tenant=scene.tenant,
            assigned_agent=holders[n % 4],
            assigned_at=timezone.now(),
            confirmation=False,
        )
        for n in range(40)
    ]
    for holder in holders:
        Membership.objects.for_tenant(scene.tenant).filter(pk=holder.pk).update(
            open_session_count=10
        )
    actor = Actor.for_membership(scene.admin, via="agent_page")

    def move(session) -> str:
        try:
            moved = transfer_session(
                tenant=scene.tenant, session_id=session.pk, actor=actor, to_team=team
            )
            return str(moved.assigned_agent_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        given = list(pool.map(move, sessions))

    assert sorted(given.count(str(agent.pk)) for agent in takers) == [8] * 5
    counts = dict(
        Membership.objects.for_tenant(scene.tenant).values_list("pk", "open_session_count")
    )
    assert [counts[holder.pk] for holder in holders] == [0] * 4
    assert [counts[taker.pk] for taker in takers] == [8] * 5
    assert SessionNotice.all_tenants.filter(session__in=sessions).count() == 40


def test_a_move_writes_the_previous_agents_row_before_the_session(monkeypatch):
    """AGENT_BEFORE_SESSION within the statement: while the previous agent's row is
    busy (another transaction holds it), the move has not yet written the session, so
    a new session of the same contact is refused at once instead of waiting for the
    move (a handover doing that insert holds its own agent's row, which the move may
    need: a deadlock)."""
    import threading
    import time

    from django.db import IntegrityError, connections, transaction

    from core.row_sql import insert_sql, new_row
    from inbox.models import ONE_OPEN_SESSION_PER_CONTACT
    from tests.db_locks import lock_waits

    scene = Scene("order")
    holding, release = threading.Event(), threading.Event()

    def hold_the_previous_agent():
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(
                    "SELECT 1 FROM teams_membership WHERE id = %s FOR UPDATE", [scene.ann.pk]
                )
                holding.set()
                release.wait(15)
                cursor.execute("ROLLBACK")
        finally:
            other.close()

    moved = {}

    def move():
        try:
            moved["session"] = transfer(scene)
        except Exception as error:  # reported below
            moved["error"] = error
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_previous_agent)
    holder.start()
    assert holding.wait(10)
    mover = threading.Thread(target=move)
    mover.start()
    deadline = time.monotonic() + 10
    while not lock_waits() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    try:
        assert lock_waits(), "the move never waited for the previous agent's row"
        again = new_row(
            InboxSession,
            tenant=scene.tenant,
            contact_id=scene.session.contact_id,
            channel=scene.session.channel,
        )
        with (
            pytest.raises(IntegrityError) as refused,
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            cursor.execute(*insert_sql(again))
        assert ONE_OPEN_SESSION_PER_CONTACT in str(refused.value)
    finally:
        release.set()
        holder.join(15)
        mover.join(15)
    assert "error" not in moved, moved
    assert moved["session"].assigned_agent_id == scene.bob.pk
