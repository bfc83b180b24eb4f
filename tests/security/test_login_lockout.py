"""Login throttling (django-axes) on both login pages, /admin/login/ and /accounts/login/.

After the failure limit for an account, or from an address, the right password is refused
too, with a 429 page that says how many minutes are left; the lock lifts by itself after
the cool-off, or at once when an admin unlocks. A running server (live_server, and
gunicorn with two workers on PostgreSQL) shows the same.
"""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import requests
import time_machine
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.management import call_command
from django.test import Client

from tests.e2e.processes import base_env, free_port, processes, wait_until
from tests.factories import TEST_PASSWORD, MembershipFactory, UserFactory

LIMIT = 10
COOL_OFF_MINUTES = 15
WRONG = "not-the-password"
ADMIN_LOGIN = "/admin/login/"
AGENT_LOGIN = "/accounts/login/"
# What each login page opens once logged in.
HOME_OF = {ADMIN_LOGIN: "/admin/", AGENT_LOGIN: "/leads/"}
START = datetime(2031, 3, 4, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _product_limits(settings):
    """The shipped defaults (a developer's LOGIN_* variables must not change the tests);
    the defaults themselves are checked by the settings tests below."""
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = timedelta(minutes=COOL_OFF_MINUTES)
    settings.TRUSTED_PROXY_COUNT = 0


@pytest.fixture
def superuser(db):
    return UserFactory(email="root@example.test", is_staff=True, is_superuser=True)


@pytest.fixture
def agent(tenant):
    return MembershipFactory(tenant=tenant, user__email="ann@example.test").user


@pytest.fixture(params=[ADMIN_LOGIN, AGENT_LOGIN], ids=["admin-login", "agent-login"])
def login_page(request, superuser, agent):
    """(login url, the user who logs in there)."""
    return request.param, superuser if request.param == ADMIN_LOGIN else agent


def post_login(client, url, email, password, **extra):
    return client.post(url, {"username": email, "password": password}, **extra)


def fail(client, url, email, times, **extra):
    return [post_login(client, url, email, WRONG, **extra).status_code for _ in range(times)]


def assert_locked_page(response, minutes=COOL_OFF_MINUTES):
    assert response.status_code == 429, response.content[:500]
    text = response.content.decode()
    assert "Login locked" in text
    assert "are locked, even with the right password" in text
    unit = "minute" if minutes == 1 else "minutes"
    assert f"Try again in {minutes} {unit}." in text
    assert minutes * 60 - 60 < int(response["Retry-After"]) <= minutes * 60


def assert_logged_in(client, response, url):
    assert response.status_code == 302, response.content[:500]
    assert client.get(HOME_OF[url]).status_code == 200


def assert_not_logged_in(client, url):
    response = client.get(HOME_OF[url])
    assert response.status_code == 302
    assert "login" in response["Location"]


# --- the account ------------------------------------------------------------------------


def test_after_the_limit_the_right_password_is_refused_with_the_lockout_page(login_page):
    url, user = login_page
    client = Client()

    statuses = fail(client, url, user.email, LIMIT)
    right = post_login(client, url, user.email, TEST_PASSWORD)

    assert statuses == [200] * (LIMIT - 1) + [429]  # the last failure already locks
    assert_locked_page(right)
    assert_not_logged_in(client, url)


def test_a_locked_account_stays_locked_from_another_address(login_page):
    url, user = login_page
    fail(Client(REMOTE_ADDR="10.0.0.1"), url, user.email, LIMIT)
    elsewhere = Client(REMOTE_ADDR="10.0.0.2")

    assert_locked_page(post_login(elsewhere, url, user.email, TEST_PASSWORD))
    assert_not_logged_in(elsewhere, url)


def test_the_letter_case_of_the_email_does_not_make_a_new_account(agent):
    client = Client()
    spellings = ["ANN@example.test", "Ann@Example.Test", " ann@EXAMPLE.test "]
    assert 3 * len(spellings) + 1 == LIMIT
    for spelling in spellings:
        assert fail(client, AGENT_LOGIN, spelling, 3) == [200] * 3

    # One more, in yet another spelling, is the tenth for the same account.
    assert post_login(client, AGENT_LOGIN, "aNn@example.test", WRONG).status_code == 429
    assert_locked_page(
        post_login(Client(REMOTE_ADDR="10.9.9.9"), AGENT_LOGIN, agent.email, TEST_PASSWORD)
    )


def test_the_lockout_page_says_the_minutes_actually_left_and_early_tries_do_not_extend_it(agent):
    client = Client()
    with time_machine.travel(START, tick=False) as traveller:
        fail(client, AGENT_LOGIN, agent.email, LIMIT)

        traveller.shift(timedelta(minutes=6))
        assert_locked_page(post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD), minutes=9)

        traveller.shift(timedelta(minutes=8, seconds=30))
        assert_locked_page(post_login(client, AGENT_LOGIN, agent.email, WRONG), minutes=1)

        # 15 minutes after the tenth failure; the tries in between did not restart the clock.
        traveller.shift(timedelta(seconds=31))
        response = post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD)
        assert_logged_in(client, response, AGENT_LOGIN)


def test_after_the_cool_off_the_right_password_works_again(login_page):
    url, user = login_page
    client = Client()
    with time_machine.travel(START, tick=False) as traveller:
        fail(client, url, user.email, LIMIT)
        assert_locked_page(post_login(client, url, user.email, TEST_PASSWORD))

        traveller.shift(timedelta(minutes=COOL_OFF_MINUTES, seconds=1))
        response = post_login(client, url, user.email, TEST_PASSWORD)

    assert_logged_in(client, response, url)


def test_fewer_failures_than_the_limit_then_the_right_password_logs_in_and_starts_afresh(
    login_page,
):
    url, user = login_page
    client = Client()
    fail(client, url, user.email, LIMIT - 1)

    assert_logged_in(client, post_login(client, url, user.email, TEST_PASSWORD), url)
    assert not AccessAttempt.objects.filter(username=user.email).exists()

    # The count starts again: another LIMIT - 1 failures still do not lock.
    other = Client()
    assert fail(other, url, user.email, LIMIT - 1) == [200] * (LIMIT - 1)
    assert_logged_in(other, post_login(other, url, user.email, TEST_PASSWORD), url)


def test_wrong_passwords_are_not_stored(agent):
    fail(Client(), AGENT_LOGIN, agent.email, 2)

    attempt = AccessAttempt.objects.get(username=agent.email)
    assert WRONG not in attempt.post_data
    assert WRONG not in attempt.get_data


# --- the address ------------------------------------------------------------------------


def test_failures_for_many_accounts_from_one_address_lock_the_address(login_page, tenant):
    url, user = login_page
    attacker = Client(REMOTE_ADDR="198.51.100.7")
    for index in range(LIMIT):
        fail(attacker, url, f"guess{index}@example.test", 1)

    assert_locked_page(post_login(attacker, url, user.email, TEST_PASSWORD))
    assert_not_logged_in(attacker, url)

    # The account itself is not locked: from another address it logs in.
    colleague = Client(REMOTE_ADDR="198.51.100.8")
    assert_logged_in(colleague, post_login(colleague, url, user.email, TEST_PASSWORD), url)


def test_a_forged_x_forwarded_for_does_not_give_a_fresh_address(agent):
    attacker = Client(REMOTE_ADDR="198.51.100.7")
    for index in range(LIMIT):
        fail(
            attacker,
            AGENT_LOGIN,
            f"guess{index}@example.test",
            1,
            HTTP_X_FORWARDED_FOR=f"10.0.0.{index}",
        )

    response = post_login(
        attacker, AGENT_LOGIN, agent.email, TEST_PASSWORD, HTTP_X_FORWARDED_FOR="10.0.0.99"
    )
    assert_locked_page(response)


def test_behind_a_trusted_proxy_the_address_is_the_one_the_proxy_saw(settings, agent):
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = Client(REMOTE_ADDR="10.0.0.1")  # every request arrives from the proxy
    for index in range(LIMIT):
        # The client forges the left entry; the proxy appends the address it really saw.
        forwarded = f"192.0.2.{index}, 203.0.113.7"
        fail(proxy, AGENT_LOGIN, f"guess{index}@example.test", 1, HTTP_X_FORWARDED_FOR=forwarded)

    locked = post_login(
        proxy, AGENT_LOGIN, agent.email, TEST_PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.7"
    )
    assert_locked_page(locked)
    # Another client behind the same proxy is not locked out with the attacker.
    response = post_login(
        proxy, AGENT_LOGIN, agent.email, TEST_PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.8"
    )
    assert_logged_in(proxy, response, AGENT_LOGIN)


# --- unlocking ----------------------------------------------------------------------------


def admin_client(user) -> Client:
    client = Client(REMOTE_ADDR="192.0.2.200")
    client.force_login(user)
    return client


def test_an_admin_unlocks_a_user_from_the_users_list(superuser, agent):
    client = Client()
    fail(client, AGENT_LOGIN, agent.email, LIMIT)
    assert_locked_page(post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD))

    response = admin_client(superuser).post(
        "/admin/teams/user/",
        {"action": "unlock_login", ACTION_CHECKBOX_NAME: [agent.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert "Unlocked the login of 1 user(s)" in response.content.decode()
    assert_logged_in(
        client, post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD), AGENT_LOGIN
    )


def test_an_admin_unlocks_by_deleting_the_access_attempt(superuser, agent):
    client = Client()
    fail(client, AGENT_LOGIN, agent.email, LIMIT)
    assert_locked_page(post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD))
    attempt = AccessAttempt.objects.get(username=agent.email)
    admin = admin_client(superuser)

    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200
    assert agent.email in listing.content.decode()
    response = admin.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert_logged_in(
        client, post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD), AGENT_LOGIN
    )


def test_tenant_admins_cannot_see_or_clear_login_attempts(owner, agent):
    fail(Client(), AGENT_LOGIN, agent.email, LIMIT)
    client = admin_client(owner.user)

    assert client.get("/admin/axes/accessattempt/").status_code == 403
    response = client.post(
        "/admin/teams/user/", {"action": "unlock_login", ACTION_CHECKBOX_NAME: [agent.pk]}
    )
    assert response.status_code == 403
    assert AccessAttempt.objects.filter(username=agent.email).exists()


def test_axes_reset_command_unlocks(agent):
    client = Client()
    fail(client, AGENT_LOGIN, agent.email, LIMIT)
    assert_locked_page(post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD))

    call_command("axes_reset_username", agent.email, stdout=open(os.devnull, "w"))  # noqa: SIM115

    assert_logged_in(
        client, post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD), AGENT_LOGIN
    )


# --- limits by environment ----------------------------------------------------------------


def test_a_lower_limit_and_shorter_cool_off_apply(settings, agent):
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(minutes=2)
    client = Client()

    assert fail(client, AGENT_LOGIN, agent.email, 3) == [200, 200, 429]
    assert_locked_page(post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD), minutes=2)


def test_with_throttling_turned_off_nothing_locks(settings, agent):
    settings.AXES_ENABLED = False
    client = Client()

    assert fail(client, AGENT_LOGIN, agent.email, LIMIT + 5) == [200] * (LIMIT + 5)
    assert_logged_in(
        client, post_login(client, AGENT_LOGIN, agent.email, TEST_PASSWORD), AGENT_LOGIN
    )


_LOGIN_VARS = ("LOGIN_THROTTLING_ENABLED", "LOGIN_FAILURE_LIMIT", "LOGIN_COOLOFF_MINUTES")
_DUMP_LOGIN_SETTINGS = """
import json
import environ
environ.Env.read_env = classmethod(lambda *args, **kwargs: None)
import django
django.setup()
from axes.helpers import get_cool_off
from django.conf import settings
print(json.dumps({
    "enabled": settings.AXES_ENABLED,
    "limit": settings.AXES_FAILURE_LIMIT,
    "cool_off_seconds": get_cool_off().total_seconds(),
    "lockout_parameters": settings.AXES_LOCKOUT_PARAMETERS,
    "status": settings.AXES_HTTP_RESPONSE_CODE,
}))
"""


def _load_login_settings(**env_vars) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _LOGIN_VARS}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.update(env_vars)
    result = subprocess.run(
        [sys.executable, "-c", _DUMP_LOGIN_SETTINGS],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_defaults_are_ten_failures_and_fifteen_minutes_by_account_or_address():
    assert _load_login_settings() == {
        "enabled": True,
        "limit": 10,
        "cool_off_seconds": 900.0,
        "lockout_parameters": ["username", "ip_address"],
        "status": 429,
    }


def test_limits_come_from_the_environment():
    loaded = _load_login_settings(
        LOGIN_FAILURE_LIMIT="5", LOGIN_COOLOFF_MINUTES="7", LOGIN_THROTTLING_ENABLED="false"
    )

    assert (loaded["limit"], loaded["cool_off_seconds"], loaded["enabled"]) == (5, 420.0, False)


# --- against a running server ---------------------------------------------------------------


def _csrf_token(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=10)
    assert page.status_code == 200, page.text[:500]
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, "no CSRF token on the login page"
    return match.group(1)


def _post_login(session: requests.Session, url: str, email: str, password: str):
    data = {
        "username": email,
        "password": password,
        "csrfmiddlewaretoken": _csrf_token(session, url),
    }
    return session.post(url, data=data, allow_redirects=False, timeout=10)


def _lock_out_over_http(base: str, path: str, email: str) -> requests.Response:
    session = requests.Session()
    url = base + path
    statuses = [_post_login(session, url, email, WRONG).status_code for _ in range(LIMIT + 1)]
    assert statuses == [200] * (LIMIT - 1) + [429, 429]
    return _post_login(session, url, email, TEST_PASSWORD)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", [ADMIN_LOGIN, AGENT_LOGIN], ids=["admin-login", "agent-login"])
def test_a_running_server_locks_out_after_the_limit(live_server, path, tenant):
    user = (
        UserFactory(is_staff=True, is_superuser=True)
        if path == ADMIN_LOGIN
        else MembershipFactory(tenant=tenant).user
    )

    response = _lock_out_over_http(live_server.url, path, user.email)

    assert response.status_code == 429
    assert "Try again in 15 minutes." in response.text
    assert 840 < int(response.headers["Retry-After"]) <= 900
    assert "sessionid" not in response.cookies


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_gunicorn_workers_share_the_count(tenant):
    """Two gunicorn workers: failures spread over both still add up to one lockout."""

    user = MembershipFactory(tenant=tenant).user
    port = free_port()
    with processes() as procs:
        web = procs.start(
            "gunicorn",
            [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}"],
            env=base_env(
                WEB_CONCURRENCY="2",  # gunicorn's worker count
                LOGIN_FAILURE_LIMIT=str(LIMIT),
                LOGIN_COOLOFF_MINUTES=str(COOL_OFF_MINUTES),
            ),
        )
        web.wait_for("Booting worker", count=2)
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: _answers(base + AGENT_LOGIN), timeout=30, what="gunicorn answers", every=0.2
        )

        response = _lock_out_over_http(base, AGENT_LOGIN, user.email)

    assert response.status_code == 429
    assert "Try again in 15 minutes." in response.text
    assert AccessAttempt.objects.filter(username=user.email).exists()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:  # not listening yet, or still loading the app
        return False


# --- the right email in any letter case, the demo's printed login, limits checked ---------


def test_the_right_password_logs_in_whatever_the_letter_case_of_the_email(login_page):
    url, user = login_page
    client = Client()

    response = post_login(client, url, f"  {user.email.upper()} ", TEST_PASSWORD)

    assert_logged_in(client, response, url)


@pytest.mark.django_db
def test_seed_demo_again_unlocks_the_login_it_prints():
    first = json.loads(_seed_demo_json())
    admin = first["admin"]["username"]
    fail(Client(), ADMIN_LOGIN, admin, LIMIT)
    assert post_login(Client(), ADMIN_LOGIN, admin, first["admin"]["password"]).status_code == 429

    second = json.loads(_seed_demo_json())
    client = Client()
    response = post_login(client, ADMIN_LOGIN, admin, second["admin"]["password"])

    assert_logged_in(client, response, ADMIN_LOGIN)


def _seed_demo_json() -> str:
    from io import StringIO

    out = StringIO()
    call_command("seed_demo", "--json", stdout=out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("setting", "variable"),
    [
        ("AXES_FAILURE_LIMIT", "LOGIN_FAILURE_LIMIT"),
        ("AXES_COOLOFF_MINUTES", "LOGIN_COOLOFF_MINUTES"),
    ],
)
def test_a_limit_below_one_is_refused_by_the_system_check(settings, setting, variable):
    from django.core.management.base import SystemCheckError

    setattr(settings, setting, 0)

    with pytest.raises(SystemCheckError, match=f"{variable} must be at least 1"):
        call_command("check")
