"""What a browser and a scanner see: CORS on the API only, a Content-Security-Policy,
Permissions-Policy, HSTS by environment, and a deploy check that is clean with the
README's production settings."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.test import Client

ORIGIN = "https://app.example.test"
README = Path(settings.BASE_DIR) / "README.md"


@pytest.fixture
def cors_origin(settings):
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    return ORIGIN


def preflight(client, path, origin=ORIGIN, headers="x-api-key, idempotency-key, content-type"):
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS=headers,
    )


# --- CORS -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_preflight_from_an_allowed_origin_is_answered_without_authentication(client, cors_origin):
    response = preflight(client, "/api/v1/reassign-lead")

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    allowed = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"x-api-key", "idempotency-key", "content-type"} <= allowed
    assert "POST" in response["Access-Control-Allow-Methods"]
    # Credentials (cookies) stay off unless configured.
    assert "Access-Control-Allow-Credentials" not in response


@pytest.mark.django_db
def test_the_api_answer_itself_carries_the_allowed_origin(client, cors_origin, api_key):
    response = client.get("/api/v1/whoami", HTTP_ORIGIN=ORIGIN, HTTP_X_API_KEY=api_key[1])

    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in response["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "X-Request-ID", "Idempotent-Replayed"} <= exposed


@pytest.mark.django_db
def test_an_origin_not_configured_gets_no_cors_headers(client, cors_origin):
    response = preflight(client, "/api/v1/reassign-lead", origin="https://evil.example.test")

    assert "Access-Control-Allow-Origin" not in response


@pytest.mark.django_db
def test_pages_outside_the_api_get_no_cors_headers(client, cors_origin):
    for path in ("/admin/login/", "/accounts/login/", "/healthz"):
        response = client.get(path, HTTP_ORIGIN=ORIGIN)
        assert "Access-Control-Allow-Origin" not in response, path


@pytest.mark.django_db
def test_credentials_are_allowed_only_when_configured(client, cors_origin, settings):
    settings.CORS_ALLOW_CREDENTIALS = True

    response = preflight(client, "/api/v1/reassign-lead")

    assert response["Access-Control-Allow-Credentials"] == "true"


def test_cors_origins_come_from_the_environment():
    loaded = _settings_with(CORS_ALLOWED_ORIGINS="https://a.example,https://b.example")

    assert loaded["CORS_ALLOWED_ORIGINS"] == ["https://a.example", "https://b.example"]
    assert _settings_with()["CORS_ALLOWED_ORIGINS"] == []


@pytest.mark.django_db
def test_a_running_server_answers_a_browser_preflight(live_server, settings):
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]

    response = requests.options(
        f"{live_server.url}/api/v1/reassign-lead",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, content-type",
        },
        timeout=10,
    )

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-api-key" in response.headers["Access-Control-Allow-Headers"]


# --- security headers -----------------------------------------------------------------


@pytest.mark.django_db
def test_pages_carry_a_content_security_policy_that_runs_only_our_scripts(client):
    policy = _directives(client.get("/accounts/login/")["Content-Security-Policy"])

    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["form-action"] == ["'self'"]


@pytest.mark.django_db
def test_the_api_and_admin_carry_the_other_security_headers(client, api_key):
    for response in (
        client.get("/admin/login/"),
        client.get("/api/v1/whoami", HTTP_X_API_KEY=api_key[1]),
    ):
        permissions = response["Permissions-Policy"]
        assert "camera=()" in permissions and "geolocation=()" in permissions
        assert "microphone=()" in permissions
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert "Content-Security-Policy" in response


@pytest.mark.django_db
def test_no_page_has_an_inline_script_the_policy_would_block(client, owner):
    """Inline scripts need the request's nonce; ours are files, so none may appear."""
    client.force_login(owner.user)
    for path in ("/admin/", "/admin/leads/lead/", "/accounts/login/", "/leads/", "/api/docs/"):
        html = client.get(path).content.decode()
        for tag in re.findall(r"<script\b[^>]*>", html):
            executable = 'type="application/json"' not in tag and "src=" not in tag
            assert not executable or "nonce=" in tag, f"{path}: {tag}"


@pytest.mark.django_db
def test_hsts_is_off_by_default_and_sent_on_https_when_configured(client, settings):
    assert "Strict-Transport-Security" not in client.get("/healthz", secure=True)

    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True
    client = Client()  # the middleware reads its settings when it is built
    response = client.get("/healthz", secure=True)

    assert response["Strict-Transport-Security"] == ("max-age=31536000; includeSubDomains; preload")
    assert "Strict-Transport-Security" not in client.get("/healthz", secure=False)


def test_hsts_comes_from_the_environment():
    loaded = _settings_with(
        SECURE_HSTS_SECONDS="600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="1",
        SECURE_HSTS_PRELOAD="1",
    )

    assert loaded["SECURE_HSTS_SECONDS"] == 600
    assert loaded["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert loaded["SECURE_HSTS_PRELOAD"] is True
    assert _settings_with()["SECURE_HSTS_SECONDS"] == 0


@pytest.mark.django_db
def test_the_health_check_is_not_redirected_to_https(client, settings):
    settings.SECURE_SSL_REDIRECT = True

    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/admin/login/").status_code == 301


# --- the deploy check with the README's production settings ----------------------------


def test_the_readme_production_settings_pass_the_deploy_check_without_warnings(tmp_path):
    exports = _readme_production_exports()
    assert any("SECURE_HSTS_SECONDS" in line for line in exports)
    script = "\n".join(
        [
            "set -euo pipefail",
            *exports,
            f"{sys.executable} manage.py check --deploy --fail-level WARNING",
        ]
    )

    result = subprocess.run(
        ["bash", "-c", script],
        cwd=settings.BASE_DIR,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_deploy_check_warns_when_https_settings_are_missing(tmp_path):
    """The check above is not vacuous: without the https lines it warns."""
    exports = [
        line
        for line in _readme_production_exports()
        if "HSTS" not in line and "SECURE_SSL_REDIRECT" not in line
    ]
    script = "\n".join(
        ["set -euo pipefail", *exports, f"{sys.executable} manage.py check --deploy"]
    )

    result = subprocess.run(
        ["bash", "-c", script],
        cwd=settings.BASE_DIR,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert "security.W004" in result.stderr + result.stdout


# --- helpers ----------------------------------------------------------------------------


def _directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def _readme_production_exports() -> list[str]:
    text = README.read_text()
    section = text.split("## Production", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.startswith("export ")]


_DUMP = """
import json
import environ
environ.Env.read_env = classmethod(lambda *args, **kwargs: None)
import django
django.setup()
from django.conf import settings
print(json.dumps({name: getattr(settings, name) for name in %r}))
"""


def _settings_with(**env_vars) -> dict:
    names = [
        "CORS_ALLOWED_ORIGINS",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
    ]
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings", **env_vars}
    result = subprocess.run(
        [sys.executable, "-c", _DUMP % names],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
