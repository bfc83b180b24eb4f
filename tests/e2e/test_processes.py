"""The e2e helpers that tell which worker process sent a request to the local CRM."""

import os
import socket
import subprocess
import sys

from tests.e2e.processes import owner_of_port

_HOLD_A_CONNECTION_FROM_PORT = """
import socket, sys
local_port, peer_port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", local_port))
s.connect(("127.0.0.1", peer_port))
print("connected", flush=True)
sys.stdin.read()
"""


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_the_owner_is_found_when_two_processes_share_a_local_port_with_different_peers():
    crm, database = _listener(), _listener()
    ours = socket.socket()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ours.bind(("127.0.0.1", 0))
    shared_port = ours.getsockname()[1]
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLD_A_CONNECTION_FROM_PORT,
            str(shared_port),
            str(database.getsockname()[1]),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "connected"
        ours.connect(("127.0.0.1", crm.getsockname()[1]))
        pids = [other.pid, os.getpid()]

        assert owner_of_port(shared_port, pids, crm.getsockname()[1]) == pids[1]
        assert owner_of_port(shared_port, pids, database.getsockname()[1]) == pids[0]
    finally:
        other.stdin.close()
        other.wait(5)
        for sock in (ours, crm, database):
            sock.close()
