"""/metrics under gunicorn with two workers, end to end.

gunicorn (`-c config/gunicorn.conf.py`, as the Procfile runs it), an outbox worker and a
`manage.py check_sla` run share one PROMETHEUS_MULTIPROC_DIR. Every scrape must show the
sum over all of them, whichever gunicorn worker answers it: the handovers counted by
either worker, the failed message counted by the outbox worker, the breach counted by the
sweep command — and still after a worker was restarted.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from core.actor import Actor
from leads.models import Lead
from leads.services import create_lead
from teams.services import create_api_key
from tests.e2e.processes import Crm, base_env, free_port, gunicorn_command, processes, wait_until
from tests.factories import MembershipFactory, TenantFactory
from tests.inbox.factories import CrmIntegrationFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TOKEN = "e2e-metrics-token"
HANDOVER_ROUTE = "/api/v1/handover"
UNASSIGNED_HANDOVERS = 20
REFUSED_HANDOVERS = 3


def parse(text: str) -> dict:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def refuse_with_400(handler, request):
    body = b'{"error": {"message": "(#100) Invalid phone number"}}'
    handler.start_answer(body, status=400)
    handler.wfile.write(body)
    handler.wfile.flush()
    request.answered_at = time.monotonic()


def handovers_served_by(multiproc_dir: Path, pid: int, tmp_path: Path) -> float:
    """POST /api/v1/handover requests that gunicorn worker `pid` counted: its own file
    alone, read by prometheus-client's own multiprocess reader."""
    alone = tmp_path / f"worker-{pid}"
    alone.mkdir()
    for file in multiproc_dir.glob(f"*_{pid}.db"):
        shutil.copy(file, alone / file.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    return (
        registry.get_sample_value(
            "http_requests_total", {"method": "POST", "route": HANDOVER_ROUTE, "status": "201"}
        )
        or 0.0
    )


@pytest.fixture
def crm():
    with Crm() as server:
        yield server


def test_counters_add_up_across_gunicorn_workers_and_processes(crm, tmp_path, settings):
    encryption_key = Fernet.generate_key().decode()
    settings.CRM_ENCRYPTION_KEYS = [encryption_key]
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()  # empty at start, as production must have it
    env = base_env(
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        METRICS_TOKEN=TOKEN,
        CRM_ENCRYPTION_KEYS=encryption_key,
    )

    nobody_home = TenantFactory()  # no agents: every handover stays unassigned
    _, nobody_key = create_api_key(tenant=nobody_home, name="e2e", actor=Actor.system())
    with_crm = TenantFactory()
    agent = MembershipFactory(tenant=with_crm)
    CrmIntegrationFactory(tenant=with_crm, api_url=crm.url("refuses"))
    crm.behaviours["refuses"] = refuse_with_400
    _, crm_key = create_api_key(tenant=with_crm, name="e2e", actor=Actor.system())

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes() as procs:
        web = procs.start("gunicorn", gunicorn_command(port, workers=2), env=env)
        booted = web.wait_for(r"Booting worker with pid: \d+", count=2)
        worker_pids = [int(line.rsplit(" ", 1)[1]) for _, line in booted]
        outbox = procs.start(
            "outbox-worker",
            [sys.executable, "manage.py", "outbox_worker", "--threads", "2", "--poll", "0.2"],
            env=env,
        )
        outbox.wait_for("Outbox worker started")

        def scrape() -> dict:
            response = requests.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
            )
            assert response.status_code == 200, response.text
            return parse(response.text)

        def scrapes_agree(count: int = 6) -> dict:
            """Several scrapes (both workers answer some): the same counters each time."""
            results = [scrape() for _ in range(count)]
            for name, labels in [
                ("handover_requests_total", {"outcome": "created"}),
                ("handover_unassigned_total", {"reason": "no_agents"}),
                ("outbound_messages_total", {"channel": "whatsapp", "status": "failed"}),
                ("lead_sla_breaches_total", {"stage": "claim"}),
            ]:
                seen = {value(samples, name, **labels) for samples in results}
                assert len(seen) == 1, f"{name}{labels} differs between scrapes: {seen}"
            return results[-1]

        wait_until(
            lambda: requests.get(f"{base}/healthz", timeout=5).ok,
            timeout=30,
            what="gunicorn answers",
            every=0.2,
        )
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
        before = scrapes_agree()

        # Four at a time, so that while one worker is busy the other takes the next.
        def unassigned_handover(index: int) -> int:
            return requests.post(
                f"{base}{HANDOVER_ROUTE}",
                json={"contactId": f"+4916000000{index:02d}", "sendHandoverMessage": False},
                headers={"X-API-Key": nobody_key},
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(max_workers=4) as pool:
            codes = list(pool.map(unassigned_handover, range(UNASSIGNED_HANDOVERS)))
        assert codes == [201] * UNASSIGNED_HANDOVERS

        for index in range(REFUSED_HANDOVERS):
            response = requests.post(
                f"{base}{HANDOVER_ROUTE}",
                json={"contactId": f"+4917000000{index:02d}"},
                headers={"X-API-Key": crm_key},
                timeout=30,
            )
            assert response.status_code == 201, response.text
            assert response.json()["confirmationMessage"] == "queued"

        # A lead whose claim window has passed, swept by a process of its own.
        lead = create_lead(
            tenant=with_crm,
            actor=Actor.system(),
            name="Overdue",
            phone="+440000",
            assigned_agent_id=agent.pk,
        )
        Lead.all_tenants.filter(pk=lead.pk).update(
            claim_deadline=timezone.now() - timedelta(minutes=1)
        )
        sweep = subprocess.run(
            [sys.executable, "manage.py", "check_sla"],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sweep.returncode == 0, sweep.stdout + sweep.stderr

        wait_until(
            lambda: len(crm.received("refuses")) == REFUSED_HANDOVERS,
            timeout=30,
            what=f"the CRM got {REFUSED_HANDOVERS} confirmations",
        )
        wait_until(
            lambda: (
                value(scrape(), "outbound_messages_total", channel="whatsapp", status="failed")
                - value(before, "outbound_messages_total", channel="whatsapp", status="failed")
                == REFUSED_HANDOVERS
            ),
            timeout=30,
            what="the outbox worker's failures are on /metrics",
            every=0.2,
        )
        after = scrapes_agree()

        def moved(samples, name, **labels):
            return value(samples, name, **labels) - value(before, name, **labels)

        handovers = UNASSIGNED_HANDOVERS + REFUSED_HANDOVERS
        assert moved(after, "handover_requests_total", outcome="created") == handovers
        assert moved(after, "handover_unassigned_total", reason="no_agents") == (
            UNASSIGNED_HANDOVERS
        )
        assert moved(after, "routing_duration_seconds_count") == handovers
        assert moved(after, "lead_sla_breaches_total", stage="claim") == 1
        assert moved(after, "outbound_messages_total", channel="whatsapp", status="sent") == 0
        assert (
            moved(after, "http_requests_total", method="POST", route=HANDOVER_ROUTE, status="201")
            == handovers
        )
        assert value(after, "outbound_backlog_due") == 0

        served = {pid: handovers_served_by(multiproc_dir, pid, tmp_path) for pid in worker_pids}
        print(f"POST {HANDOVER_ROUTE} answered per gunicorn worker: {served}")
        assert sum(served.values()) == handovers
        assert all(count > 0 for count in served.values()), (
            f"both workers served handovers, and the scrape added them up: {served}"
        )

        # A worker restarts (max-requests, a crash): what it counted is still counted.
        killed = worker_pids[0]
        os.kill(killed, signal.SIGTERM)  # a worker the test started
        web.wait_for(r"Booting worker with pid: \d+", count=3)
        wait_until(
            lambda: requests.get(f"{base}/healthz", timeout=5).ok,
            timeout=30,
            what="gunicorn answers after the restart",
            every=0.2,
        )
        restarted = scrapes_agree()
        assert moved(restarted, "handover_requests_total", outcome="created") == handovers
        assert moved(restarted, "lead_sla_breaches_total", stage="claim") == 1
