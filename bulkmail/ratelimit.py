"""A messages-per-second cap for one SMTP server, shared by every poller on every machine.

A token bucket kept in Redis and refilled on read by a Lua script, so the check-and-take is
atomic across processes. Off unless ``BULKMAIL_SMTP_RATE_LIMIT`` is set. Without Redis the cap
cannot be kept, so nothing may be sent: ``acquire`` raises ``Unavailable``.
"""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio as aioredis

from bulkmail import errors

# KEYS[1]: the bucket. ARGV: rate/s, capacity, wanted, now (s). Returns the tokens granted.
_TAKE = """
local rate, capacity, wanted, now = tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], 3600)
return granted
"""


class Unavailable(errors.BulkmailError):
    """Redis cannot be reached, so the shared rate limit cannot be kept."""


class RateLimiter:
    """Grants permission to send, at most ``rate`` messages per second in all processes."""

    def __init__(self, client: aioredis.Redis, *, rate: float, key: str) -> None:
        self._client = client
        self._rate = rate
        self._capacity = max(1.0, rate)  # at most one second's worth in a burst
        self._key = key
        self._script = client.register_script(_TAKE)

    async def acquire(self, wanted: int) -> None:
        """Wait until ``wanted`` messages may be sent."""
        left = wanted
        while left > 0:
            # Redis's clock would be better, but TIME inside scripts breaks replication on
            # older servers; the pollers' clocks only need to agree to within a fraction of a
            # second for the cap to hold.
            try:
                granted = int(
                    await self._script(
                        keys=[self._key],
                        args=[self._rate, self._capacity, min(left, self._capacity), time.time()],
                    )
                )
            except redis.RedisError as error:
                raise Unavailable(
                    f"the shared rate limit cannot be kept: Redis is unavailable ({error}); "
                    "check BULKMAIL_REDIS_URL"
                ) from error
            left -= granted
            if left > 0:
                await asyncio.sleep(min(1.0, max(0.01, min(left, self._capacity) / self._rate)))
