"""Delivery: claim due messages, send each through its channel, store the outcome.

One state machine for every channel::

    pending --claim--> sending --Delivered--------> sent
                          |----SkipMessage--------> skipped
                          |----PermanentSendError-> failed
                          |----TransientSendError-> pending (next_attempt_at = backoff)
                          |                         or failed when the attempts are spent
                          '----worker died--------> claimable again once the lease is over

* A claim sets ``status=sending``, counts the attempt and gives the row a lease
  (OUTBOX_LEASE_SECONDS). A send has a wall-clock deadline (OUTBOX_SEND_DEADLINE_SECONDS)
  shorter than the lease, so a lease only runs out when a worker died; the message is
  then claimed again and sent with the same idempotency key.
* The outcome is written only by the claim that owns the row (``claim_token``), and the
  write is retried through a database blip for as long as the lease lasts: the send is
  never repeated because its outcome could not be stored.
* Per endpoint, at most OUTBOX_ENDPOINT_CONCURRENCY messages are in flight, so a slow
  or hung endpoint (one tenant's CRM) holds a few slots, never all of them.
* Throughput: on PostgreSQL a worker's sending thread writes a sent or retried
  message's outcome and claims its next message in one call of a session function (one
  round trip, one commit), with prepared statements (`outbox.statements`); what a channel
  reads before a send is kept for a moment (`outbox.lookups`).
"""

import contextlib
import functools
import logging
import random
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction
from django.db.models import Count, Min, Q
from django.utils import timezone

from audit.services import record_activity
from core import log_context
from core.actor import Actor
from core.metrics import OUTBOUND_MESSAGES
from outbox import http, lookups, statements
from outbox.channels import (
    Delivered,
    PermanentSendError,
    SkipMessage,
    TransientSendError,
    get_channel,
)
from outbox.models import MessageStatus, OutboundMessage
from outbox.signals import message_failed

logger = logging.getLogger("outbox")

LAST_ERROR_LIMIT = 1000
# Serialises claims across workers (a claim takes milliseconds), which makes the
# per-endpoint cap exact; SKIP LOCKED still passes over rows locked for other reasons.
CLAIM_LOCK_ID = 0x6F7574626F78  # "outbox"
# Due rows are looked at in two index-ordered runs (due pending rows; sends whose lease
# ran out), each stopping after this many rows per claimed message: a backlog of a
# million rows costs a claim no more than a backlog of a hundred.
CANDIDATES_PER_SLOT = 8
# The claim, one statement: due rows, oldest first, skipping endpoints whose slots are all
# taken, giving each endpoint only the slots it has left (OUTBOX_ENDPOINT_CONCURRENCY),
# and skipping a row while an older row of its ordering key is pending or being sent.
# The chosen rows are locked (SKIP LOCKED on PostgreSQL), marked sending, their attempt
# counted and their lease set, and returned.
CLAIM_SQL = """
    WITH in_flight AS (
        SELECT endpoint_key, COUNT(*) AS busy FROM outbox_outboundmessage
        WHERE status = 'sending' AND lease_expires_at > %(now)s
        GROUP BY endpoint_key
    ),
    due AS (
        SELECT * FROM (
            SELECT m.id, m.endpoint_key, m.created_at, m.next_attempt_at
            FROM outbox_outboundmessage m
            WHERE m.status = 'pending' AND m.next_attempt_at <= %(now)s
              AND m.endpoint_key NOT IN (
                  SELECT endpoint_key FROM in_flight WHERE busy >= %(cap)s)
              AND {head_of_its_order}
            ORDER BY m.next_attempt_at
            LIMIT %(candidates)s
        ) AS pending_rows
        UNION ALL
        SELECT * FROM (
            SELECT m.id, m.endpoint_key, m.created_at, m.lease_expires_at
            FROM outbox_outboundmessage m
            WHERE m.status = 'sending' AND m.lease_expires_at <= %(now)s
              AND {head_of_its_order}
            ORDER BY m.lease_expires_at
            LIMIT %(candidates)s
        ) AS abandoned_rows
    ),
    ranked AS (
        SELECT c.id, c.next_attempt_at,
               ROW_NUMBER() OVER (PARTITION BY c.endpoint_key ORDER BY c.next_attempt_at, c.id)
               + COALESCE(f.busy, 0) AS slot
        FROM due c LEFT JOIN in_flight f ON f.endpoint_key = c.endpoint_key
    ),
    chosen AS (
        SELECT id FROM ranked WHERE slot <= %(cap)s ORDER BY next_attempt_at LIMIT %(limit)s
    )
    UPDATE outbox_outboundmessage
    SET status = 'sending', attempts = attempts + 1, lease_expires_at = %(lease)s,
        claim_token = %(token)s, last_attempt_at = %(now)s, updated_at = %(now)s
    WHERE {id_is_locked}
      AND ((status = 'pending' AND next_attempt_at <= %(now)s)
           OR (status = 'sending' AND lease_expires_at <= %(now)s))
    RETURNING *
""".replace(
    # Checked before the LIMIT: rows waiting behind the head of their ordering key must
    # not fill the candidates and starve everybody else.
    "{head_of_its_order}",
    """(m.ordering_key = '' OR NOT EXISTS (
        SELECT 1 FROM outbox_outboundmessage older
        WHERE older.ordering_key = m.ordering_key
          AND older.ordering_key <> ''  -- lets PostgreSQL use the partial index
          AND older.status IN ('pending', 'sending')
          AND (older.created_at < m.created_at
               OR (older.created_at = m.created_at AND older.id < m.id))))""",
)
POSTGRES_CLAIM_SQL = CLAIM_SQL.replace(
    # `= ANY(ARRAY(...))`: the few chosen ids first, then each row by its key. With `IN`
    # the planner may walk every due row and probe the chosen ones for each (fresh rows
    # have no statistics yet): a claim then costs as much as the backlog is long.
    "{id_is_locked}",
    "id = ANY(ARRAY(SELECT id FROM outbox_outboundmessage WHERE id IN (SELECT id FROM chosen) "
    "FOR UPDATE SKIP LOCKED))",
)
LOCK_SQL = "SELECT pg_advisory_xact_lock(%s)"
# SQLite has no row locks: its writers take turns (transactions begin IMMEDIATE).
SQLITE_CLAIM_SQL = CLAIM_SQL.replace("{id_is_locked}", "id IN (SELECT id FROM chosen)")


def retry_delay_seconds(attempts: int, channel=None) -> float:
    """The one backoff policy: base * 2**(attempts-1), capped, plus up to 10% jitter so
    that messages that failed together (a provider outage) do not all come back at once.
    Base and cap are OUTBOX_RETRY_BASE_SECONDS and OUTBOX_RETRY_MAX_DELAY_SECONDS unless
    the channel sets its own (webhooks retry for a day)."""
    base = getattr(channel, "retry_base_seconds", None) or settings.OUTBOX_RETRY_BASE_SECONDS
    cap = (
        getattr(channel, "retry_max_delay_seconds", None) or settings.OUTBOX_RETRY_MAX_DELAY_SECONDS
    )
    wait = min(float(base) * 2 ** max(0, attempts - 1), float(cap))
    return wait + random.uniform(0, wait * 0.1)


# --- claiming ---------------------------------------------------------------------------


def _due_filter(now):
    return Q(status=MessageStatus.PENDING, next_attempt_at__lte=now) | Q(
        status=MessageStatus.SENDING, lease_expires_at__lte=now
    )


def claim_due(*, limit: int) -> list[OutboundMessage]:
    """Claim up to `limit` due messages for this worker: status sending, attempt counted,
    lease taken. Oldest first, at most OUTBOX_ENDPOINT_CONCURRENCY in flight per endpoint."""
    if limit <= 0:
        return []
    postgres = connection.vendor == "postgresql"
    params = _claim_params(limit=limit, now=timezone.now())
    if not postgres:
        params["token"] = params["token"].hex
    if postgres and not connection.in_atomic_block and statements.may_prepare():
        claimed = _claim_in_one_round_trip(params)
    else:
        with transaction.atomic():
            if postgres:
                # Two statements, not one: the claim must see the claims committed while
                # it waited for the lock, and a statement sees only what was committed
                # when it began.
                statements.execute(LOCK_SQL, [CLAIM_LOCK_ID], fetch=True)
                rows = statements.execute(_rows().claim_sql, params, fetch=True)
                claimed = _from_rows(rows)
            else:
                claimed = list(OutboundMessage.all_tenants.raw(SQLITE_CLAIM_SQL, params))
    claimed.sort(key=lambda m: m.next_attempt_at)
    return claimed


# The worker's claim (PostgreSQL, outside a transaction): the lock and the claim in a
# function of the session (pg_temp: nothing in the schema, made once per connection),
# called as one statement: one round trip and one commit instead of four round trips.
# Each statement of a VOLATILE function takes a fresh snapshot, so the claim still sees
# the claims committed while it waited for the lock; the lock ends with the call's
# transaction.
CLAIM_FUNCTION_SQL = (
    "CREATE OR REPLACE FUNCTION pg_temp.outbox_claim("
    "p_now timestamptz, p_cap bigint, p_candidates bigint, p_limit bigint, "
    "p_lease timestamptz, p_token uuid) RETURNS SETOF outbox_outboundmessage "
    "LANGUAGE plpgsql VOLATILE AS $claim$ BEGIN "
    f"PERFORM pg_advisory_xact_lock({CLAIM_LOCK_ID}); RETURN QUERY "
    + POSTGRES_CLAIM_SQL.replace("RETURNING *", "RETURNING outbox_outboundmessage.*")
    .replace("%(now)s", "p_now")
    .replace("%(cap)s", "p_cap")
    .replace("%(candidates)s", "p_candidates")
    .replace("%(limit)s", "p_limit")
    .replace("%(lease)s", "p_lease")
    .replace("%(token)s", "p_token")
    + "; END $claim$"
)
_with_functions = weakref.WeakSet()  # psycopg connections that have them


def _claim_params(*, limit: int, now) -> dict:
    return {
        "now": now,
        "cap": max(1, int(settings.OUTBOX_ENDPOINT_CONCURRENCY)),
        "candidates": max(limit, 1) * CANDIDATES_PER_SLOT,
        "limit": limit,
        "lease": now + timedelta(seconds=settings.OUTBOX_LEASE_SECONDS),
        "token": uuid.uuid4(),
    }


def _session_functions() -> None:
    """Make this connection's session functions, once per connection (autocommit)."""
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    raw = db.connection
    if raw not in _with_functions:
        with db.cursor() as cursor:
            cursor.execute(CLAIM_FUNCTION_SQL)
            cursor.execute(FINISH_AND_CLAIM_FUNCTION_SQL)
        _with_functions.add(raw)


def _claim_in_one_round_trip(params) -> list[OutboundMessage]:
    _session_functions()
    rows = statements.execute(
        f"SELECT {_rows().columns} FROM pg_temp.outbox_claim("  # noqa: S608 - our columns
        "%(now)s, %(cap)s, %(candidates)s, %(limit)s, %(lease)s, %(token)s)",
        params,
        fetch=True,
    )
    return _from_rows(rows)


@dataclass(frozen=True)
class _Rows:
    """How claimed rows are named and read (worked out once, not per message)."""

    columns: str  # the model's columns, named: a prepared statement's result must not
    claim_sql: str  # change shape when a column is added
    attnames: list
    converters: list  # (position, field) of the fields that convert what they read


@functools.cache
def _rows() -> _Rows:
    fields = OutboundMessage._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    return _Rows(
        columns=columns,
        claim_sql=POSTGRES_CLAIM_SQL.replace("RETURNING *", f"RETURNING {columns}"),
        attnames=[field.attname for field in fields],
        converters=[
            (position, field)
            for position, field in enumerate(fields)
            if hasattr(field, "from_db_value")
        ],
    )


def _from_rows(rows) -> list[OutboundMessage]:
    shape, db = _rows(), connections[DEFAULT_DB_ALIAS]
    messages = []
    for row in rows:
        values = list(row)
        for position, field in shape.converters:
            if values[position] is not None:
                values[position] = field.from_db_value(values[position], None, db)
        messages.append(OutboundMessage.from_db(db.alias, shape.attnames, values))
    return messages


# --- one attempt ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str  # a MessageStatus, or "retry"
    error: str = ""
    provider_message_id: str = ""


def attempt(message: OutboundMessage, *, followers: list | None = None) -> Outcome:
    """Send one claimed message and store what happened; the stored outcome.

    With `followers` (a list), the write of a sent or retried message also claims one
    more due message, in the same round trip, and appends it: a busy worker then pays one
    round trip per message instead of two (PostgreSQL, outside a transaction). A
    `Followers` list that is no longer `wanted()` when the outcome is written (the worker
    is stopping) gets none."""
    _following.claimed = followers
    try:
        return _bound_attempt(message)
    finally:
        _following.claimed = None


def _bound_attempt(message: OutboundMessage) -> Outcome:
    # Every line of the send (the channel's, the failure line) names the message, its
    # tenant and what it is about; a renderer may add more (leads binds the lead).
    payload = message.payload if isinstance(message.payload, dict) else {}
    with log_context.bound(
        tenant_id=message.tenant_id,
        message_id=message.pk,
        session_id=payload.get("session_id"),
        lead_id=payload.get("lead_id"),
    ):
        return _attempt(message)


def _attempt(message: OutboundMessage) -> Outcome:
    try:
        channel = get_channel(message.channel)
    except PermanentSendError as exc:
        return _finish(message, Outcome(MessageStatus.FAILED, error=str(exc)), channel=None)

    if message.attempts > message.max_attempts:
        # Claimed again after its worker died, with no attempt left to spend.
        error = _gave_up(
            message.last_error or "The last attempt was interrupted (the worker stopped).",
            message.attempts - 1,
        )
        return _finish(message, Outcome(MessageStatus.FAILED, error=error), channel=channel)

    seconds = float(settings.OUTBOX_SEND_DEADLINE_SECONDS)
    try:
        with http.deadline(seconds) as current:
            delivered = channel.send(message, deadline=current)
        if not isinstance(delivered, Delivered):
            delivered = Delivered()
        outcome = Outcome(MessageStatus.SENT, provider_message_id=delivered.provider_message_id)
    except SkipMessage as exc:
        outcome = Outcome(MessageStatus.SKIPPED, error=str(exc))
    except PermanentSendError as exc:
        if current.expired:  # whatever the cut-off looked like, it was the deadline
            outcome = _retry_or_fail(message, f"{_deadline_error(seconds)} {exc}")
        else:
            outcome = Outcome(MessageStatus.FAILED, error=str(exc))
    except TransientSendError as exc:
        error = str(exc)
        if current.expired:
            error = f"{_deadline_error(seconds)} {error}"
        outcome = _retry_or_fail(message, error)
    except DatabaseError as exc:  # reading what to send hit a database blip
        outcome = _retry_or_fail(message, f"Database error while preparing: {exc}")
    except Exception as exc:  # a bug in a channel must not leave the row sending forever
        logger.exception("Channel %s crashed on message %s", message.channel, message.pk)
        outcome = Outcome(MessageStatus.FAILED, error=f"Unexpected error: {_describe(exc)}")
    return _finish(message, outcome, channel=channel)


def _deadline_error(seconds: float) -> str:
    return f"No complete answer within the {seconds:g} s deadline."


def _retry_or_fail(message: OutboundMessage, error: str) -> Outcome:
    if message.attempts >= message.max_attempts:
        return Outcome(MessageStatus.FAILED, error=_gave_up(error, message.attempts))
    return Outcome("retry", error=error)


def _gave_up(error: str, attempts: int) -> str:
    unit = "attempt" if attempts == 1 else "attempts"
    return f"{error} Gave up after {attempts} {unit}."


def _finish(message: OutboundMessage, outcome: Outcome, *, channel) -> Outcome:
    now = timezone.now()
    error = _clip(outcome.error)
    fields = {"last_error": error, "updated_at": now, "lease_expires_at": None}
    if outcome.status == "retry":
        next_at = now + timedelta(seconds=retry_delay_seconds(message.attempts, channel))
        fields.update(status=MessageStatus.PENDING, next_attempt_at=next_at, claim_token=None)
    else:
        fields.update(status=outcome.status, finished_at=now, claim_token=None)
        if outcome.provider_message_id:
            fields["provider_message_id"] = outcome.provider_message_id[:255]
    stored = _store_with_retries(message, fields, outcome)
    describe = channel.describe(message) if channel else f"[message {message.pk}]"
    if not stored:
        return outcome
    OUTBOUND_MESSAGES.labels(channel=message.channel, status=outcome.status).inc()
    if outcome.status == "retry":
        logger.info(
            "Outbound message attempt %d of %d failed; next try at %s: %s %s",
            message.attempts,
            message.max_attempts,
            fields["next_attempt_at"].isoformat(timespec="seconds"),
            error,
            describe,
        )
    elif outcome.status == MessageStatus.FAILED:
        line = channel.failure_line(message) if channel else "Outbound message failed: %s"
        logger.warning(line, f"{error} {describe}")
    elif outcome.status == MessageStatus.SKIPPED:
        logger.info("Outbound message skipped: %s %s", error, describe)
    return outcome


def _update_if_still_claimed(message: OutboundMessage, fields: dict) -> int:
    """The outcome UPDATE, guarded by the claim token. Written as SQL because it runs
    once per message on the delivery path, where the ORM's query building was a visible
    share of the worker's CPU."""
    columns = tuple(sorted(fields))
    model_fields = {name: OutboundMessage._meta.get_field(name) for name in columns}
    values = [
        model_fields[name].get_db_prep_save(fields[name], connection=connection) for name in columns
    ]
    return statements.execute(
        _outcome_sql(columns),
        [
            *values,
            OutboundMessage._meta.pk.get_db_prep_value(message.pk, connection),
            str(MessageStatus.SENDING),
            OutboundMessage._meta.get_field("claim_token").get_db_prep_value(
                message.claim_token, connection
            ),
        ],
    )


@functools.cache
def _outcome_sql(columns: tuple[str, ...]) -> str:
    """One statement per set of columns (a few), so each is prepared once."""
    assignments = ", ".join(
        f"{OutboundMessage._meta.get_field(name).column} = %s" for name in columns
    )
    return (
        f"UPDATE outbox_outboundmessage SET {assignments} "  # noqa: S608 - our columns
        "WHERE id = %s AND status = %s AND claim_token = %s"
    )


def _store_with_retries(message: OutboundMessage, fields: dict, outcome: Outcome) -> bool:
    """Write the outcome if this claim still owns the row; retry through database errors
    until the lease ends (after that another worker may claim it, and would send again
    with the same idempotency key). Whether this call stored it."""
    give_up_at = time.monotonic() + max(1.0, float(settings.OUTBOX_LEASE_SECONDS) - 1.0)
    pause = 0.05
    followers = _following.claimed
    while True:
        try:
            needs_attention = outcome.status in (MessageStatus.FAILED, MessageStatus.SKIPPED)
            # A sent message or a retry is one UPDATE (atomic by itself); a failure or a
            # skip also writes an audit row and tells listeners, in one transaction.
            with transaction.atomic() if needs_attention else contextlib.nullcontext():
                if (
                    followers is not None
                    and not needs_attention
                    and getattr(followers, "wanted", lambda: True)()
                    and _may_combine()
                ):
                    updated, claimed = _update_and_claim(message, fields)
                    followers.extend(claimed)
                else:
                    updated = _update_if_still_claimed(message, fields)
                if updated and outcome.status == MessageStatus.FAILED:
                    message_failed.send(
                        sender=OutboundMessage, message=message, error=fields["last_error"]
                    )
                # A sent message is visible on its own row; the audit log records what
                # needs a person's attention (failed, skipped).
                if updated and needs_attention:
                    record_activity(
                        tenant=message.tenant,
                        action=f"message.{outcome.status}",
                        actor=Actor.for_job("outbox_delivery"),
                        target=message,
                        data={
                            "channel": message.channel,
                            "kind": message.kind,
                            "attempts": message.attempts,
                            "error": fields["last_error"],
                            "provider_message_id": outcome.provider_message_id,
                        },
                    )
            for name, value in fields.items():
                setattr(message, name, value)
            return bool(updated)
        except DatabaseError as exc:
            followers = None  # the retries only write the outcome
            connection.close()  # a dropped connection is reopened by the next query
            if time.monotonic() + pause >= give_up_at:
                logger.error(
                    "Could not store the outcome (%s) of outbound message %s: %s. It will be "
                    "sent again with the same idempotency key once its lease ends.",
                    outcome.status,
                    message.pk,
                    type(exc).__name__,
                )
                return False
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


_following = threading.local()  # attempt(followers=...) for the outcome's write


class Followers(list):
    """The list `attempt()` appends the next claimed message to, while `wanted()`."""

    def __init__(self, wanted=lambda: True):
        super().__init__()
        self.wanted = wanted


# A sent or retried message's outcome and the claim of the next message, in one call of a
# session function (see CLAIM_FUNCTION_SQL): the outcome UPDATE (guarded by the claim
# token, returning the row when it was still ours), then the claim. If the call fails,
# the outcome is written alone, retried as always, and nothing was claimed.
FINISH_AND_CLAIM_FUNCTION_SQL = (
    "CREATE OR REPLACE FUNCTION pg_temp.outbox_finish_and_claim("
    "p_id uuid, p_owner uuid, p_status varchar, p_error text, p_next timestamptz, "
    "p_finished timestamptz, p_provider varchar, "
    "p_now timestamptz, p_cap bigint, p_candidates bigint, p_limit bigint, "
    "p_lease timestamptz, p_token uuid) RETURNS SETOF outbox_outboundmessage "
    "LANGUAGE plpgsql VOLATILE AS $finish$ BEGIN "
    "RETURN QUERY UPDATE outbox_outboundmessage SET status = p_status, last_error = p_error, "
    "updated_at = p_now, lease_expires_at = NULL, claim_token = NULL, "
    "next_attempt_at = COALESCE(p_next, next_attempt_at), "
    "finished_at = COALESCE(p_finished, finished_at), "
    "provider_message_id = CASE WHEN p_provider <> '' THEN p_provider "
    "ELSE provider_message_id END "
    "WHERE id = p_id AND status = 'sending' AND claim_token = p_owner "
    "RETURNING outbox_outboundmessage.*; "
    "RETURN QUERY SELECT * FROM pg_temp.outbox_claim("
    "p_now, p_cap, p_candidates, p_limit, p_lease, p_token); END $finish$"
)
_COMBINABLE = {"last_error", "updated_at", "lease_expires_at", "status", "claim_token",
               "next_attempt_at", "finished_at", "provider_message_id"}  # fmt: skip


def _may_combine() -> bool:
    db = connections[DEFAULT_DB_ALIAS]
    return db.vendor == "postgresql" and not db.in_atomic_block and statements.may_prepare()


def _update_and_claim(message: OutboundMessage, fields: dict):
    """(whether the outcome was stored, [the next claimed message or none])."""
    assert set(fields) <= _COMBINABLE, fields
    _session_functions()
    now = fields["updated_at"]
    params = _claim_params(limit=1, now=now)
    params.update(
        id=message.pk,
        owner=message.claim_token,
        status=str(fields["status"]),
        error=fields["last_error"],
        next=fields.get("next_attempt_at"),
        finished=fields.get("finished_at"),
        provider=fields.get("provider_message_id", ""),
    )
    rows = statements.execute(
        f"SELECT {_rows().columns} FROM pg_temp.outbox_finish_and_claim("  # noqa: S608
        "%(id)s, %(owner)s, %(status)s, %(error)s, %(next)s, %(finished)s, %(provider)s, "
        "%(now)s, %(cap)s, %(candidates)s, %(limit)s, %(lease)s, %(token)s)",
        params,
        fetch=True,
    )
    messages = _from_rows(rows)
    updated = 1 if messages and messages[0].pk == message.pk else 0
    return updated, sorted(messages[updated:], key=lambda m: m.next_attempt_at)


# --- draining ---------------------------------------------------------------------------


def deliver_due(*, limit: int = 100) -> int:
    """Claim and send due messages one after another, in this thread, until none is due
    or `limit` were handled; how many were handled. For tests, commands and embedded mode;
    production runs `manage.py outbox_worker`, which sends several at once."""
    lookups.clear()  # what a caller changed a moment ago applies to these sends
    handled = 0
    while handled < limit:
        batch = claim_due(limit=min(10, limit - handled))
        if not batch:
            break
        for message in batch:
            attempt(message)
            handled += 1
    return handled


def backlog() -> dict:
    """What /healthz reports: how many messages are due and how long the oldest waited."""
    now = timezone.now()
    summary = OutboundMessage.all_tenants.filter(_due_filter(now)).aggregate(
        count=Count("pk"), oldest=Min("next_attempt_at")
    )
    count, oldest = summary["count"], summary["oldest"]
    return {
        "due": count,
        "oldest_due_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0.0,
    }


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _clip(error: str) -> str:
    error = str(error)
    return error if len(error) <= LAST_ERROR_LIMIT else error[: LAST_ERROR_LIMIT - 1] + "…"
