import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

from core import log_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("handover")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Each task run is its own log scope, named by the task id: nothing of the previous task
# on this worker shows up on its lines. A task run eagerly inside a request gets its own
# scope too, and the request's comes back after it.
_scopes: dict = {}


@task_prerun.connect
def _start_log_scope(task_id=None, **_):
    _scopes[task_id] = log_context.start(request_id=task_id)


@task_postrun.connect
def _end_log_scope(task_id=None, **_):
    token = _scopes.pop(task_id, None)
    if token is not None:
        log_context.reset(token)
