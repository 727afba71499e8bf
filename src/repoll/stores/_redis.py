"""A shared store on Redis (redis-py's asyncio client), for several server instances.

Key layout (``{p}`` is the prefix, ``repoll:`` by default):

* ``{p}op:{id}``: a hash with the row fields (``v`` version, ``status``,
  ``exp``, ``rec`` the record as JSON, ``body``, ``key``);
* ``{p}idem:{digest}``: the id that owns an idempotency key;
* ``{p}unfinished``: a set of the ids not yet terminal;
* ``{p}bodies`` and ``{p}records``: sorted sets of terminal ids scored by
  ``expires_at``: purge drops responses from the first at expiry and whole
  records from the second a tombstone period later;
* ``{p}owners``: a sorted set of live owners scored by heartbeat deadline;
* ``{p}secret``: 32 random bytes shared by every instance (:meth:`RedisStore.secret`);
* channels ``{p}finished`` (each id that reaches a terminal state) and
  ``{p}cancel`` (each id whose cancellation was asked on another instance).

Every write is one Lua script, so state transitions are atomic across
instances: of two instances racing to finish, cancel or expire the same
operation, exactly one changes it. Ended records also get a Redis expiry
(``backstop`` after their own expiry), so nothing outlives its welcome even
if no instance ever purges.

The subscription has a connection of its own, watched by a supervisor task:
a silent connection is pinged, a failed or unanswered one is dropped and
made again with growing pauses, and the subscriber is then told to resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from .._errors import MissingExtraError

try:
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, TimeoutError
except ModuleNotFoundError as exc:
    raise MissingExtraError("redis", "redis") from exc

from .._errors import DuplicateOperation, StoreError, StoreNotOpen, StoreUnavailable
from ..core._model import Operation, decode_row, encode_row
from ._resubscribe import Resubscriber, deliver

logger = logging.getLogger("repoll")

# KEYS: op, unfinished, bodies, records, idem-or-empty
# ARGV: id, v, status, exp, rec, body, key, has_body, terminal, backstop_ms
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'dupid'} end
if KEYS[5] ~= '' then
  local owner = redis.call('GET', KEYS[5])
  if owner then return {'dupkey', owner} end
  redis.call('SET', KEYS[5], ARGV[1])
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'v', ARGV[2], 'status', ARGV[3], 'exp', ARGV[4],
           'rec', ARGV[5], 'key', ARGV[7])
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'body', ARGV[6]) end
if ARGV[9] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], ARGV[10])
  if KEYS[5] ~= '' then redis.call('PEXPIREAT', KEYS[5], ARGV[10]) end
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return {'ok'}
"""

# KEYS: op, unfinished, bodies, records, idem-or-empty
# ARGV: id, v, status, exp, rec, body, key, has_body, terminal, backstop_ms, expected, channel
_CAS = """
local current = redis.call('HMGET', KEYS[1], 'v', 'status')
if not current[1] or tonumber(current[1]) ~= tonumber(ARGV[11]) then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'status', ARGV[3], 'exp', ARGV[4], 'rec', ARGV[5])
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'body', ARGV[6])
else
  redis.call('HDEL', KEYS[1], 'body')
end
if ARGV[9] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], ARGV[10])
  if KEYS[5] ~= '' then redis.call('PEXPIREAT', KEYS[5], ARGV[10]) end
  if current[2] == 'queued' or current[2] == 'running' then
    redis.call('PUBLISH', ARGV[12], ARGV[1])
  end
end
return 1
"""

# KEYS: bodies, records; ARGV: now, now - tombstone, prefix, batch
_PURGE = """
local dropped = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(dropped) do
  redis.call('HDEL', ARGV[3] .. 'op:' .. id, 'body')
  redis.call('ZREM', KEYS[1], id)
end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, ARGV[4])
local deleted = 0
for _, id in ipairs(gone) do
  local op = ARGV[3] .. 'op:' .. id
  local key = redis.call('HGET', op, 'key')
  if key and key ~= '' then redis.call('DEL', ARGV[3] .. 'idem:' .. key) end
  deleted = deleted + redis.call('DEL', op)
  redis.call('ZREM', KEYS[2], id)
end
return deleted
"""

_UNAVAILABLE = (RedisConnectionError, TimeoutError, OSError)
# Whatever ends a subscription's connection: besides network errors, a
# server that answers LOADING or refuses a command after a restart.
_DROPS = (RedisError, OSError)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redacted(url: str) -> str:
    """The URL without its password: it goes into messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


async def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(RedisError, OSError):
        await pubsub.aclose()  # type: ignore[no-untyped-call]


class RedisStore:
    """Operations in Redis, shared by every instance that points at it."""

    shared = True
    # Heartbeats expire: a process stalled past owner_ttl looks dead for a while.
    exact_liveness = False

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "repoll:",
        backstop: float = 7 * 24 * 3600.0,
        health_interval: float = 5.0,
    ) -> None:
        """``health_interval``: seconds of silence after which a subscription pings
        its connection; one silent for twice that is given up and made again."""
        self.url = url
        self._where = f"Redis store {_redacted(url)}"
        self.prefix = prefix
        self._backstop = backstop
        self._health_interval = health_interval
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._listeners: list[asyncio.Task[None]] = []
        self._secret: bytes | None = None

    # --- plumbing -----------------------------------------------------------------

    @property
    def _r(self) -> aioredis.Redis:
        if self._redis is None:
            msg = f"{self._where} used before open() or after close()"
            raise StoreNotOpen(msg)
        return self._redis

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self._r  # noqa: B018 - raises StoreNotOpen; the scripts would reconnect by themselves
        try:
            return await self._scripts[name](keys=keys, args=args)
        except _UNAVAILABLE as exc:
            msg = f"{self._where}: {exc}"
            raise StoreUnavailable(msg) from exc

    def _script_args(self, op: Operation) -> tuple[list[str], list[Any]]:
        op_id, version, status, expires_at, record, body, key = encode_row(op)
        terminal = op.status.is_terminal
        backstop_ms = int(((expires_at or time.time()) + self._backstop) * 1000)
        keys = [
            self._key("op", op_id),
            self._key("unfinished"),
            self._key("bodies"),
            self._key("records"),
            self._key("idem", key) if key else "",
        ]
        args = [
            op_id,
            version,
            status,
            expires_at if expires_at is not None else "",
            record,
            body if body is not None else b"",
            key or "",
            "1" if body is not None else "0",
            "1" if terminal else "0",
            backstop_ms,
        ]
        return keys, args

    @staticmethod
    def _decode(raw: dict[bytes, bytes]) -> Operation:
        exp = raw.get(b"exp", b"")
        key = raw.get(b"key", b"")
        return decode_row(
            (
                raw[b"id"].decode(),
                int(raw[b"v"]),
                raw[b"status"].decode(),
                float(exp) if exp else None,
                raw[b"rec"].decode(),
                raw.get(b"body"),
                key.decode() if key else None,
            )
        )

    # --- Store ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._redis is not None:
            return
        # RESP2, because over RESP3 redis-py 8.1 hands out pooled connections
        # the server has closed, so after a restart every idle connection fails
        # one command (redis-py #4252); over RESP2 its pool replaces them
        # unseen. A ?protocol= in the URL still wins.
        self._redis = aioredis.from_url(self.url, decode_responses=False, protocol=2)
        try:
            await self._redis.ping()
        except _UNAVAILABLE as exc:
            await self._redis.aclose()
            self._redis = None
            msg = f"{self._where}: {exc}"
            raise StoreUnavailable(msg) from exc
        self._scripts = {
            "create": self._redis.register_script(_CREATE),
            "cas": self._redis.register_script(_CAS),
            "purge": self._redis.register_script(_PURGE),
        }

    async def close(self) -> None:
        listeners, self._listeners = self._listeners, []
        for task in listeners:
            task.cancel()
        # gather retrieves every outcome (no "exception never retrieved"),
        # and still lets a cancellation of close() itself through.
        await asyncio.gather(*listeners, return_exceptions=True)
        self._scripts = {}
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def create(self, operation: Operation) -> None:
        keys, args = self._script_args(operation)
        result = await self._call("create", keys, args)
        if result[0] == b"dupid":
            msg = f"duplicate operation id {operation.id}"
            raise ValueError(msg)
        if result[0] == b"dupkey":
            raise DuplicateOperation(result[1].decode())

    async def find_by_idempotency_key(self, key: str) -> Operation | None:
        try:
            op_id = await self._r.get(self._key("idem", key))
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        return None if op_id is None else await self.get(_text(op_id))

    async def get(self, operation_id: str) -> Operation | None:
        try:
            raw = cast("dict[bytes, bytes]", await self._r.hgetall(self._key("op", operation_id)))
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        return self._decode(raw) if raw else None

    async def compare_and_set(self, operation: Operation, *, expected_version: int) -> bool:
        keys, args = self._script_args(operation)
        args += [expected_version, self._key("finished")]
        return bool(await self._call("cas", keys, args))

    async def unfinished(self) -> list[Operation]:
        try:
            ids = await self._r.smembers(self._key("unfinished"))
            async with self._r.pipeline(transaction=False) as pipe:
                for op_id in ids:
                    pipe.hgetall(self._key("op", _text(op_id)))
                rows = cast("list[dict[bytes, bytes]]", await pipe.execute())
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        return [self._decode(raw) for raw in rows if raw]

    async def purge(self, *, now: float, tombstone: float) -> int:
        deleted = 0
        while True:
            batch = int(
                await self._call(
                    "purge",
                    [self._key("bodies"), self._key("records")],
                    [now, now - tombstone, self.prefix, 1000],
                )
            )
            deleted += batch
            if batch < 1000:
                return deleted

    async def subscribe(self, on_event: Callable[[str, str], None]) -> None:
        # A client of its own, without redis-py's retries: those would
        # reconnect and resubscribe silently, and the subscriber would never
        # learn that the events sent in between were lost.
        client = aioredis.from_url(self.url, decode_responses=False, retry=Retry(NoBackoff(), 0))
        try:
            pubsub = await self._listen(client, on_event)
        except _DROPS as exc:
            await client.aclose()
            msg = f"{self._where}: {exc}"
            raise StoreUnavailable(msg) from exc
        task = asyncio.get_running_loop().create_task(
            self._keep(client, pubsub, on_event), name=f"repoll-redis-listener {self.prefix}"
        )
        self._listeners.append(task)

    async def _listen(self, client: aioredis.Redis, on_event: Callable[[str, str], None]) -> PubSub:
        """A connection subscribed to both channels, as the server confirmed."""
        channels = [self._key("finished"), self._key("cancel")]
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(*channels)
            # Only once the server confirms are events sure to arrive; a
            # resync before that could re-read ahead of the subscription and
            # miss an event sent in between.
            pending = set(channels)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2 * self._health_interval
            while pending:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    msg = "no confirmation of SUBSCRIBE"
                    raise TimeoutError(msg)
                message = await pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    pending.discard(_text(message["channel"]))
                else:
                    self._dispatch(on_event, message)
        except BaseException:
            await _close_quietly(pubsub)
            raise
        return pubsub

    def _dispatch(self, on_event: Callable[[str, str], None], message: Any) -> None:
        if message is not None and message["type"] == "message":
            kind = "cancel" if _text(message["channel"]) == self._key("cancel") else "finished"
            deliver(on_event, kind, _text(message["data"]))

    async def _pump(self, pubsub: PubSub, on_event: Callable[[str, str], None]) -> None:
        """Deliver events until the connection fails or stops answering."""
        interval = self._health_interval
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=interval)
            now = loop.time()
            if message is not None:  # an event, or the answer to a PING
                heard = now
                self._dispatch(on_event, message)
            elif now - heard >= 2 * interval:
                # A half-open connection (peer gone without a reset) fails no
                # read; only the missing answer gives it away.
                msg = f"no answer to PING for {now - heard:.1f} s"
                raise TimeoutError(msg)
            else:
                await pubsub.ping()

    async def _keep(
        self, client: aioredis.Redis, pubsub: PubSub, on_event: Callable[[str, str], None]
    ) -> None:
        """Keep the subscription until close(), whatever happens to the server."""
        keeper: Resubscriber[PubSub] = Resubscriber(
            where=self._where,
            listen=lambda: self._listen(client, on_event),
            pump=lambda connection: self._pump(connection, on_event),
            close=_close_quietly,
            drops=_DROPS,
            on_event=on_event,
        )
        try:
            await keeper.run(pubsub)
        finally:
            await client.aclose()

    async def announce_cancel(self, operation_id: str) -> None:
        try:
            await self._r.publish(self._key("cancel"), operation_id)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def heartbeat(self, owner: str, *, ttl: float) -> None:
        now = time.time()
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.zadd(self._key("owners"), {owner: now + ttl})
                pipe.zremrangebyscore(self._key("owners"), "-inf", now - 3600)
                await pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def live_owners(self) -> set[str]:
        try:
            owners = await self._r.zrangebyscore(self._key("owners"), time.time(), "+inf")
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        return {_text(owner) for owner in owners}

    async def secret(self) -> bytes:
        if self._secret is None:
            key = self._key("secret")
            try:
                # One transaction: the GET sees either our value or the one
                # another instance set first.
                async with self._r.pipeline(transaction=True) as pipe:
                    pipe.set(key, secrets.token_bytes(32), nx=True)
                    pipe.get(key)
                    _, value = await pipe.execute()
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(str(exc)) from exc
            if not isinstance(value, bytes) or len(value) != 32:
                msg = f"Redis key {key} does not hold a 32-byte secret; delete it to make one"
                raise StoreError(msg)
            self._secret = value
        return self._secret
