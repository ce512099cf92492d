"""The HTTP protocol uvicorn runs for gloro-serve: uvicorn's httptools protocol, with one change
to how a draining server treats a connection it has just accepted."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How long a connection accepted before the drain began may take to deliver its first request.
# Its client sent the request as soon as it had connected: it is in the socket's buffer or one
# round trip away.
FIRST_REQUEST_GRACE_S = 0.2


class DrainingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that when the server starts draining (SIGTERM, or a
    worker retiring on SIGHUP) a connection whose first request has not been read yet is given
    FIRST_REQUEST_GRACE_S to deliver it, and that request is answered (with Connection: close).

    uvicorn closes every connection with no request in progress as it stops accepting. A client
    that connected a moment earlier has its request on the way, often already in the socket's
    buffer, and saw its connection closed with no answer: 3 of 3,552 requests from 8 clients
    opening a connection a request through 18 SIGHUPs of `--workers 2`, none after the change
    (`python -m bench.reload`; docs/benchmarks.md, "Reloads"). A connection idle between requests
    is still closed at once, as HTTP/1.1 allows: its client knows to retry on a fresh one.
    """

    _awaiting_first_request = True
    _draining = False

    def on_headers_complete(self) -> None:
        self._awaiting_first_request = False
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answer it, then close

    def shutdown(self) -> None:
        if self.cycle is None and self._awaiting_first_request:
            if not self._draining:
                self._draining = True
                self.loop.call_later(FIRST_REQUEST_GRACE_S, self._close_unless_answering)
            return
        super().shutdown()

    def _close_unless_answering(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
