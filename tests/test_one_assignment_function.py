"""One way to give work to an agent per kind of work: sessions through
`inbox.services._give_session_to`, leads through `leads.services._give_lead_to`. Every
other path (handover, retries, admin actions, reassignment, sweeps) calls one of them,
so a rule added there (a field to reset, a counter) cannot be forgotten by a copy."""

import ast
from pathlib import Path

from django.conf import settings

APPS = ("core", "audit", "teams", "outbox", "webhooks", "inbox", "leads", "config")
AGENT_FIELDS = {"assigned_agent", "assigned_agent_id"}
THE_ONE_WAY = {
    ("inbox/services.py", "_give_session_to"),
    ("leads/services.py", "_give_lead_to"),
}


def _writes_of_the_agent(tree: ast.AST):
    """(function name, line) of each `x.assigned_agent = …` and of each
    `update(assigned_agent=…)` / `Model(assigned_agent=…)` call."""
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Attribute) and target.attr in AGENT_FIELDS:
                        yield function.name, node.lineno
            if isinstance(node, ast.Call) and _writes_rows(node):
                for keyword in node.keywords:
                    if keyword.arg in AGENT_FIELDS:
                        yield function.name, node.lineno


def _writes_rows(call: ast.Call) -> bool:
    """`….update(…)`, `….create(…)` and the like, or a model built as `Lead(…)`; not a
    service called with an agent id (that is the service's input, not a write)."""
    if isinstance(call.func, ast.Attribute):
        return call.func.attr in {"update", "create", "get_or_create", "update_or_create"}
    return isinstance(call.func, ast.Name) and call.func.id[:1].isupper()


def test_only_the_one_function_per_kind_of_work_sets_the_agent():
    root = Path(settings.BASE_DIR)
    writers = set()
    for app in APPS:
        for path in (root / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for function, line in _writes_of_the_agent(tree):
                writers.add((str(path.relative_to(root)), function, line))

    assert {(path, function) for path, function, _ in writers} == THE_ONE_WAY, sorted(writers)
