"""The candidate's client: whole answers, bounded memory, lingering on timeouts.

The candidate's answer is collected whole, but only ``keep_bytes`` of it are held; the rest is
counted. Each call is a :class:`CandidateCall` that the connection calls back, so the tee needs
no task or future per teed request. When the tee's deadline passes, the call's *outcome* is a
timeout at once, but the connection is not torn down: it lingers for up to ``linger_s`` so a late
answer can drain and the connection be reused. Closing it would cost a new TCP handshake per teed
request exactly when the candidate is slow. Lingering connections count towards the tee's
in-flight bound, so a hung candidate fills the bound and further tees are shed instead of opening
a connection per request.
"""

from __future__ import annotations

import abc
import asyncio
import logging

import msgspec

from proxy.exceptions import UpstreamProtocolError
from proxy.http.client import ClientConnection
from proxy.http.exchange import ResponseHead, Upstream
from proxy.http.pool import Pool

__all__ = ["CandidateCall", "CandidateClient", "CandidateResponse"]

log = logging.getLogger("shadowtee.proxy")


class CandidateResponse(msgspec.Struct, frozen=True, gc=False):
    """The candidate's answer (a msgspec struct: built in C, once per teed request)."""

    status: int
    model_version: str | None
    body: bytes  # empty when the body was larger than the client's keep_bytes
    size: int  # bytes of body received, kept or not
    truncated: bool = False
    # Not held because the caller's byte budget was full (see CandidateCall._hold): the answer
    # arrived but was not kept, so the caller records the call as shed, not as an answer.
    over_budget: bool = False


class CandidateClient:
    """The candidate's pool, and the bounds every call on it keeps."""

    def __init__(
        self,
        base_url: str,
        *,
        linger_s: float,
        max_body_bytes: int = 64 * 1024 * 1024,
        keep_bytes: int = 1024 * 1024,
    ):
        self._pool = Pool(base_url, "candidate")
        self.prefix = self._pool.prefix
        self.host_header = self._pool.host_header
        self.max_body_bytes = max_body_bytes
        self.keep_bytes = keep_bytes
        self.linger_s = linger_s

    @property
    def lingering(self) -> int:
        return self._pool.lingering

    @property
    def open_connections(self) -> int:
        return self._pool.open_connections

    @property
    def pool(self) -> Pool:
        return self._pool

    async def close(self) -> None:
        """Close every connection, lingering ones included."""
        await self._pool.close()


class CandidateCall(abc.ABC):
    """One candidate request driven by the connection's callbacks: no task, no future.

    The tee starts thousands of these a second, so the exchange is a plain object that the
    connection calls back (it is the connection's sink) and that reports once, through
    :meth:`finished`, with the answer or the exception. :meth:`start` sends on an idle pooled
    connection, or opens one (the only step that needs a task); a kept-alive connection that the
    server had already closed is retried once on a fresh one (the candidate is a shadow: a
    second delivery harms nothing). :meth:`abandon` is how the caller gives up (its deadline,
    shutdown): nothing is reported after it, and the connection lingers so a late answer can
    drain.
    """

    __slots__ = (
        "_chunks",
        "_client",
        "_conn",
        "_connecting",
        "_data",
        "_head",
        "_live",
        "_over_budget",
        "_reused",
        "_size",
        "_status",
        "_truncated",
        "_version",
    )

    def __init__(self, client: CandidateClient, data: bytes, method: str) -> None:
        self._client = client
        self._data = data
        self._head = method == "HEAD"
        self._conn: ClientConnection | None = None
        self._connecting: asyncio.Task[ClientConnection] | None = None
        self._reused = False
        self._live = True
        self._chunks: list[bytes] = []
        self._size = 0
        self._status = 0
        self._version: str | None = None
        self._truncated = False
        self._over_budget = False

    def _hold(self, size: int) -> bool:
        """Whether ``size`` more bytes of the answer may be held (a caller's byte budget); on
        ``False`` the call drops what it holds of the answer and reads the rest without keeping
        it."""
        return True

    def _dropped(self) -> None:  # noqa: B027 - a hook: nothing to give back without a budget
        """The call no longer holds any of the answer (a caller's byte budget gets it back)."""

    @property
    def over_budget(self) -> bool:
        """The answer passed the caller's byte budget: it is read but not kept."""
        return self._over_budget

    @abc.abstractmethod
    def finished(self, resp: CandidateResponse | None, exc: Exception | None) -> None:
        """Called exactly once, unless abandoned first: the answer, or what went wrong."""

    def start(self) -> None:
        conn = self._client.pool.idle_connection()
        if conn is None:
            self._open()
        else:
            self._reused = True
            self._send(conn)

    def abandon(self) -> asyncio.Task[object] | None:
        """The caller gave up: report nothing more; let the connection drain a late answer.

        Returns the connection attempt it cancelled, if one was under way, so that a caller
        shutting down can wait for it to unwind.
        """
        self._live = False
        self._data = b""
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
        elif self._conn is not None:
            self._client.pool.linger(self._conn, self._client.linger_s)
        return connecting

    def _open(self) -> None:
        self._reused = False
        task = asyncio.get_running_loop().create_task(self._client.pool.connect())
        self._connecting = task
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[ClientConnection]) -> None:
        self._connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if self._live:
                self._report(None, exc if isinstance(exc, Exception) else ConnectionError(exc))
            return
        conn = task.result()
        if self._live:
            self._send(conn)
        else:  # opened after the caller gave up: keep it for the next call
            self._client.pool.release(conn)

    def _send(self, conn: ClientConnection) -> None:
        self._conn = conn
        try:
            conn.send(self._data, self._head, self)
        except Exception as exc:
            conn.detach()  # this call hears of it here, not again when the connection closes
            conn.close()
            self.fail(exc)

    def _report(self, resp: CandidateResponse | None, exc: Exception | None) -> None:
        self._live = False
        self._conn = None
        self._data = b""
        self._chunks = []
        try:
            self.finished(resp, exc)
        except Exception:  # the caller's bug must not break the connection it was called from
            log.exception("candidate call: reporting the result failed")

    # --- Sink (called by the connection) ------------------------------------------------------

    def head(self, conn: Upstream, head: ResponseHead) -> None:
        if head.length is not None and head.length > self._client.max_body_bytes:
            raise UpstreamProtocolError("response body too large")
        self._status = head.status
        self._version = head.model_version

    def data(self, conn: Upstream, chunk: bytes) -> None:
        # A body past ``keep_bytes`` is still read to its end (so the latency is the whole
        # answer's and the connection can be reused) but not held: memory per call stays bounded.
        self._size += len(chunk)
        client = self._client
        if self._size > client.max_body_bytes:
            raise UpstreamProtocolError("response body too large")
        if self._truncated or not self._live:
            return
        if self._size > client.keep_bytes:
            self._truncated = True
            self._chunks = []
            self._dropped()
        elif self._hold(len(chunk)):
            self._chunks.append(chunk)
        else:
            self._truncated = self._over_budget = True
            self._chunks = []
            self._dropped()

    def done(self, conn: Upstream) -> None:
        if self._live:
            chunks = self._chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            resp = CandidateResponse(
                self._status, self._version, body, self._size, self._truncated, self._over_budget
            )
            self._report(resp, None)

    def fail(self, exc: Exception) -> None:
        if not self._live:
            return
        conn = self._conn
        stale = isinstance(exc, ConnectionError) and not isinstance(exc, UpstreamProtocolError)
        if self._reused and stale and not (conn and conn.got_bytes):
            # A keep-alive connection the server had already closed: retry on a fresh one.
            self._conn = None
            self._open()
            return
        self._report(None, exc)
