from django.urls import path

from teams.api import WhoAmIApi

urlpatterns = [
    path("whoami", WhoAmIApi.as_view(), name="api-whoami"),
]
