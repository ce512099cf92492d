"""The HTTP protocol uvicorn runs for gloro-serve: uvicorn's httptools protocol, with one change
to how a draining server treats a connection that has no request in progress."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# How long a connection with no request in progress when the drain begins may take to send its
# next one. A client that has just connected, or has just had an answer on a kept-alive
# connection, sends its request at once: it is in the socket's buffer or one round trip away.
NEXT_REQUEST_GRACE_S = 0.2


class DrainingHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that when the server starts draining (SIGTERM, or a
    worker retiring on SIGHUP) a connection with no request in progress is given
    NEXT_REQUEST_GRACE_S to send one, which is answered with Connection: close; then it is closed.

    uvicorn closes such connections as it stops accepting. A client that has just connected, or
    that reuses a kept-alive connection for request after request, has its next request on the
    way, and saw the connection closed with no answer: through SIGHUP replacements of `--workers
    2`, 3 of 3,552 requests of 8 clients opening a connection a request, and 25 of 47,450 of 8
    clients each keeping one connection; none with this class (`python -m bench.reload`;
    docs/benchmarks.md, "Reloads"). A connection that sends nothing within the grace is closed
    then, as HTTP/1.1 allows an idle one to be.
    """

    _draining = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answer it, then close

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
