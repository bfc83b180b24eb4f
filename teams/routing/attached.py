"""Helpers for writes attached to the pick statement (`route(attach=...)`).

Who the pick chose is known only in SQL, inside the statement: an attached write reads
the agent from the statement's `routed_agent` CTE (`FROM routed_agent`; no row when
nobody was picked). What is written as JSON text about that agent (webhook bodies, an
answer to replay) is built in Python with a stand-in agent, whose id, name and email the
statement then replaces in the text with the routed agent's (`with_routed_agent`). The
stand-in's values are random tokens: no user's text can hold them.
"""

import copy
import json
import uuid

from django.db.models import Field
from django.db.models.expressions import RawSQL

from teams.models import Membership, User
from teams.routing.picking import ROUTED_AGENT

# The routed agent's id, as a value of a row an attached INSERT writes.
ROUTED_AGENT_ID = RawSQL(f"{ROUTED_AGENT}.id", [])  # noqa: S611
ROUTED_AGENT_EMAIL = RawSQL(f"{ROUTED_AGENT}.user_email", [])  # noqa: S611
# RawSQL values only spliced into SQL text (core.row_sql) share one output field rather
# than building a model field each.
SPLICED = Field()

_STAND_IN_NAME = f"routed-agent-name-{uuid.uuid4().hex}"
_STAND_IN_EMAIL = f"routed-agent-email-{uuid.uuid4().hex}"
STAND_IN_AGENT = Membership(
    id=uuid.uuid4(), user=User(email=_STAND_IN_EMAIL, full_name=_STAND_IN_NAME)
)
_ROUTED_AGENT_VALUES = (
    # (token in the JSON text, its replacement: JSON text of the routed agent's value)
    (str(STAND_IN_AGENT.pk), f"{ROUTED_AGENT}.id::text"),
    (
        json.dumps(_STAND_IN_NAME),
        f"to_json(coalesce(nullif({ROUTED_AGENT}.user_full_name, ''),"
        f" {ROUTED_AGENT}.user_email))::text",  # as User.get_full_name
    ),
    (json.dumps(_STAND_IN_EMAIL), f"to_json({ROUTED_AGENT}.user_email)::text"),
)


def with_routed_agent(text: str) -> tuple[str, list]:
    """SQL for `text` (JSON built with the stand-in agent) with the routed agent's id,
    name and email in place of the stand-in's."""
    sql, params = "%s::text", [text]
    for token, value_sql in _ROUTED_AGENT_VALUES:
        sql = f"replace({sql}, %s, {value_sql})"
        params.append(token)
    return sql, params


def json_with_routed_agent(value: dict, path: str) -> RawSQL:
    """`value` as jsonb, with the JSON text at `path` (a key of `value`, itself built
    with the stand-in agent) naming the routed agent instead."""
    body_sql, body_params = with_routed_agent(value[path])
    return RawSQL(  # noqa: S611
        f"jsonb_set(%s::jsonb, '{{{path}}}', to_jsonb({body_sql}))",
        [json.dumps(value), *body_params],
        output_field=SPLICED,
    )


def shadow_of(row):
    """A copy of a model instance to set the pick's values on without touching it (a
    shallow copy, as `copy.copy` makes, without its pickling round)."""
    shadow = type(row).__new__(type(row))
    shadow.__dict__.update(row.__dict__)
    shadow._state = copy.copy(row._state)
    shadow._state.fields_cache = dict(row._state.fields_cache)
    return shadow
