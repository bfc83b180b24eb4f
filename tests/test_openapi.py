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
