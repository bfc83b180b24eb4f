"""The outbound URL guard (SSRF) by itself: every address a host resolves to is
checked, and each problem names the field."""

import socket

import pytest

from core import outbound
from core.outbound import outbound_url_problems


@pytest.fixture
def strict(settings):
    settings.OUTBOUND_ALLOW_HTTP = False
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False


def _resolves_to(monkeypatch, *addresses):
    def getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize(
    "addresses",
    [("1.1.1.1", "192.168.1.5"), ("1.1.1.1", "10.0.0.5"), ("169.254.169.254",)],
)
def test_a_host_with_any_internal_address_is_refused(monkeypatch, addresses):
    _resolves_to(monkeypatch, *addresses)

    problems = outbound_url_problems("https://hooks.example.com/in", field="url")

    assert len(problems) == 1
    assert problems[0].startswith("url resolves to a non-public address")


@pytest.mark.usefixtures("strict")
def test_a_host_with_only_public_addresses_is_accepted(monkeypatch):
    _resolves_to(monkeypatch, "93.184.216.34", "93.184.216.35")

    assert outbound_url_problems("https://hooks.example.com/in", field="url") == []


@pytest.mark.usefixtures("strict")
@pytest.mark.parametrize(
    ("url", "allow_query", "problem"),
    [
        ("https://", False, "apiUrl has no host"),
        ("https:///path", False, "apiUrl has no host"),
        ("https://crm.example.com/#frag", True, "apiUrl must not have a fragment"),
        ("https://crm.example.com/?a=1", False, "apiUrl must not have a query string or fragment"),
    ],
)
def test_a_url_without_a_host_or_with_a_fragment_or_query_is_refused_naming_the_field(
    monkeypatch, url, allow_query, problem
):
    _resolves_to(monkeypatch, "93.184.216.34")

    assert problem in outbound_url_problems(url, field="apiUrl", allow_query=allow_query)
