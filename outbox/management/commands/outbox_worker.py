import signal

from django.core.management.base import BaseCommand

from outbox.worker import OutboxWorker


class Command(BaseCommand):
    help = (
        "Send outbound messages (WhatsApp, email, webhooks) as they fall due. Run one or "
        "more; they share the work through row locks."
    )

    def add_arguments(self, parser):
        parser.add_argument("--threads", type=int, help="sending threads (OUTBOX_WORKER_THREADS)")
        parser.add_argument(
            "--poll", type=float, help="seconds between polls (OUTBOX_POLL_SECONDS)"
        )

    def handle(self, *args, threads=None, poll=None, **options):
        worker = OutboxWorker(threads=threads, poll_seconds=poll)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        worker.run()
