"""`Tenant.has_active_webhooks` under two endpoint changes at once (PostgreSQL, real
threads): the SLA sweep trusts the flag, so it must never say "none" while an endpoint
is on."""

import threading

import pytest
from django.db import close_old_connections, connection, transaction

from core.actor import Actor
from teams.models import Tenant
from tests.e2e.processes import wait_until
from webhooks.services import create_endpoint, update_endpoint

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SYSTEM = Actor.system()


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_a_new_endpoint_and_the_last_other_one_turned_off_at_once_leave_the_flag_on(tenant):
    """One admin adds an endpoint while another turns the only other one off: whichever
    commits second must see the first's endpoint."""
    old, _ = create_endpoint(tenant=tenant, actor=SYSTEM, url="https://old.example.com/in")
    added, release = threading.Event(), threading.Event()
    errors = []

    def add_one():
        try:
            with transaction.atomic():
                create_endpoint(tenant=tenant, actor=SYSTEM, url="https://new.example.com/in")
                added.set()
                release.wait(10)  # uncommitted while the other change runs
        except Exception as exc:
            errors.append(exc)
            added.set()
        finally:
            close_old_connections()

    def turn_off_the_old_one():
        try:
            update_endpoint(tenant=tenant, actor=SYSTEM, endpoint_id=old.pk, is_active=False)
        except Exception as exc:
            errors.append(exc)
        finally:
            close_old_connections()

    adder = threading.Thread(target=add_one)
    adder.start()
    assert added.wait(10)
    turner = threading.Thread(target=turn_off_the_old_one)
    turner.start()
    wait_until(_waiting_on_a_lock, timeout=10, what="the second change waits for the first")
    release.set()
    adder.join(10)
    turner.join(10)

    assert not errors, errors
    assert Tenant.objects.get(pk=tenant.pk).has_active_webhooks is True
