"""The HTTP protocol uvicorn runs for gloro-serve: uvicorn's httptools protocol, with four changes:
a request head (request line and headers) has a size limit, a request has a time limit to arrive,
a draining server treats a connection that has no request in progress differently, and an Upgrade
request is served as plain HTTP without a warning in the log."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from server.errors import error_body

# How long a connection with no request in progress when the drain begins may take to send its
# next one. A client that has just connected, or has just had an answer on a kept-alive
# connection, sends its request at once: it is in the socket's buffer or one round trip away.
NEXT_REQUEST_GRACE_S = 0.2

# The most bytes a request's head may take beyond the read that began it. uvicorn's httptools
# protocol sets no limit (its h11 protocol does, 16 KiB), so one client sending a header without
# end grew the server's memory with every byte it sent (tests/server/test_server_hostile.py
# sends 64 MiB). 64 KiB is four times what Node.js takes by default.
MAX_HEAD_BYTES = 64 * 1024
HEAD_TOO_LARGE = 431
READ_TIMEOUT = 408


class ServingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except:

    - A request head over MAX_HEAD_BYTES is answered 431 (Request Header Fields Too Large) with
      the server's JSON error body, and the connection closed, before the head is read further.
      The parser keeps a header's bytes until the header ends, out of the app's sight, so the
      limit is kept here: every read that arrives while a head is still incomplete counts, except
      the read in which that request began (part of it may be the previous request's body), so
      a head costs at most one read (250 KB with uvloop) more than the limit, and a request
      under the limit is never refused.
    - A connection must send a whole request within `read_timeout_s` (`--read-timeout-s`) of
      opening, and a request that does not come in one read must end within that time of its
      first read: else a JSON 408 and the connection closed (just closed if not one byte came).
      uvicorn keeps a connection that never sends a byte, or sends a request a byte at a time,
      or stops in the middle of a body, open for ever, holding what came: enough of them would
      use up the process's file descriptors or memory, and no one else could connect. (Between
      requests uvicorn's keep-alive timeout closes an idle connection, 5 s.) A connection starts
      one timer when it opens, stopped by its first whole request; a later request that arrives
      in one read, the usual case, starts none.
    - When the server starts draining (SIGTERM, or a worker retiring on SIGHUP) a connection
      with no request in progress is given NEXT_REQUEST_GRACE_S to send one, which is answered
      with Connection: close; then it is closed.

      uvicorn closes such connections as it stops accepting. A client that has just connected,
      or that reuses a kept-alive connection for request after request, has its next request on
      the way, and saw the connection closed with no answer: through SIGHUP replacements of
      `--workers 2`, 3 of 3,552 requests of 8 clients opening a connection a request, and 25 of
      47,450 of 8 clients each keeping one connection; none with this class (`python -m
      bench.reload`; docs/benchmarks.md, "Reloads"). A connection that sends nothing within the
      grace is closed then, as HTTP/1.1 allows an idle one to be.
    """

    _draining = False
    _reading = False  # between a request's first byte and its last
    _in_head = False  # between a request's first byte and the end of its headers
    _began = False  # a request began in the read being parsed
    _head_bytes = 0
    _read_timer: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, read_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeout_s = read_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._began = False
        super().data_received(data)
        if self.transport.is_closing():
            return
        if not self._reading:
            if self._read_timer is not None:
                self._stop_read_timer()
            return
        if self._read_timer is None:
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)
        if not self._in_head or self._began:
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse_head()

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if not self._reading:
            if self.cycle is None:  # not one byte since the connection opened
                self.transport.close()
            return
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            self.transport.close()  # an answer (to this or an earlier request) is under way
            return
        self._refuse(READ_TIMEOUT, f"request not received in full within {self.read_timeout_s:g} s "
                                   "(--read-timeout-s)")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading, self._in_head, self._began, self._head_bytes = True, True, True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answer it, then close

    def on_message_complete(self) -> None:
        self._reading = False
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self._refuse(HEAD_TOO_LARGE,
                     f"request head (request line and headers) over the limit of {MAX_HEAD_BYTES} bytes")

    def _unsupported_upgrade_warning(self) -> None:
        """Nothing logged: the server has no WebSocket routes (uvicorn runs with ws="none"), so an
        Upgrade request is served as plain HTTP, and uvicorn's two warnings for it (one advising
        to install a WebSocket library) would let any client fill the log."""

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request it cannot parse, as the server's JSON error body."""
        self._refuse(400, msg)

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `{"error": message}` and close the connection."""
        body = error_body(message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:  # no request in progress
            if not self._draining:
                self._draining = True
                self.loop.call_later(NEXT_REQUEST_GRACE_S, self._close_unless_answering)
            return
        super().shutdown()  # a request in progress: answered, then the connection closes

    def _close_unless_answering(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
