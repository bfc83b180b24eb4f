"""URLs of the hot-path benchmark: production's, plus `GET /api/v1/bench/one-query`, the
yardstick a handover is compared with. Mounted only by config/settings_bench.py."""

from django.urls import path
from rest_framework.response import Response

from config.urls import handler400, handler404, handler500
from config.urls import urlpatterns as production
from teams.api_base import TenantApiView
from teams.models import Membership


class OneQueryApi(TenantApiView):
    """What the cheapest useful API call costs: the API key authenticated (as every
    endpoint does) and one SELECT by primary key, answered as JSON."""

    def get(self, request):
        agent = (
            Membership.objects.for_tenant(self.tenant)
            .filter(pk=request.query_params.get("agentId"))
            .values("id", "presence")
            .first()
        )
        return Response({"agent": agent})


urlpatterns = [path("api/v1/bench/one-query", OneQueryApi.as_view()), *production]

__all__ = ["handler400", "handler404", "handler500", "urlpatterns"]
