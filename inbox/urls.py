from django.urls import path

from inbox.api import (
    AcceptSessionApi,
    CloseSessionApi,
    HandoverApi,
    HandoverDiagnosticsApi,
    SessionDetailApi,
)

urlpatterns = [
    path("handover", HandoverApi.as_view(), name="api-handover"),
    path("sessions/<uuid:session_id>", SessionDetailApi.as_view(), name="api-session"),
    path("sessions/<uuid:session_id>/close", CloseSessionApi.as_view(), name="api-session-close"),
    path(
        "sessions/<uuid:session_id>/accept", AcceptSessionApi.as_view(), name="api-session-accept"
    ),
    path("diagnostics/handover", HandoverDiagnosticsApi.as_view(), name="api-handover-diagnostics"),
]
