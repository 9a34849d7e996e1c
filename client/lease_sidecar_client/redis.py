"""The fence in Redis (extra `redis`): a Lua script refuses a stale token atomically with the write.

    from lease_sidecar_client.redis import RedisFence
    fence = RedisFence(redis.Redis(), scope=term.lease)
    fence.set(term, "report:latest", payload)        # StaleToken if a newer term wrote first

The script runs as one Redis command: it compares the token with the highest seen in the scope
(key `lease-fence:{<scope>}`), records a higher one, refuses a lower one (error "LF001 stale fencing
token ..."), and only then runs the write; nothing runs between the check and the write. The
guarantee per scope: a write with token T is applied only if no write with a token higher than T was
applied before it. Tokens are compared as decimal strings, so any int64 compares exactly (Lua's
numbers are doubles). It is loaded once (SCRIPT LOAD) and run by SHA (EVALSHA), reloaded if the
server lost it (NOSCRIPT after a restart or SCRIPT FLUSH). In a Redis Cluster, keep the written keys
in the fence key's hash slot (`{<scope>}` in their names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio

from ._term import StaleToken, Term

__all__ = ["FENCE_LUA", "AsyncRedisFence", "RedisFence", "StaleToken", "fence_key"]

FENCE_LUA = """
-- KEYS[1]: the scope's fence key; KEYS[2..]: the keys the write touches (declared for Redis).
-- ARGV[1]: the token (decimal, no leading zeros); ARGV[2..]: the write's command and arguments.
local token = ARGV[1]
if not string.match(token, '^[1-9][0-9]*$') and token ~= '0' then
  return redis.error_reply('ERR lease fence: token must be a whole number >= 0')
end
local held = redis.call('GET', KEYS[1])
local function below(a, b)  -- a < b for decimal strings without leading zeros
  if #a ~= #b then return #a < #b end
  return a < b
end
if held then
  if below(token, held) then
    return redis.error_reply('LF001 stale fencing token ' .. token .. ' for ' .. KEYS[1]
      .. ': ' .. held .. ' already seen')
  end
  if below(held, token) then redis.call('SET', KEYS[1], token) end
else
  redis.call('SET', KEYS[1], token)
end
if #ARGV < 2 then return held or false end
return redis.call(unpack(ARGV, 2))
"""


def fence_key(scope: str) -> str:
    return f"lease-fence:{{{scope}}}"


def _token(term: Term | int) -> str:
    token = term.fencing_token if isinstance(term, Term) else int(term)
    if token < 0:
        raise ValueError(f"token: must be >= 0, not {token}")
    return str(token)


def _stale_or_raise(error: redis.exceptions.ResponseError) -> None:
    if str(error).startswith("LF001"):
        raise StaleToken(str(error)) from error
    raise error


def _write_args(command: str, *args: Any) -> list[Any]:
    return [command, *args]


class RedisFence:
    """The fence of one scope (the lease "namespace/name" that issues the tokens) on a redis-py
    client. Each write is one EVALSHA: check, record, write."""

    def __init__(self, client: redis.Redis, scope: str) -> None:
        self.client = client
        self.scope = scope
        self.key = fence_key(scope)
        self._sha: str | None = None

    def _load(self) -> str:
        self._sha = self.client.script_load(FENCE_LUA)
        return self._sha

    def execute(self, term: Term | int, command: str, *args: Any, keys: tuple[str, ...] = ()) -> Any:
        """Runs `command *args` if `term`'s token is not stale; `keys` names the keys it touches."""
        argv = [_token(term), *_write_args(command, *args)] if command else [_token(term)]
        sha = self._sha or self._load()
        try:
            try:
                return self.client.evalsha(sha, 1 + len(keys), self.key, *keys, *argv)
            except redis.exceptions.NoScriptError:
                return self.client.evalsha(self._load(), 1 + len(keys), self.key, *keys, *argv)
        except redis.exceptions.ResponseError as error:
            _stale_or_raise(error)

    def check(self, term: Term | int) -> None:
        """Only the fence: records the token, StaleToken if stale (no write)."""
        self.execute(term, "")

    def set(self, term: Term | int, key: str, value: Any, px_ms: int | None = None) -> bool:
        """SET key value [PX px_ms] under the fence: True once written (redis-py's `set` answer)."""
        reply = self.execute(term, "SET", key, value, *(("PX", px_ms) if px_ms is not None else ()), keys=(key,))
        return reply in ("OK", b"OK", True)

    def delete(self, term: Term | int, *keys: str) -> Any:
        return self.execute(term, "DEL", *keys, keys=keys)

    def hset(self, term: Term | int, key: str, mapping: Mapping[str, Any]) -> Any:
        flat = [item for pair in mapping.items() for item in pair]
        return self.execute(term, "HSET", key, *flat, keys=(key,))

    def incrby(self, term: Term | int, key: str, amount: int = 1) -> Any:
        return self.execute(term, "INCRBY", key, amount, keys=(key,))

    def rpush(self, term: Term | int, key: str, *values: Any) -> Any:
        return self.execute(term, "RPUSH", key, *values, keys=(key,))

    def token(self) -> int | None:
        held = self.client.get(self.key)
        return None if held is None else int(held)

    def reset(self) -> bool:
        """The only way down: forget the scope's token (after an etcd restored from a backup)."""
        return bool(self.client.delete(self.key))


class AsyncRedisFence:
    """`RedisFence` for redis.asyncio clients."""

    def __init__(self, client: redis.asyncio.Redis, scope: str) -> None:
        self.client = client
        self.scope = scope
        self.key = fence_key(scope)
        self._sha: str | None = None

    async def _load(self) -> str:
        self._sha = await self.client.script_load(FENCE_LUA)
        return self._sha

    async def execute(self, term: Term | int, command: str, *args: Any, keys: tuple[str, ...] = ()) -> Any:
        argv = [_token(term), *_write_args(command, *args)] if command else [_token(term)]
        sha = self._sha or await self._load()
        try:
            try:
                return await self.client.evalsha(sha, 1 + len(keys), self.key, *keys, *argv)
            except redis.exceptions.NoScriptError:
                return await self.client.evalsha(await self._load(), 1 + len(keys), self.key, *keys, *argv)
        except redis.exceptions.ResponseError as error:
            _stale_or_raise(error)

    async def check(self, term: Term | int) -> None:
        await self.execute(term, "")

    async def set(self, term: Term | int, key: str, value: Any, px_ms: int | None = None) -> bool:
        reply = await self.execute(term, "SET", key, value, *(("PX", px_ms) if px_ms is not None else ()),
                                   keys=(key,))
        return reply in ("OK", b"OK", True)

    async def delete(self, term: Term | int, *keys: str) -> Any:
        return await self.execute(term, "DEL", *keys, keys=keys)

    async def reset(self) -> bool:
        return bool(await self.client.delete(self.key))
