import sys

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_schema_documents_the_handover_contract_with_examples(client):
    response = client.get("/api/schema/?format=json")

    assert response.status_code == 200
    schema = response.json()
    operation = schema["paths"]["/api/v1/handover"]["post"]
    assert {"201", "200"} <= set(operation["responses"])
    request_schema = schema["components"]["schemas"]["HandoverInput"]
    assert "contactId" in request_schema["required"]
    assert {
        "contactId",
        "name",
        "channel",
        "context",
        "teamId",
        "sendHandoverMessage",
        "handoverMessage",
    } <= set(request_schema["properties"])
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert any(e["value"].get("contactId") for e in examples.values())
    assert "Idempotency-Key" in {p["name"] for p in operation["parameters"]}
    assert schema["components"]["securitySchemes"]["TenantApiKey"]["name"] == "X-API-Key"
    output = schema["components"]["schemas"]["HandoverOutput"]["properties"]
    assert {"sessionId", "status", "assignedAgent", "unassignedReason"} <= set(output)


@pytest.mark.django_db
def test_swagger_ui_is_served_from_local_static_files(client):
    page = client.get("/api/docs/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html
    asset = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200


def test_schema_generation_has_no_warnings(tmp_path, capsys):
    call_command("spectacular", "--file", str(tmp_path / "schema.yml"), "--fail-on-warn")
    assert (tmp_path / "schema.yml").read_text().startswith("openapi:")


@pytest.mark.django_db
def test_every_webhook_event_is_documented_with_an_example(client):
    from webhooks.events import EVENT_TYPES

    schema = client.get("/api/schema/?format=json").json()

    assert set(schema["webhooks"]) == set(EVENT_TYPES)
    for event_type, item in schema["webhooks"].items():
        content = item["post"]["requestBody"]["content"]["application/json"]
        [example] = content["examples"].values()
        assert example["value"]["type"] == event_type
        assert example["value"]["data"]
    operations = schema["paths"]
    assert {"post", "get"} <= set(operations["/api/v1/webhooks"])
    assert "/api/v1/webhooks/{endpoint_id}/rotate-secret" in operations


def test_the_readme_shows_every_webhook_event_as_the_schema_does():
    import json
    import re
    from pathlib import Path

    from django.conf import settings

    from webhooks.events import EVENT_TYPES
    from webhooks.schema import example_body

    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    shown = {
        match.group(1): json.loads(match.group(2))
        for match in re.finditer(
            r"<summary><code>([a-z_.]+)</code>.*?</summary>\s*```json\n(.*?)\n```", readme, re.S
        )
    }
    assert set(shown) == set(EVENT_TYPES)
    for event_type, body in shown.items():
        assert body == example_body(event_type), event_type


# --- an honest schema: errors, pagination, conditional requirements --------------------

ERROR_REF = {"$ref": "#/components/schemas/Error"}
# The refusals only some operations give, beyond the ones every operation of its kind has.
SPECIFIC_ERRORS = {
    ("post", "/api/v1/handover"): {"404", "422"},
    ("get", "/api/v1/diagnostics/handover"): {"404"},
    ("post", "/api/v1/leads"): {"404"},
    ("post", "/api/v1/leads/{lead_id}/close"): {"409"},
    ("post", "/api/v1/leads/{lead_id}/claim"): {"403", "409"},
    ("post", "/api/v1/leads/{lead_id}/contacted"): {"403", "409"},
    ("post", "/api/v1/reassign-lead"): {"403", "404", "409"},
    ("post", "/api/v1/sessions/{session_id}/accept"): {"403"},
    ("get", "/api/v1/agents"): {"404"},
    ("get", "/api/v1/teams"): {"404"},
}
PAGINATED = [
    "/api/v1/leads",
    "/api/v1/webhooks",
    "/api/v1/webhooks/{endpoint_id}/deliveries",
    "/api/v1/agents",
    "/api/v1/teams",
]


@pytest.fixture
def schema(client, db):
    return client.get("/api/schema/?format=json").json()


def _operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _validator(schema, subschema):
    from jsonschema import Draft202012Validator

    return Draft202012Validator({**subschema, "components": schema["components"]})


def _assert_matches(schema, subschema, body):
    errors = list(_validator(schema, subschema).iter_errors(body))
    assert not errors, [error.message for error in errors]


def test_every_operation_documents_its_errors_in_the_error_shape(schema):
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        where = f"{method.upper()} {path}"
        locations = {parameter["in"] for parameter in operation.get("parameters", [])}
        # A URL too long for the HTTP server: gunicorn answers it, in its own words.
        too_long = responses.pop("414", None)
        assert (too_long is not None) == ("query" in locations), where
        assert too_long is None or "content" not in too_long, where
        errors = {status for status in responses if status >= "400"}
        for status in errors:
            content = responses[status]["content"]["application/json"]
            assert content["schema"] == ERROR_REF, (where, status)
        security = [name for requirement in operation.get("security", []) for name in requirement]
        expected = {"406", "503"} | SPECIFIC_ERRORS.get((method, path), set())
        if "requestBody" in operation:
            expected |= {"400", "413", "415"}
        if "query" in locations:
            expected.add("400")
        if "path" in locations:
            expected.add("404")
        if security:
            expected.add("401")
        if "TenantApiKey" in security:
            expected.add("429")
        assert errors == expected, where
        for status in {"429", "503"} & errors:
            assert responses[status]["headers"]["Retry-After"]["required"] is True, where
    assert SPECIFIC_ERRORS.keys() <= {(m, p) for p, m, _ in _operations(schema)}


def test_the_error_component_describes_what_the_api_answers(
    schema, tenant_client, api_client, tenant
):
    from uuid import uuid4

    answers = [
        ("get", "/api/v1/whoami", api_client.get("/api/v1/whoami")),
        (
            "post",
            "/api/v1/leads",
            tenant_client.post("/api/v1/leads", {"name": " ", "email": "x"}, format="json"),
        ),
        (
            "post",
            "/api/v1/webhooks",
            tenant_client.post(
                "/api/v1/webhooks",
                {"url": "https://hooks.example.test/in", "events": ["x" * 65]},
                format="json",
            ),
        ),
        (
            "post",
            "/api/v1/handover",
            tenant_client.post("/api/v1/handover", "{", content_type="application/json"),
        ),
        (
            "post",
            "/api/v1/handover",
            tenant_client.post("/api/v1/handover", "contactId=1", content_type="text/plain"),
        ),
        ("get", "/api/v1/whoami", tenant_client.get("/api/v1/whoami", HTTP_ACCEPT="text/html")),
        ("get", "/api/v1/leads/{lead_id}", tenant_client.get(f"/api/v1/leads/{uuid4()}")),
    ]

    statuses = []
    for method, path, response in answers:
        status = str(response.status_code)
        statuses.append(status)
        documented = schema["paths"][path][method]["responses"]
        assert status in documented, (path, status, response.content)
        _assert_matches(schema, ERROR_REF, response.json())
    assert statuses == ["401", "400", "400", "400", "415", "406", "404"]
    nested = answers[2][2].json()["error"]["fields"]
    assert nested == {"events": {"0": ["Ensure this field has no more than 64 characters."]}}


def test_paginated_lists_are_described_as_returned(schema, tenant_client, tenant):
    from core.actor import Actor
    from tests.leads.factories import LeadFactory
    from webhooks.services import create_endpoint

    LeadFactory(tenant=tenant)
    endpoint, _ = create_endpoint(
        tenant=tenant, actor=Actor.system(), url="https://hooks.example.test/in"
    )

    for path in PAGINATED:
        operation = schema["paths"][path]["get"]
        described = operation["responses"]["200"]["content"]["application/json"]["schema"]
        name = described["$ref"].rsplit("/", 1)[1]
        component = schema["components"]["schemas"][name]
        assert component["required"] == ["count", "next", "previous", "results"], path
        assert {p["name"] for p in operation["parameters"]} >= {"limit", "offset"}
        page = tenant_client.get(path.replace("{endpoint_id}", str(endpoint.pk)) + "?limit=1")
        assert page.status_code == 200
        _assert_matches(schema, described, page.json())
    assert tenant_client.get("/api/v1/leads?limit=1").json()["count"] == 1


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=abc", "limit"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
        ("offset=1e3", "offset"),
    ],
)
def test_a_bad_limit_or_offset_is_refused_as_the_schema_says(tenant_client, query, field):
    response = tenant_client.get(f"/api/v1/leads?{query}")

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


def test_an_empty_limit_or_offset_counts_as_omitted_and_a_large_limit_as_the_maximum(
    tenant_client, tenant
):
    from tests.leads.factories import LeadFactory

    LeadFactory.create_batch(2, tenant=tenant)

    assert len(tenant_client.get("/api/v1/leads?limit=&offset=").json()["results"]) == 2
    page = tenant_client.get("/api/v1/leads?limit=100000&offset=1").json()
    assert page["count"] == 2 and len(page["results"]) == 1
    beyond = tenant_client.get("/api/v1/leads?offset=10000000000000000000").json()
    assert beyond["count"] == 2 and beyond["results"] == []


def test_lead_creation_states_that_it_needs_a_phone_or_an_email(schema, tenant_client):
    request = schema["paths"]["/api/v1/leads"]["post"]["requestBody"]
    described = request["content"]["application/json"]["schema"]
    validator = _validator(schema, described)

    for body, accepted in [
        ({"name": "Ann"}, False),
        ({"name": "Ann", "phone": "  "}, False),
        ({"name": "Ann", "phone": "", "email": ""}, False),
        ({"name": "Ann", "phone": "+49 151 1"}, True),
        ({"name": "Ann", "email": "ann@example.com"}, True),
        ({"name": "Ann", "phone": "", "email": "ann@example.com"}, True),
        ({"name": "Ann", "email": "ann@example.c"}, False),
        ({"name": " ", "email": "ann@example.com"}, False),
    ]:
        response = tenant_client.post("/api/v1/leads", body, format="json")
        assert validator.is_valid(body) is accepted, body
        assert (response.status_code == 201) is accepted, (body, response.content)


def test_reassign_lead_states_that_an_api_key_must_name_the_admin(schema, tenant_client, owner):
    from tests.factories import MembershipFactory
    from tests.leads.factories import LeadFactory

    agent, other = MembershipFactory.create_batch(2, tenant=owner.tenant)
    lead = LeadFactory(tenant=owner.tenant, assigned_agent=agent)
    operation = schema["paths"]["/api/v1/reassign-lead"]["post"]
    described = operation["requestBody"]["content"]["application/json"]["schema"]
    component = schema["components"]["schemas"][described["$ref"].rsplit("/", 1)[1]]
    assert "reassigned_by_id" in component["required"]
    assert "API key" in component["properties"]["reassigned_by_id"]["description"]
    body = {"lead_id": str(lead.pk), "to_agent_id": str(other.pk), "reason": "manual"}

    assert not _validator(schema, described).is_valid(body)
    refused = tenant_client.post("/api/v1/reassign-lead", body, format="json")
    assert refused.status_code == 400
    assert list(refused.json()["error"]["fields"]) == ["reassigned_by_id"]

    body["reassigned_by_id"] = str(owner.pk)
    assert _validator(schema, described).is_valid(body)
    assert tenant_client.post("/api/v1/reassign-lead", body, format="json").status_code == 200


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_url_too_long_for_gunicorn_gets_the_documented_414(schema, tenant, api_key):
    import requests

    from tests.e2e.processes import processes

    operation = schema["paths"]["/api/v1/webhooks"]["get"]
    assert "414" in operation["responses"]
    with processes() as group:
        base, _ = group.gunicorn(workers=1)
        response = requests.get(
            f"{base}/api/v1/webhooks",
            params={"offset": "9" * 5000},
            headers={"X-API-Key": api_key[1]},
            timeout=10,
        )

    assert response.status_code == 414


def test_the_not_blank_rule_names_every_character_the_server_trims(schema):
    """Validators read a schema's `\\s` as ECMA-262 does, without \\x1c-\\x1f and \\x85,
    which Python's strip() removes: such a name would pass the schema and get a 400."""
    import re

    lead_input = schema["components"]["schemas"]["LeadInput"]
    name = lead_input["properties"]["name"]
    pattern = name.get("pattern") or next(
        option["pattern"] for option in name.get("anyOf", []) if "pattern" in option
    )
    assert "\\s" not in pattern
    trimmed = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert not [hex(ord(c)) for c in trimmed if re.match(pattern, c * 2)]
    assert re.match(pattern, " \x1c Ada \x85")
