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
from typing import Any, NoReturn

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


# ---------------------------------------------------------------- shared: arguments, answers, errors


def _token(term: Term | int) -> str:
    token = term.fencing_token if isinstance(term, Term) else int(term)
    if token < 0:
        raise ValueError(f"token: must be >= 0, not {token}")
    return str(token)


def _stale_or_raise(error: redis.exceptions.ResponseError) -> NoReturn:
    if str(error).startswith("LF001"):
        raise StaleToken(str(error)) from error
    raise error


Write = tuple[tuple[Any, ...], tuple[str, ...]]
"""A write for the script: the command with its arguments, and the keys it touches."""


def _set_write(key: str, value: Any, px_ms: int | None) -> Write:
    return ("SET", key, value, *(("PX", px_ms) if px_ms is not None else ())), (key,)


def _hset_write(key: str, mapping: Mapping[str, Any]) -> Write:
    return ("HSET", key, *(item for pair in mapping.items() for item in pair)), (key,)


def _written(reply: Any) -> bool:
    """redis-py's answer to SET: True once written."""
    return reply in ("OK", b"OK", True)


def _held_token(held: Any) -> int | None:
    return None if held is None else int(held)


class _Fence:
    """What both clients share: the scope, its key, the script's SHA once loaded, and the
    arguments of one EVALSHA after the SHA (the fence key, then the written keys; the token, then
    the write)."""

    def __init__(self, client: Any, scope: str) -> None:
        self.client = client
        self.scope = scope
        self.key = fence_key(scope)
        self._sha: str | None = None

    def _script_args(self, term: Term | int, command: str, args: tuple[Any, ...],
                     keys: tuple[str, ...]) -> tuple[Any, ...]:
        argv = (_token(term), command, *args) if command else (_token(term),)
        return (1 + len(keys), self.key, *keys, *argv)


class RedisFence(_Fence):
    """The fence of one scope (the lease "namespace/name" that issues the tokens) on a redis-py
    client. Each write is one EVALSHA: check, record, write."""

    client: redis.Redis

    def __init__(self, client: redis.Redis, scope: str) -> None:
        super().__init__(client, scope)

    def _load(self) -> str:
        self._sha = self.client.script_load(FENCE_LUA)
        return self._sha

    def execute(self, term: Term | int, command: str, *args: Any, keys: tuple[str, ...] = ()) -> Any:
        """Runs `command *args` if `term`'s token is not stale; `keys` names the keys it touches."""
        script_args = self._script_args(term, command, args, keys)
        sha = self._sha or self._load()
        try:
            try:
                return self.client.evalsha(sha, *script_args)
            except redis.exceptions.NoScriptError:
                return self.client.evalsha(self._load(), *script_args)
        except redis.exceptions.ResponseError as error:
            _stale_or_raise(error)

    def check(self, term: Term | int) -> None:
        """Only the fence: records the token, StaleToken if stale (no write)."""
        self.execute(term, "")

    def set(self, term: Term | int, key: str, value: Any, px_ms: int | None = None) -> bool:
        """SET key value [PX px_ms] under the fence: True once written (redis-py's `set` answer)."""
        command, keys = _set_write(key, value, px_ms)
        return _written(self.execute(term, *command, keys=keys))

    def delete(self, term: Term | int, *keys: str) -> Any:
        return self.execute(term, "DEL", *keys, keys=keys)

    def hset(self, term: Term | int, key: str, mapping: Mapping[str, Any]) -> Any:
        command, keys = _hset_write(key, mapping)
        return self.execute(term, *command, keys=keys)

    def incrby(self, term: Term | int, key: str, amount: int = 1) -> Any:
        return self.execute(term, "INCRBY", key, amount, keys=(key,))

    def rpush(self, term: Term | int, key: str, *values: Any) -> Any:
        return self.execute(term, "RPUSH", key, *values, keys=(key,))

    def token(self) -> int | None:
        return _held_token(self.client.get(self.key))

    def reset(self) -> bool:
        """The only way down: forget the scope's token (after an etcd restored from a backup)."""
        return bool(self.client.delete(self.key))


class AsyncRedisFence(_Fence):
    """`RedisFence` for redis.asyncio clients: the same calls, awaited."""

    client: redis.asyncio.Redis

    def __init__(self, client: redis.asyncio.Redis, scope: str) -> None:
        super().__init__(client, scope)

    async def _load(self) -> str:
        self._sha = await self.client.script_load(FENCE_LUA)
        return self._sha

    async def execute(self, term: Term | int, command: str, *args: Any, keys: tuple[str, ...] = ()) -> Any:
        script_args = self._script_args(term, command, args, keys)
        sha = self._sha or await self._load()
        try:
            try:
                return await self.client.evalsha(sha, *script_args)
            except redis.exceptions.NoScriptError:
                return await self.client.evalsha(await self._load(), *script_args)
        except redis.exceptions.ResponseError as error:
            _stale_or_raise(error)

    async def check(self, term: Term | int) -> None:
        await self.execute(term, "")

    async def set(self, term: Term | int, key: str, value: Any, px_ms: int | None = None) -> bool:
        command, keys = _set_write(key, value, px_ms)
        return _written(await self.execute(term, *command, keys=keys))

    async def delete(self, term: Term | int, *keys: str) -> Any:
        return await self.execute(term, "DEL", *keys, keys=keys)

    async def hset(self, term: Term | int, key: str, mapping: Mapping[str, Any]) -> Any:
        command, keys = _hset_write(key, mapping)
        return await self.execute(term, *command, keys=keys)

    async def incrby(self, term: Term | int, key: str, amount: int = 1) -> Any:
        return await self.execute(term, "INCRBY", key, amount, keys=(key,))

    async def rpush(self, term: Term | int, key: str, *values: Any) -> Any:
        return await self.execute(term, "RPUSH", key, *values, keys=(key,))

    async def token(self) -> int | None:
        return _held_token(await self.client.get(self.key))

    async def reset(self) -> bool:
        return bool(await self.client.delete(self.key))
