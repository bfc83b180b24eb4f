from django.urls import path

from workspace import views

urlpatterns = [
    path("conversations/", views.conversations, name="conversations"),
    path("conversations/live/", views.conversations_live, name="conversations-live"),
    path("conversations/<uuid:session_id>/accept/", views.accept, name="conversation-accept"),
    path("conversations/<uuid:session_id>/close/", views.close, name="conversation-close"),
    path("conversations/<uuid:session_id>/transfer/", views.transfer, name="conversation-transfer"),
    path("notifications/", views.notifications, name="notifications"),
    path("notifications/live/", views.notifications_live, name="notifications-live"),
    path("notifications/unread/", views.unread_badge, name="notifications-unread"),
    path("notifications/read-all/", views.notices_read_all, name="notifications-read-all"),
    path(
        "notifications/<str:kind>/<uuid:notice_id>/read/",
        views.notice_read,
        name="notification-read",
    ),
    path("notifications/email/", views.conversation_emails, name="conversation-emails"),
    path("presence/", views.presence, name="presence"),
    path("presence/heartbeat", views.heartbeat, name="presence-heartbeat"),
]
