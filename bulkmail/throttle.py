"""Per-provider throttling shared by every poller on every machine, through Redis.

Each limited provider (``providers.Rules.limited``) has a token bucket refilled at its current
rate, a set of connection slots, and a rate state. Deferrals (421, or a 4xx with an RFC 3463
4.7.x status: the provider asks us to slow down) counted within a window halve its rate for a
cool-down; then it recovers a tenth of its limit per step (additive increase) until it is back
at the limit:

    normal --(deferrals >= threshold in window)--> throttled --(cool-down over)--> cooling down
      ^                                                ^                               |
      +------------(rate back at the limit)------------+----------(deferrals)---------+

The state machine is the pure ``advance``/``view`` pair below; Redis keeps its state, so all
pollers see and change the same one. Time-driven moves (throttled -> cooling down -> normal)
are computed on read: nothing needs to run for a provider to recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from bulkmail import defaults, errors, providers, settings, smtp

_PREFIX = "bulkmail:provider:"
_KEEP_SECONDS = 86_400  # state of a provider no poller touched for a day is forgotten
_RECOVERY_STEPS = 10  # the rate grows by limit / this per step


class Unavailable(errors.BulkmailError):
    """Redis cannot be reached, so the per-provider limits cannot be kept."""


class Mode(enum.Enum):
    NORMAL = "normal"
    THROTTLED = "throttled"  # at the halved rate, for the cool-down
    COOLING = "cooling down"  # growing back to the limit, step by step


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    deferrals: int = defaults.THROTTLE_DEFERRALS
    window: float = defaults.THROTTLE_WINDOW_SECONDS
    cooldown: float = defaults.THROTTLE_COOLDOWN_SECONDS
    step: float = defaults.THROTTLE_STEP_SECONDS

    @classmethod
    def from_settings(cls, config: settings.Settings) -> Policy:
        return cls(
            deferrals=config.throttle_deferrals,
            window=config.throttle_window,
            cooldown=config.throttle_cooldown,
            step=config.throttle_step,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class State:
    """What Redis keeps per provider; times are Unix seconds."""

    rate: float = 0.0  # the rate the last halving set; 0: never throttled
    until: float = 0.0  # end of that halving's cool-down
    window_start: float = 0.0
    deferrals: int = 0  # counted since window_start

    def fields(self) -> dict[Any, Any]:  # what redis-py's hset takes
        return {name: repr(getattr(self, name)) for name in self.__slots__}

    @classmethod
    def parse(cls, raw: Mapping[Any, Any]) -> State:
        """From Redis's HGETALL (bytes keys); a missing or unreadable field is its default."""
        try:
            return cls(
                rate=float(raw.get(b"rate", 0)),
                until=float(raw.get(b"until", 0)),
                window_start=float(raw.get(b"window_start", 0)),
                deferrals=int(raw.get(b"deferrals", 0)),
            )
        except ValueError:
            return cls()  # not ours: start over rather than stop sending


@dataclass(frozen=True, kw_only=True, slots=True)
class View:
    """A provider as it is at one moment."""

    mode: Mode
    rate: float  # messages per second now; 0 for an unlimited provider


def floor_rate(limit: float) -> float:
    """The lowest a provider's rate is halved to: one message a second (or its limit)."""
    return min(1.0, limit)


def view(state: State, limit: float, policy: Policy, now: float) -> View:
    """The provider's mode and rate at ``now``, the cool-down and recovery applied."""
    if not limit or not state.rate:
        return View(mode=Mode.NORMAL, rate=limit)
    if now < state.until:
        return View(mode=Mode.THROTTLED, rate=state.rate)
    steps = math.floor((now - state.until) / policy.step)
    rate = state.rate + steps * limit / _RECOVERY_STEPS
    if rate >= limit:
        return View(mode=Mode.NORMAL, rate=limit)
    return View(mode=Mode.COOLING, rate=rate)


def advance(state: State, limit: float, policy: Policy, now: float, deferrals: int) -> State:
    """The state after ``deferrals`` more deferrals at ``now``."""
    if not limit:
        return state  # nothing to halve: an unlimited provider is not throttled
    window_start, counted = state.window_start, state.deferrals
    if now - window_start >= policy.window:
        window_start, counted = now, 0
    counted += deferrals
    if counted < policy.deferrals:
        return State(
            rate=state.rate, until=state.until, window_start=window_start, deferrals=counted
        )
    halved = max(floor_rate(limit), view(state, limit, policy, now).rate / 2)
    return State(rate=halved, until=now + policy.cooldown, window_start=now, deferrals=0)


def is_deferral(outcome: smtp.Outcome[int]) -> bool:
    """Whether the server asked us to slow down: 421 (often "too many connections" or "rate
    limited"), or any 4xx with an RFC 3463 4.7.x status (Gmail's 4.7.28, Yahoo's 4.7.0 TSS04).
    Other 4xx (a full mailbox, a greylisted recipient) say nothing about our pace."""
    replies = [outcome.reply, *(reply for _, reply in outcome.refused)]
    return any(
        reply is not None
        and (reply.code == 421 or (reply.is_transient and (reply.enhanced or "")[:4] == "4.7."))
        for reply in replies
    )


# Token buckets. KEYS: one bucket per provider. ARGV: now, then per key its rate/s and the
# tokens wanted. Returns the tokens granted per key. A bucket holds at most one second's worth.
_TAKE = """
local now = tonumber(ARGV[1])
local granted = {}
for i, key in ipairs(KEYS) do
  local rate, wanted = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local capacity = math.max(1, rate)
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
  local take = math.min(wanted, math.floor(tokens))
  redis.call('HSET', key, 'tokens', tokens - take, 'at', now)
  redis.call('EXPIRE', key, 3600)
  granted[i] = take
end
return granted
"""

# Tokens granted and not used (the claim found fewer emails) go back. ARGV: per key the count.
_REFUND = """
for i, key in ipairs(KEYS) do
  redis.call('HINCRBYFLOAT', key, 'tokens', tonumber(ARGV[i]))
end
return 0
"""

# Connection slots: a sorted set of holders scored by when their hold expires (so a poller
# that died frees its slots). KEYS[1]: the set. ARGV: now, expiry, limit, wanted, holder ids.
_SLOTS = """
local now, expiry, limit, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local take = math.min(wanted, limit - redis.call('ZCARD', KEYS[1]))
for i = 1, take do redis.call('ZADD', KEYS[1], expiry, ARGV[4 + i]) end
redis.call('EXPIRE', KEYS[1], 3600)
return math.max(0, take)
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class Budget:
    """What a claim may take per limited provider right now."""

    caps: dict[str, int]  # messages per provider; the other providers are unlimited
    wait: float  # when a provider had no token: seconds until it has one again, else 0


class Throttle:
    """The pollers' side: budgets for claims, connection slots, deferral reports."""

    def __init__(
        self, client: aioredis.Redis, rules: providers.Rules, policy: Policy = Policy()
    ) -> None:
        self._client = client
        self._rules = rules
        self._policy = policy
        self._limited = rules.limited
        self._take = client.register_script(_TAKE)
        self._refund = client.register_script(_REFUND)
        self._slots = client.register_script(_SLOTS)

    def limits(self, provider: str) -> providers.Limits:
        return self._rules.limits_of(provider)

    @property
    def limited(self) -> list[str]:
        """The providers with a rate or a connection limit."""
        return list(self._limited)

    async def budget(self, wanted: int) -> Budget:
        """Take up to ``wanted`` tokens from each provider with a rate, at its current rate."""
        rated = [name for name, lim in self._limited.items() if lim.rate]
        if not rated:
            return Budget(caps={}, wait=0.0)
        now = time.time()
        try:
            states = await _states(self._client, rated)
            rates = [
                view(state, self._limited[name].rate, self._policy, now).rate
                for name, state in zip(rated, states, strict=True)
            ]
            args: list[float] = [now]
            for rate in rates:
                args += [rate, wanted]
            granted = await self._take(keys=[_key(name, "bucket") for name in rated], args=args)
        except redis.RedisError as error:
            raise _unavailable(error) from error
        caps = {name: int(count) for name, count in zip(rated, granted, strict=True)}
        waits = [1 / rate for name, rate in zip(rated, rates, strict=True) if not caps[name]]
        return Budget(caps=caps, wait=min(waits, default=0.0))

    async def refund(self, unused: Mapping[str, int]) -> None:
        given = {name: count for name, count in unused.items() if count > 0}
        if not given:
            return
        try:
            await self._refund(
                keys=[_key(name, "bucket") for name in given], args=list(given.values())
            )
        except redis.RedisError as error:
            raise _unavailable(error) from error

    async def connections(self, provider: str, wanted: int, hold: float) -> list[str]:
        """Up to ``wanted`` of the provider's connection slots for at most ``hold`` seconds:
        their ids, to give back with ``release``. All ``wanted`` for a provider without a
        connection limit (an empty list then: nothing to give back), none when all are taken."""
        limit = self.limits(provider).connections
        if not limit:
            return []
        now = time.time()
        ids = [uuid.uuid4().hex for _ in range(min(wanted, limit))]
        try:
            taken = int(
                await self._slots(
                    keys=[_key(provider, "connections")],
                    args=[now, now + hold, limit, len(ids), *ids],
                )
            )
        except redis.RedisError as error:
            raise _unavailable(error) from error
        return ids[:taken]

    async def release(self, provider: str, slots: Sequence[str]) -> None:
        if slots:
            # Without Redis they expire with their hold.
            with contextlib.suppress(redis.RedisError):
                await self._client.zrem(_key(provider, "connections"), *slots)

    async def report(self, provider: str, deferrals: int) -> View:
        """Count ``deferrals`` of the provider; halves its rate when they reach the threshold.

        An optimistic transaction (WATCH), so two pollers' reports never overwrite each other.
        """
        limit = self.limits(provider).rate
        key = _key(provider, "state")
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        now = time.time()
                        state = State.parse(await pipe.hgetall(key))
                        new = advance(state, limit, self._policy, now, deferrals)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.hset(key, mapping=new.fields())
                        pipe.expire(key, _KEEP_SECONDS)
                        await pipe.execute()
                        return view(new, limit, self._policy, now)
                    except redis.WatchError:
                        continue
        except redis.RedisError as error:
            raise _unavailable(error) from error


@dataclass(frozen=True, kw_only=True, slots=True)
class Shown:
    """A provider as the dashboard and /metrics show it."""

    provider: str
    mode: Mode
    rate: float  # now; 0 is unlimited
    limit: float
    connections: int  # the limit; 0 is unlimited


@dataclass(frozen=True, kw_only=True)
class Watch:
    """The dashboard's and /metrics' view of the providers: the rules, and with throttling
    on, a Redis client to read their state."""

    rules: providers.Rules
    policy: Policy
    client: redis.Redis | None  # None: throttling is off

    @classmethod
    def from_settings(cls, config: settings.Settings) -> Watch:
        client = None
        if config.provider_throttling:
            # A page or a scrape must not hang on an unreachable Redis.
            client = redis.Redis.from_url(
                config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
        return cls(
            rules=providers.from_settings(config),
            policy=Policy.from_settings(config),
            client=client,
        )

    def snapshot(self) -> list[Shown]:
        """Raises ``Unavailable`` without Redis; [] when throttling is off."""
        if self.client is None:
            return []
        return snapshot(self.client, self.rules, self.policy)


def snapshot(
    client: redis.Redis, rules: providers.Rules, policy: Policy, now: float | None = None
) -> list[Shown]:
    """Every provider the rules name, with its current rate and mode (read from Redis)."""
    now = time.time() if now is None else now
    names = rules.names
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(_key(name, "state"))
    try:
        raws = pipe.execute()
    except redis.RedisError as error:
        raise _unavailable(error) from error
    shown = []
    for name, raw in zip(names, raws, strict=True):
        limits = rules.limits_of(name)
        seen = view(State.parse(raw), limits.rate, policy, now)
        shown.append(
            Shown(
                provider=name,
                mode=seen.mode,
                rate=seen.rate,
                limit=limits.rate,
                connections=limits.connections,
            )
        )
    return shown


async def _states(client: aioredis.Redis, names: Sequence[str]) -> list[State]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(_key(name, "state"))
    return [State.parse(raw) for raw in await pipe.execute()]


def _key(provider: str, what: str) -> str:
    return f"{_PREFIX}{provider}:{what}"


def _unavailable(error: redis.RedisError) -> Unavailable:
    return Unavailable(
        f"the per-provider limits cannot be kept: Redis is unavailable ({error}); "
        "check BULKMAIL_REDIS_URL"
    )


async def wait_for_connections(
    throttle: Throttle, provider: str, wanted: int, hold: float, deadline: float
) -> list[str] | None:
    """The provider's connection slots, waiting while all are taken; None past ``deadline``
    (monotonic)."""
    delay = 0.01
    while True:
        slots = await throttle.connections(provider, wanted, hold)
        if slots or not throttle.limits(provider).connections:
            return slots
        if time.monotonic() + delay > deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
