"""Who is on the other end of a request, behind proxies."""

from django.test import RequestFactory

from core.addresses import client_address


def test_a_forwarded_header_shorter_than_the_proxy_chain_falls_back_to_the_peer(settings):
    settings.TRUSTED_PROXY_COUNT = 2
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR="203.0.113.7")

    assert client_address(request) == "10.0.0.9"


def test_behind_two_proxies_the_address_the_outer_one_appended_counts(settings):
    settings.TRUSTED_PROXY_COUNT = 2
    request = RequestFactory().get(
        "/", REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7, 10.0.0.8"
    )

    assert client_address(request) == "203.0.113.7"
