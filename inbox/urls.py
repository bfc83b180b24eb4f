from django.urls import path

from inbox.api import HandoverApi, HandoverDiagnosticsApi

urlpatterns = [
    path("handover", HandoverApi.as_view(), name="api-handover"),
    path("diagnostics/handover", HandoverDiagnosticsApi.as_view(), name="api-handover-diagnostics"),
]
