from django.urls import path

from leads.api import (
    ClaimLeadApi,
    CloseLeadApi,
    LeadDetailApi,
    LeadsApi,
    MarkLeadContactedApi,
    ReassignLeadApi,
)

urlpatterns = [
    path("leads", LeadsApi.as_view(), name="api-leads"),
    path("leads/<uuid:lead_id>", LeadDetailApi.as_view(), name="api-lead-detail"),
    path("leads/<uuid:lead_id>/claim", ClaimLeadApi.as_view(), name="api-lead-claim"),
    path(
        "leads/<uuid:lead_id>/contacted", MarkLeadContactedApi.as_view(), name="api-lead-contacted"
    ),
    path("leads/<uuid:lead_id>/close", CloseLeadApi.as_view(), name="api-lead-close"),
    path("reassign-lead", ReassignLeadApi.as_view(), name="api-reassign-lead"),
]
