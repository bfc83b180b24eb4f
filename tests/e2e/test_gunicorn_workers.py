"""gunicorn as the Procfile runs it (config/gunicorn.conf.py): connections are spread
over the workers, so a load of keep-alive clients uses every worker's core."""

import re
import socket

import pytest

from tests.e2e.processes import base_env, free_port, gunicorn_command, processes, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

WORKERS = 2
CLIENTS = 32


def start_gunicorn(procs, port=None, *, wait=True, **env):
    port = port or free_port()
    web = procs.start(
        "gunicorn",
        gunicorn_command(
            port,
            workers=WORKERS,
            threads=8,
            extra=("--access-logfile", "-", "--access-logformat", "served %(p)s %(U)s?%(q)s"),
        ),
        env=base_env(**env),
    )
    if not wait:
        return port, web
    web.wait_for("Booting worker", count=WORKERS)
    # A worker opens its own listening socket after it has booted.
    wait_until(
        lambda: listening_sockets(port) == WORKERS, timeout=15, what="every worker listening"
    )
    return port, web


def listening_sockets(port: int) -> int:
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A")


def serving_worker_of_each_client(port: int, web) -> list[str]:
    """Open CLIENTS keep-alive connections at once, ask /healthz on each, and read which
    worker process answered each one (the access log's pid)."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CLIENTS)]
    try:
        for n, client in enumerate(clients):
            client.sendall(f"GET /healthz?client={n} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        for client in clients:
            assert client.recv(65536).startswith(b"HTTP/1.1 ")
        pattern = re.compile(r"served <(\d+)> /healthz\?client=(\d+)")

        def logged():
            found = {m.group(2): m.group(1) for _, line in web.lines if (m := pattern.search(line))}
            return found if len(found) == CLIENTS else None

        by_client = wait_until(logged, timeout=10, what="every request in the access log")
        return [by_client[str(n)] for n in range(CLIENTS)]
    finally:
        for client in clients:
            client.close()


def test_keep_alive_clients_arriving_at_once_are_spread_over_the_workers():
    with processes() as procs:
        port, web = start_gunicorn(procs)
        workers = serving_worker_of_each_client(port, web)
    busiest = max(workers.count(pid) for pid in set(workers))
    # The kernel spreads connections by a hash of their addresses: about half each; one
    # worker with more than 28 of the 32 has a chance of 3 in a million.
    assert len(set(workers)) == WORKERS
    assert busiest <= 28, f"one worker took {busiest} of {CLIENTS} connections"


def test_a_port_another_server_listens_on_stops_gunicorn_rather_than_sharing_it():
    """A stale server of the same user with SO_REUSEPORT on the port: without the check
    the workers would join it and take half its connections."""
    with socket.socket() as stale:
        stale.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stale.bind(("127.0.0.1", 0))
        stale.listen()
        with processes() as procs:
            _, web = start_gunicorn(procs, stale.getsockname()[1], wait=False)
            wait_until(lambda: not web.alive(), timeout=30, what="gunicorn gives up")
            assert web.process.returncode != 0
            assert "Connection in use" in web.output
