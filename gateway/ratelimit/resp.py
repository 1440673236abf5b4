"""A minimal RESP2 client for the limiter's one hot command, EVALSHA, pipelined on one connection.

redis-py spends ~43 us of Python per EVALSHA (pipeline objects, generic argument encoding, connection-pool
and retry machinery) where Redis spends ~6.6 us: in a Python gateway the client, not Redis, was the limit.
Here the EVALSHAs of one event-loop tick are packed into one buffer (the constant parts pre-encoded) and
written once; hiredis (C) parses the replies, which are handed to the waiting futures in the order the
commands were written.

Only what the hot path needs: plain TCP `redis://[[user]:password@]host[:port][/db]`. TLS, unix sockets,
URL options and Redis Cluster stay on redis-py (`Endpoint.from_url` answers None for them).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError

CHECK, RESENT, INTERNAL, LOAD = range(4)  # what a reply answers: see _Connection.slots
Slot = tuple["asyncio.Future[Any] | None", bytes, int]
_MAX_CACHED_ARGS = 1024


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode(parts: Sequence[bytes]) -> bytes:
    """One command as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: TCP host and port, database, AUTH credentials."""

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> Endpoint | None:
        """The endpoint of a plain `redis://` URL; None when redis-py must handle it (TLS, unix, options)."""
        try:
            parts = urlsplit(url)
            if parts.scheme != "redis" or parts.query or parts.fragment:
                return None
            path = parts.path.strip("/")
            return cls(
                host=parts.hostname or "localhost",
                port=parts.port or 6379,
                db=int(path) if path else 0,
                # As redis-py reads them: an empty user or password is no user or password.
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
            )
        except ValueError:
            return None  # a bad port or database: let redis-py report it in its own words

    def handshake(self) -> list[bytes]:
        """The commands a new connection sends before anything else (pipelined with the first batch)."""
        commands = []
        if self.password is not None:
            auth = [b"AUTH", self.password.encode()]
            if self.username is not None:
                auth.insert(1, self.username.encode())
            commands.append(encode(auth))
        if self.db:
            commands.append(encode([b"SELECT", str(self.db).encode()]))
        return commands


class _Connection(asyncio.Protocol):
    """One TCP connection; `slots` has one entry per command written and not yet answered, in order."""

    def __init__(self, pipe: ScriptPipe) -> None:
        self.pipe = pipe
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        # (future, command, kind): the future is None for INTERNAL (AUTH, SELECT) and LOAD (SCRIPT LOAD)
        self.slots: deque[Slot] = deque()
        self.loading = False  # a SCRIPT LOAD is written and not answered yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is one without subclassing it)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # small pipelined writes must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe.lost(self, exc)

    def write(self, data: bytes, slots: Sequence[Slot]) -> None:
        assert self.transport is not None
        self.slots.extend(slots)
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        slots = self.slots
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.pipe.reset(InvalidResponse(f"Protocol error: {exc}"), self)
                return
            if reply is False:
                return
            if not slots:
                self.pipe.reset(InvalidResponse("a reply nothing was waiting for"), self)
                return
            future, command, kind = slots.popleft()
            if isinstance(reply, hiredis.ReplyError):
                if not self._error(str(reply), future, command, kind):
                    return
            elif kind == LOAD:
                self.loading = False
            elif future is not None and not future.done():  # done: the caller was cancelled
                future.set_result(reply)

    def _error(self, message: str, future: asyncio.Future[Any] | None, command: bytes, kind: int) -> bool:
        """Deal with one error reply; False when the connection was reset."""
        if kind == CHECK and message.startswith("NOSCRIPT"):
            # Redis restarted, failed over or had SCRIPT FLUSH: load the script again, then send this command
            # again behind it, on the same connection, without waiting: replies stay in order.
            slots: list[Slot] = []
            data = b""
            if not self.loading:
                self.loading = True
                data = self.pipe.load_command
                slots.append((None, b"", LOAD))
            slots.append((future, command, RESENT))
            self.pipe.round_trips += 1
            self.write(data + command, slots)
            return True
        if kind == LOAD:
            self.loading = False  # the commands resent behind it fail on their own NOSCRIPT
            return True
        if kind == INTERNAL:  # AUTH or SELECT refused: nothing on this connection can work
            self.pipe.reset(ResponseError(message), self)
            return False
        if future is not None and not future.done():
            error = NoScriptError if message.startswith("NOSCRIPT") else ResponseError
            future.set_exception(error(message))
        return True


class ScriptPipe:
    """EVALSHA of one script over one pipelined connection, with a deadline per batch of checks.

    `submit` answers a future per call: the flat reply, or an exception (TimeoutError, a redis-py
    ConnectionError or ResponseError, an OSError). When a deadline passes the connection is dropped and every
    command on it fails, so a late reply can never answer a later command; the next batch reconnects.
    """

    def __init__(self, endpoint: Endpoint, script: str, *, timeout: float, connect_timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.round_trips = 0  # buffers written: with the number of checks, how well batching works
        self.connects = 0
        sha = hashlib.sha1(script.encode()).hexdigest().encode()
        self.load_command = encode([b"SCRIPT", b"LOAD", script.encode()])
        self._evalsha = bulk(b"EVALSHA") + bulk(sha)
        self._heads: dict[tuple[int, int], bytes] = {}
        self._args: dict[str | int, bytes] = {}
        self._pending: list[tuple[asyncio.Future[Any], bytes]] = []
        self._queued: list[tuple[asyncio.Future[Any], bytes]] = []  # written once connected
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._connect_error: Exception | None = None
        self._closed = False

    def submit(self, keys: Sequence[str], args: Sequence[str | int]) -> asyncio.Future[Any]:
        """Queue one EVALSHA for the write at the end of this loop tick; its future answers the reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, self._command(keys, args)))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return future

    def _command(self, keys: Sequence[str], args: Sequence[str | int]) -> bytes:
        head = self._heads.get((len(keys), len(args)))
        if head is None:
            count = str(len(keys)).encode()
            head = b"*%d\r\n" % (3 + len(keys) + len(args)) + self._evalsha + bulk(count)
            self._heads[(len(keys), len(args))] = head
        parts = [head]
        for key in keys:
            raw = key.encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
        cache = self._args
        for arg in args:
            # Arguments are a few constants of the policy (interval, capacity, enforced): encoded once.
            encoded = cache.get(arg)
            if encoded is None:
                encoded = bulk(str(arg).encode())
                if len(cache) < _MAX_CACHED_ARGS:
                    cache[arg] = encoded
            parts.append(encoded)
        return b"".join(parts)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        if self._closed:
            self._fail(batch, RedisConnectionError("the rate-limit store is closed"))
            return
        loop.call_later(self.timeout, self._expire, batch)
        conn = self._conn
        if conn is not None and conn.transport is not None and not conn.transport.is_closing():
            self.round_trips += 1
            conn.write(b"".join(command for _, command in batch), [(f, c, CHECK) for f, c in batch])
            return
        self._queued.extend(batch)
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), endpoint.host, endpoint.port
                )
        except Exception as exc:
            if self._connecting is asyncio.current_task():
                self._connecting = None
                self._connect_error = exc
                queued, self._queued = self._queued, []
                self._fail(queued, exc)
            return
        # (A CancelledError comes from reset(), which has already failed the queue.)
        if self._connecting is not asyncio.current_task():  # reset() gave up on this one: not ours to use
            if conn.transport is not None:
                conn.transport.abort()
            return
        self._connecting = None
        self.connects += 1
        if self._closed:
            if conn.transport is not None:
                conn.transport.abort()
            return
        self._conn = conn
        queued, self._queued = self._queued, []
        queued = [(f, c) for f, c in queued if not f.done()]
        handshake = endpoint.handshake()
        slots: list[Slot] = [(None, b"", INTERNAL) for _ in handshake]
        slots += [(f, c, CHECK) for f, c in queued]
        self.round_trips += 1
        conn.write(b"".join(handshake) + b"".join(c for _, c in queued), slots)

    def _expire(self, batch: list[tuple[asyncio.Future[Any], bytes]]) -> None:
        for future, _ in batch:
            if not future.done():
                # Redis hangs (or the connection does): drop it with everything written on it, so that no
                # late reply is taken for the answer to a later command.
                self.reset(TimeoutError())
                self._fail(batch, TimeoutError())
                return

    def reset(self, exc: BaseException, conn: _Connection | None = None) -> None:
        """Drop the connection (only if it is still `conn`, when given) and fail every command on it."""
        current = self._conn
        if conn is not None and conn is not current:
            return
        self._conn = None
        if current is not None:
            slots, current.slots = current.slots, deque()
            if current.transport is not None:
                current.transport.abort()
            for future, _, _ in slots:
                if future is not None and not future.done():
                    future.set_exception(exc)
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        queued, self._queued = self._queued, []
        self._fail(queued, exc)

    def lost(self, conn: _Connection, exc: Exception | None) -> None:
        """The connection closed (Redis stopped or restarted, or we dropped it)."""
        self.reset(exc if exc is not None else RedisConnectionError("Connection closed by server."), conn)

    @staticmethod
    def _fail(batch: list[tuple[asyncio.Future[Any], bytes]], exc: BaseException) -> None:
        for future, _ in batch:
            if not future.done():
                future.set_exception(exc)

    async def connect(self) -> None:
        """Open the connection ahead of the first check; raises why it could not."""
        if self._conn is None and self._connecting is None:
            self._connect_error = None
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        if self._connecting is not None:
            await asyncio.wait([self._connecting])  # (not cancelled itself when reset() cancels the task)
        if self._conn is None:
            raise self._connect_error or RedisConnectionError("the connection was dropped while opening")

    def close(self) -> None:
        """Drop the connection; checks still waiting fail, later ones fail at once."""
        self._closed = True
        self.reset(RedisConnectionError("the rate-limit store is closed"))
