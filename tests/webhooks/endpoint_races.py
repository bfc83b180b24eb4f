"""Endpoints that appear while a write reads them: a handover or a lead intake reads the
tenant's endpoints, then picks, writing their events in the pick's statement (refused
when another endpoint appeared in between). With the endpoint and the bodies it is to
hear, for the tests of writes attached to the pick."""

import json
import threading

from django.db import connection

from core.actor import Actor
from outbox.models import OutboundMessage
from webhooks import events
from webhooks.services import create_endpoint


def endpoint_for(tenant, url="https://hooks.example.com/in"):
    """An active endpoint of `tenant` that hears every event."""
    endpoint, _secret = create_endpoint(
        tenant=tenant, actor=Actor.system(), url=url, events=None, description="test"
    )
    return endpoint


def bodies_heard(endpoint, kind: str | None = None) -> list[dict]:
    """The bodies of the webhook messages queued for `endpoint` (of event `kind`), in
    the order they were written."""
    rows = OutboundMessage.all_tenants.filter(channel="webhook").order_by("created_at")
    if kind is not None:
        rows = rows.filter(kind=kind)
    return [
        json.loads(m.payload["body"])
        for m in rows
        if m.payload.get("endpoint_id") == str(endpoint.pk)
    ]


def add_an_endpoint_after_the_first_read(monkeypatch, module, add) -> list:
    """After `module.active_endpoints` first reads, another connection commits a new
    endpoint (`add(url)`, in a thread of its own). The list holds it once added."""
    added = []
    read = module.active_endpoints

    def add_and_commit():
        try:
            added.append(add("https://hooks.example.com/added"))
        finally:
            connection.close()

    def read_then_another_process_adds_one(tenant_ids):
        found = read(tenant_ids)
        if not added:
            other = threading.Thread(target=add_and_commit)
            other.start()
            other.join(timeout=10)
        return found

    monkeypatch.setattr(module, "active_endpoints", read_then_another_process_adds_one)
    return added


def add_an_endpoint_after_every_read(monkeypatch, module, add) -> list:
    """After each read of `module.active_endpoints` that a pick's events are written for
    (the first ENDPOINT_READS), a new endpoint is added (`add(url)`, committed with the
    test's connection). The list holds them."""
    added = []
    read = module.active_endpoints

    def another_one_after_each_read(tenant_ids):
        found = read(tenant_ids)
        if len(added) < events.ENDPOINT_READS:
            added.append(add(f"https://hooks.example.com/{len(added)}"))
        return found

    monkeypatch.setattr(module, "active_endpoints", another_one_after_each_read)
    return added
