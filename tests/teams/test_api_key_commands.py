import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import ActivityLog
from teams.models import ApiKey


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_list_revoke_api_key(tenant, api_client):
    created = json.loads(run("create_api_key", "--tenant", tenant.slug, "--name", "Bot", "--json"))
    assert created["tenant_id"] == str(tenant.id)
    assert created["api_key"].startswith(created["prefix"] + "_")
    assert api_client.get("/api/v1/whoami", HTTP_X_API_KEY=created["api_key"]).status_code == 200

    listing = run("list_api_keys", "--tenant", str(tenant.id))
    assert created["prefix"] in listing
    assert "Bot" in listing
    assert created["api_key"] not in listing, "the secret is never shown again"

    assert "Revoked" in run("revoke_api_key", created["prefix"])
    assert api_client.get("/api/v1/whoami", HTTP_X_API_KEY=created["api_key"]).status_code == 401
    assert created["prefix"] not in run("list_api_keys", "--tenant", tenant.slug)
    assert created["prefix"] in run("list_api_keys", "--tenant", tenant.slug, "--all")
    assert "already revoked" in run("revoke_api_key", created["prefix"])

    actions = ActivityLog.objects.for_tenant(tenant).values_list("action", flat=True)
    assert {"api_key.created", "api_key.revoked"} <= set(actions)


@pytest.mark.django_db
def test_api_key_commands_refuse_unknown_tenant_and_prefix(db):
    with pytest.raises(CommandError, match="No tenant"):
        run("create_api_key", "--tenant", "nope", "--name", "x")
    with pytest.raises(CommandError, match="No API key"):
        run("revoke_api_key", "wk_AAAAAAAA")
    assert not ApiKey.all_tenants.exists()
