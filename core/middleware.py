"""503, not 500, for an outage anywhere on the site.

DRF views answer outages in their exception handler (core.api); this middleware does the
same for every other view (admin, agent pages, login). An outage raised in another
middleware (a session saved on the way out) never reaches a `process_exception`: Django
turns it into a response at that layer, through handler500 (or handler400, for the
SessionInterrupted a failed session save becomes), and `core.api` answers those with the
same 503.
"""

from core.api import outage_response


class ServiceUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        return outage_response(request, exception)
