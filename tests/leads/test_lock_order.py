"""Auto-reassign takes agent locks in the same order as every reassignment (PostgreSQL)."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from leads.models import Lead
from leads.services import CLAIM_STAGE, _auto_reassign, _Breach
from teams.models import Membership
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory, TenantFactory


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_auto_reassign_does_not_deadlock_with_a_reassignment_holding_the_old_agent():
    tenant = TenantFactory(auto_reassign_on_breach=True)
    team = TeamFactory(tenant=tenant)
    old, new = sorted(
        (MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)),
        key=lambda m: str(m.pk),
    )
    for agent in (old, new):
        TeamMemberFactory(team=team, membership=agent)
    past = timezone.now() - timedelta(minutes=10)
    lead = Lead.objects.for_tenant(tenant).create(
        name="Late lead",
        phone="+1",
        team=team,
        assigned_agent=old,
        assigned_at=past,
        claim_deadline=past,
        claim_sla_breached_at=timezone.now(),
    )
    results = {}
    other_holds_old = threading.Event()

    def other_reassignment():
        # Another reassignment: agents locked in primary-key order (old, then new).
        try:
            with transaction.atomic():
                list(Membership.all_tenants.select_for_update().filter(pk=old.pk))
                other_holds_old.set()
                time.sleep(1.0)
                list(Membership.all_tenants.select_for_update().filter(pk=new.pk))
            results["other"] = "ok"
        except DatabaseError as exc:
            results["other"] = type(exc).__name__
        finally:
            connection.close()

    def auto():
        other_holds_old.wait()
        try:
            breach = _Breach(lead_id=lead.pk, tenant=tenant, agent_id=old.pk, deadline=past)
            results["auto"] = _auto_reassign(breach, CLAIM_STAGE)
        except DatabaseError as exc:
            results["auto"] = type(exc).__name__
        finally:
            connection.close()

    threads = [threading.Thread(target=other_reassignment), threading.Thread(target=auto)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert results == {"other": "ok", "auto": True}
    lead.refresh_from_db()
    assert lead.assigned_agent_id == new.pk
