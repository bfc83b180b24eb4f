"""The API against its own OpenAPI schema: schemathesis fuzzes every operation of a live
gunicorn (on the test database, with a tenant, its API key, an admin, agents, leads, a
session and webhook endpoints) and every answer must be as documented: no server error,
no status, header, content type or body the schema does not describe, no schema-valid
request refused, no operation that ignores its authentication.

Bounded: at most MAX_EXAMPLES test cases per operation and phase, and schemathesis stops
generating once TIME_BUDGET_SECONDS are spent.

Not checked: `negative_data_rejection` (the server must refuse every request the schema
rules out). The server is deliberately more lenient than a schema can say in places:
a UUID may come as an integer, an empty query parameter counts as omitted, an endpoint
URL is judged by its host's address rather than a pattern.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.test import Client
from django.utils.crypto import get_random_string

from core.actor import Actor
from leads.models import LeadStatus
from teams.models import Role
from teams.services import create_api_key
from tests.e2e.processes import base_env, free_port, processes, wait_until
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory, TenantFactory
from tests.inbox.factories import InboxSessionFactory
from tests.leads.factories import LeadFactory
from webhooks.services import create_endpoint

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 10
TIME_BUDGET_SECONDS = 90
CHECKS = "all"
EXCLUDED_CHECKS = "negative_data_rejection"


@dataclass
class Seeded:
    api_key: str
    agent_headers: dict[str, str]  # a logged-in agent's session cookie and CSRF token
    ids: dict[str, list[str]]  # dictionary name: ids of rows that exist


def logged_in(membership) -> dict[str, str]:
    client = Client()
    client.force_login(membership.user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    csrf = get_random_string(32)
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={csrf}",
        "X-CSRFToken": csrf,
    }


def seed() -> Seeded:
    """A tenant with everything the API can show, its API key and a logged-in agent."""
    tenant = TenantFactory()
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)
    agents = [MembershipFactory(tenant=tenant) for _ in range(2)]
    team = TeamFactory(tenant=tenant)
    for agent in agents:
        TeamMemberFactory(team=team, membership=agent)
    leads = [
        LeadFactory(tenant=tenant, assigned_agent=agents[0]),
        LeadFactory(tenant=tenant, assigned_agent=agents[1], status=LeadStatus.CLAIMED),
    ]
    session = InboxSessionFactory(tenant=tenant, assigned_agent=admin)
    endpoint, doomed = (
        create_endpoint(tenant=tenant, actor=Actor.system(), url=f"https://hooks.example.test/{n}")[
            0
        ]
        for n in range(2)
    )
    _, key = create_api_key(tenant=tenant, name="schemathesis", actor=Actor.system())
    return Seeded(
        api_key=key,
        # The agent of the first lead: claim and contacted reach their answers.
        agent_headers=logged_in(agents[0]),
        ids={
            "leads": [str(lead.pk) for lead in leads],
            "agents": [str(agent.pk) for agent in [admin, *agents]],
            "admins": [str(admin.pk)],
            "teams": [str(team.pk)],
            "sessions": [str(session.pk)],
            "endpoints": [str(endpoint.pk)],
            "doomed_endpoints": [str(doomed.pk)],  # for DELETE, so the other one stays
        },
    )


# Where the fuzzer should mostly use an id that exists; otherwise it makes one up (and
# gets the documented 404).
BINDINGS = {
    "path.lead_id": "leads",
    "body.lead_id": "leads",
    "path.session_id": "sessions",
    "path.endpoint_id": "endpoints",
    "body.to_agent_id": "agents",
    "body.assigned_agent_id": "agents",
    "body.reassigned_by_id": "admins",
    "body.team_id": "teams",
    "body.teamId": "teams",
    "query.teamId": "teams",
    "path.agent_id": "agents",
    "query.team_id": "teams",
    "query.agent_id": "agents",
}
# 422 is a handover whose Idempotency-Key was already used with another body: the fuzzer
# repeats simple keys, and no schema can rule that out.
HANDOVER_ACCEPTS = ["2xx", 401, 403, 404, 409, 422, 429]


def _binding(name: str) -> str:
    return f'{{ dictionary = "{name}", probability = 0.8 }}'


def schemathesis_config(seeded: Seeded) -> str:
    lines = []
    for name, values in seeded.ids.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    lines += [f'"{key}" = {_binding(name)}' for key, name in BINDINGS.items()]
    lines += [
        "",
        "[[operations]]",
        'include-path = "/api/v1/webhooks/{endpoint_id}"',
        'include-method = "DELETE"',
        f'parameters = {{ "path.endpoint_id" = {_binding("doomed_endpoints")} }}',
        "",
        "[[operations]]",
        'include-path = "/api/v1/handover"',
        'include-method = "POST"',
        "checks.positive_data_acceptance.expected-statuses = " + json.dumps(HANDOVER_ACCEPTS),
    ]
    return "\n".join(lines) + "\n"


def _schema(url: str) -> dict | None:
    try:
        response = requests.get(url, timeout=2)
    except requests.RequestException:
        return None
    return response.json() if response.status_code == 200 else None


def test_every_operation_answers_as_its_schema_says(tmp_path):
    seeded = seed()
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config(seeded))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": seeded.api_key, **seeded.agent_headers}
    with processes() as group:
        group.start(
            "gunicorn",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            env=base_env(
                # The failed-key throttle would answer the fuzzer's bad keys with 429s.
                API_KEY_FAILURES_PER_MINUTE="100000",
                # https only, as in production (the schema's URL pattern says so); a
                # made-up host is not looked up.
                OUTBOUND_ALLOW_HTTP="false",
                OUTBOUND_ALLOW_PRIVATE_NETWORKS="true",
            ),
        )
        schema = wait_until(
            lambda: _schema(f"{base}/api/schema/?format=json"),
            timeout=30,
            what="gunicorn serves the schema",
            every=0.2,
        )
        run = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(config),
                "run",
                f"{base}/api/schema/?format=json",
                "--url",
                base,
                "--checks",
                CHECKS,
                "--exclude-checks",
                EXCLUDED_CHECKS,
                *[arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")],
                "--max-examples",
                str(MAX_EXAMPLES),
                "--max-time",
                str(TIME_BUDGET_SECONDS),
                # The NUL character is refused everywhere (documented); JSON `context`
                # objects cannot say so for their nested strings.
                "--generation-allow-x00",
                "false",
                # One worker: Hypothesis's parallel example generation trips over
                # CPython 3.11's `ast` (a tool failure, not an API one).
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
            # Only if schemathesis itself hangs: it stops generating at its budget.
            timeout=TIME_BUDGET_SECONDS + 60,
        )
    print(run.stdout[-1200:])  # the summary, shown with `pytest -s` / `-rP`
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]
    operations = sum(len(item) for item in schema["paths"].values())
    assert f"Tested: {operations}\n" in run.stdout, run.stdout[-3000:]
