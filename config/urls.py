from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from config import dashboard, redistribute
from config.health import healthz
from config.metrics import metrics_view
from leads import views as leads_views

admin.site.site_header = "Handover administration"
admin.site.site_title = "Handover admin"
admin.site.index_title = "Tenants, people, conversations and leads"

urlpatterns = [
    # The API first, the handover's module leading: Django tries the patterns in order,
    # and the hot path need not walk past the admin's (none of these paths overlap).
    path("api/v1/", include("inbox.urls")),
    path("api/v1/", include("teams.urls")),
    path("api/v1/", include("leads.urls")),
    path("api/v1/", include("webhooks.urls")),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    # Before the admin's own URLs, whose catch-all would answer 404 for it.
    path("admin/dashboard/", include(dashboard.urlpatterns)),
    path("admin/teams/membership/", include(redistribute.urlpatterns)),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The split view serves Swagger UI's start-up script as a file, not inline, so that
    # it runs under our Content-Security-Policy.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("", leads_views.my_leads, name="home"),
    path("leads/", leads_views.my_leads, name="my-leads"),
    path("leads/<uuid:lead_id>/", leads_views.lead_page, name="lead-page"),
    path("leads/<uuid:lead_id>/claim/", leads_views.claim, name="lead-claim"),
    path("leads/<uuid:lead_id>/contacted/", leads_views.contacted, name="lead-contacted"),
    path("", include("workspace.urls")),
]

handler400 = "core.api.json_or_html_400"
handler404 = "core.api.json_or_html_404"
handler500 = "core.api.json_or_html_500"
