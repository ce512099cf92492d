"""bench.connection_split counts the server ends of a port's connections, by the process holding them."""

from __future__ import annotations

import os
import socket

import pytest

from bench.connection_split import connection_holders

pytestmark = pytest.mark.unit


def test_the_server_ends_of_a_ports_connections_are_counted_for_the_process_holding_them() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            # the client ends have ephemeral local ports: only the three accepted ends count
            assert connection_holders(port) == {os.getpid(): 3}
            accepted.pop().close()
            assert connection_holders(port) == {os.getpid(): 2}
        finally:
            for s in clients + accepted:
                s.close()
