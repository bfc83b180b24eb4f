import json
import os
from datetime import datetime
from importlib import import_module
from importlib.util import find_spec

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import transaction

from outbox.delivery import deliver_due


def demo_seeders():
    """Each app may ship a `demo.seed(context)`; they run in INSTALLED_APPS order, so
    `inbox` and `leads` can add sessions and leads on top of the people `teams` made."""
    for app_config in apps.get_app_configs():
        module_name = f"{app_config.name}.demo"
        if find_spec(module_name) is not None:
            yield import_module(module_name).seed


class Command(BaseCommand):
    help = (
        "Create (or refresh) a demo tenant with an admin, agents in every role (online, "
        "and one away), teams, an API key, a conversation waiting for acceptance and a "
        "second tenant for isolation checks. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Print exactly one JSON object."
        )
        parser.add_argument(
            "--admin-password",
            default=os.environ.get("DEMO_ADMIN_PASSWORD", ""),
            help="Password for admin@demo.test (default: DEMO_ADMIN_PASSWORD or a random one).",
        )

    def handle(self, *args, as_json: bool, admin_password: str, **options):
        context = {"admin_password": admin_password}
        with transaction.atomic():
            for seed in demo_seeders():
                seed(context)
        # Send the demo's emails and messages now, so that they show up in this command's
        # output (embedded mode's console email backend) rather than later, anywhere.
        deliver_due(limit=1000)
        output = context["output"]
        if as_json:
            self.stdout.write(json.dumps(output))
            return
        self.stdout.write(self.style.SUCCESS(f"Demo tenant: {output['tenant']['name']}"))
        self.stdout.write(f"  admin login:  {output['admin']['username']}")
        self.stdout.write(f"  password:     {output['admin']['password']}")
        self.stdout.write(f"  API key:      {output['api_key']}")
        self.stdout.write(f"  agents:       {len(output['agents'])}, teams: {len(output['teams'])}")
        self.stdout.write(f"  other tenant: {output['other_tenant']['id']} (isolation checks)")
        by_presence = {}
        for agent in output["agents"]:
            by_presence.setdefault(agent["presence"], []).append(agent["email"])
        online = len(by_presence.pop("online", []))
        others = "".join(
            f", {presence}: {', '.join(emails)}" for presence, emails in sorted(by_presence.items())
        )
        self.stdout.write(f"  presence:     online: {online} (every team and tier){others}")
        waiting = output["waiting_session"]
        agent_email = next(
            a["email"] for a in output["agents"] if a["id"] == waiting["assigned_agent_id"]
        )
        until = datetime.fromisoformat(waiting["accept_deadline"]).strftime("%H:%M UTC")
        self.stdout.write(
            f"  accept window: {output['accept_window_minutes']} min; waiting for acceptance: "
            f"{waiting['contact_id']} by {agent_email} (until {until})"
        )
