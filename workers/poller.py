"""The outgoing poller process: BackgroundSendEmail in a loop you can read top to bottom.

    while not stopping: claim a batch -> build -> send -> complete; idle: wait for NOTIFY or poll

SIGTERM/SIGINT stop the claiming; what SMTP already has is finished and recorded, claimed
emails not handed over yet are released at once; the process exits 0 within the grace period.
Anything still claimed after the grace period stays Sending until its lease expires and the
reaper returns it: releasing it could send a message twice.

A database outage or an SMTP server that takes no connections is waited out with a backoff from
1 s to 30 s, never a crash or a busy loop. Outcomes that arrived during a database outage are
written once it is back.

Duplicates: a message is sent twice only when the server accepted it and the poller died (or
was stopped past its lease) before the outcome was committed. The recorder never lets more than
``completion_batch`` messages be out without a committed outcome, so a poller killed with
``kill -9`` causes at most that many.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent import futures
from dataclasses import dataclass, field, replace

import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy import event, exc, orm

from bulkmail import (
    db,
    defaults,
    delivery,
    heartbeats,
    mime,
    models,
    outbox,
    providers,
    ratelimit,
    settings,
    smtp,
    tagged,
    throttle,
    unsubscribe,
    wakeup,
)
from workers import collector

logger = logging.getLogger("bulkmail.poller")


@dataclass(frozen=True, kw_only=True)
class Config:
    database_url: str
    smtp_url: str
    policy: outbox.RetryPolicy
    connections: int | None = None  # SMTP connections; None keeps the URL's (default 8)
    batch: int = defaults.BATCH
    completion_batch: int = defaults.COMPLETION_BATCH  # sent without a committed outcome
    lease: dt.timedelta = dt.timedelta(seconds=defaults.LEASE_SECONDS)
    rounds: int = 2  # rounds in flight: one's database work overlaps another's SMTP traffic
    exit_when_idle: bool = False
    poll_interval: float = defaults.POLL_INTERVAL_SECONDS
    reap_interval: float = defaults.REAP_INTERVAL_SECONDS
    heartbeat_interval: float = defaults.HEARTBEAT_SECONDS
    grace: float = defaults.GRACE_SECONDS
    rate_limit: float = 0.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    unsubscribe: unsubscribe.Links | None = None
    return_path: tagged.Tagged | None = None
    # Per-provider limits and backoff on deferrals (through Redis); None: off.
    rules: providers.Rules | None = None
    throttle_policy: throttle.Policy = field(default_factory=throttle.Policy)

    def __post_init__(self) -> None:
        # A bad SMTP URL is one clear error before the poller starts, not a line after its logs.
        smtp.parse_url(self.smtp_url)

    @classmethod
    def from_settings(cls, config: settings.Settings, **overrides: object) -> Config:
        """The poller as the settings describe it; ``overrides`` (command-line options) win."""
        base = cls(
            database_url=db.database_url(config),
            smtp_url=config.smtp_url,
            policy=outbox.RetryPolicy.from_settings(config),
            batch=config.batch,
            completion_batch=config.completion_batch,
            lease=dt.timedelta(seconds=config.lease_seconds),
            poll_interval=config.poll_interval,
            reap_interval=config.reap_interval,
            grace=config.grace_seconds,
            rate_limit=config.smtp_rate_limit,
            redis_url=config.redis_url,
            unsubscribe=unsubscribe.Links.from_settings(config),
            return_path=tagged.return_paths(config),
            rules=providers.from_settings(config) if config.provider_throttling else None,
            throttle_policy=throttle.Policy.from_settings(config),
        )
        given = {name: value for name, value in overrides.items() if value is not None}
        return replace(base, **given)  # type: ignore[arg-type]


class Poller:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.identity = heartbeats.Identity(
            id=f"poller-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            kind="poller",
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=models.utcnow(),
        )
        # The connection budget: each round claims or checks for cancels, the recorder writes
        # outcomes, and the chores (beat, reaper) run, each in a thread of the executor ``run``
        # sets, holding one pooled connection at a time; LISTEN has one more, outside the pool.
        self.connections = config.rounds + 2
        self.engine = db.make_engine(
            config.database_url, pool_size=self.connections, max_overflow=0
        )
        _transaction_settings(self.engine, config.lease)
        self.total = delivery.Round()
        batch = config.batch
        if config.rate_limit:
            # A batch must go out well within its lease even at the shared rate.
            lease = config.lease.total_seconds()
            batch = min(batch, max(1, int(config.rate_limit * lease / 4)))
        self.options = delivery.Options(
            worker=self.identity.id,
            batch=batch,
            completion_batch=config.completion_batch,
            lease=config.lease,
            policy=config.policy,
            unsubscribe=config.unsubscribe,
            return_path=config.return_path,
        )
        self.stopping = asyncio.Event()
        self._cache = mime.PartCache()
        self._in_flight: dict[uuid.UUID, float] = {}  # claim token -> when it was claimed
        self._renewed: dict[uuid.UUID, float] = {}  # claim token -> last renewal (beat only)
        self._recorder = delivery.Recorder(self.engine, self.options)
        # Cancelling a chore's task does not stop its thread: a periodic beat still running
        # after the final one would write older totals over it and clear stopped_at.
        self._beats = threading.Lock()
        self._beaten_last = False

    def stop(self) -> None:
        """SIGTERM/SIGINT: no new claims; finish what SMTP has, release the rest."""
        if not self.stopping.is_set():
            logger.info("stopping: no new claims; finishing what SMTP has, releasing the rest")
            self.stopping.set()
        self._recorder.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Every database call runs in a thread of the default executor: no more threads than
        # pooled connections, so none ever waits for (or times out on) the pool.
        loop.set_default_executor(
            futures.ThreadPoolExecutor(self.connections, thread_name_prefix="database")
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        smtp_settings = smtp.parse_url(self.config.smtp_url)
        if self.config.connections is not None:
            smtp_settings = replace(smtp_settings, connections=self.config.connections)
        try:
            async with (
                self._limiter() as limiter,
                self._shaper() as shaper,
                smtp.Sender(smtp_settings) as sender,
                wakeup.listener(self.config.database_url) as woken,
                asyncio.TaskGroup() as group,
            ):
                chores = [
                    # Beat (and renew leases) several times per lease, however short it is.
                    group.create_task(self._every(self._beat_interval(), self._beat)),
                    group.create_task(self._every(self.config.reap_interval, self._reap)),
                ]
                rounds = [
                    group.create_task(self._send_loop(sender, woken, limiter, shaper))
                    for _ in range(self.config.rounds)
                ]
                await asyncio.wait(rounds)
                for chore in chores:
                    chore.cancel()
        finally:
            await self._final_beat()
            self.engine.dispose()

    async def _send_loop(
        self,
        sender: smtp.Sender,
        woken: asyncio.Event,
        limiter: ratelimit.RateLimiter | None,
        shaper: throttle.Throttle | None,
    ) -> None:
        backoff = _Backoff()
        while not self.stopping.is_set():
            # Before the claim, not after: a NOTIFY that arrives while it runs must still wake
            # this loop once the claim comes back empty.
            woken.clear()
            try:
                done = await delivery.run_round(
                    self.engine,
                    sender,
                    self.options,
                    self._cache,
                    limiter,
                    self._in_flight,
                    self._recorder,
                    shaper,
                )
            except delivery.DATABASE_DOWN as error:
                # The database went away: wait and try again rather than crash-looping.
                why = f"database unavailable ({delivery.summary(error)})"
                await self._sleep(backoff.next(why))
                continue
            self.total += done
            if done.claimed:
                logger.info(
                    "claimed %d: sent %d, retry %d, failed %d, released %d, canceled %d, stale %d",
                    done.claimed,
                    done.sent,
                    done.retried,
                    done.failed,
                    done.released,
                    done.canceled,
                    done.stale,
                )
            if done.claimed and not done.attempted:
                # Nothing could be sent (no SMTP session, no rate limiter): claiming again at
                # once would only spin.
                await self._sleep(backoff.next("no email could be sent"))
                continue
            backoff.reset()
            if done.claimed:
                continue
            if done.throttled_wait:
                # A provider with due emails may have a token again soon: not a poll interval.
                await self._sleep(min(max(done.throttled_wait, 0.02), self.config.poll_interval))
                continue
            if self.config.exit_when_idle:
                # Nothing is due: no more claims, but the other rounds send all they claimed.
                self.stopping.set()
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_interval):
                    await _first(woken.wait(), self.stopping.wait())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    async def _every(self, seconds: float, chore: Callable[[], None]) -> None:
        name = getattr(chore, "__name__", "chore").strip("_")
        while True:
            try:
                await asyncio.to_thread(chore)
            except delivery.DATABASE_DOWN as error:
                why = delivery.summary(error)
                logger.warning("%s skipped: database unavailable (%s)", name, why)
            except exc.SQLAlchemyError as error:
                logger.warning("%s failed: %s", name, delivery.summary(error))
            await asyncio.sleep(seconds)

    def _beat(self) -> None:
        with self._beats:
            if not self._beaten_last:
                self._beat_and_renew()

    def _beat_and_renew(self) -> None:
        now = time.monotonic()
        claimed = dict(self._in_flight)  # one atomic copy: the event loop changes the original
        renewed = {token: self._renewed.get(token, at) for token, at in claimed.items()}
        # Renewing is a row update per email: only leases a sixth used up, which beats every
        # third of a lease still keep well ahead of the reaper.
        due = [token for token, at in renewed.items() if now - at >= self._renew_after()]
        with db.transaction(self.engine) as session:
            self._beat_totals(session)
            outbox.renew(session, due, lease=self.config.lease)
        self._renewed = {**renewed, **dict.fromkeys(due, now)}

    def _beat_totals(self, session: orm.Session) -> None:
        total = self.total
        heartbeats.beat(
            session, self.identity, sent=total.sent, retried=total.retried, failed=total.failed
        )

    def _renew_after(self) -> float:
        return self.config.lease.total_seconds() / 6

    def _beat_interval(self) -> float:
        return min(self.config.heartbeat_interval, self.config.lease.total_seconds() / 3)

    def _reap(self) -> None:
        with db.transaction(self.engine) as session:
            returned = outbox.reap(session, policy=self.config.policy)
        if returned:
            logger.info("reaper returned %d emails whose lease expired", returned)

    async def _final_beat(self) -> None:
        def final() -> None:
            with self._beats:
                self._beaten_last = True
                with db.transaction(self.engine) as session:
                    self._beat_totals(session)
                    heartbeats.stopped(session, self.identity.id)

        with contextlib.suppress(exc.SQLAlchemyError):
            await asyncio.to_thread(final)

    @contextlib.asynccontextmanager
    async def _limiter(self) -> AsyncIterator[ratelimit.RateLimiter | None]:
        if not self.config.rate_limit:
            yield None
            return
        client = aioredis.Redis.from_url(self.config.redis_url)
        smtp_settings = smtp.parse_url(self.config.smtp_url)
        key = f"bulkmail:ratelimit:{smtp_settings.host}:{smtp_settings.port}"
        try:
            yield ratelimit.RateLimiter(client, rate=self.config.rate_limit, key=key)
        finally:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def _shaper(self) -> AsyncIterator[throttle.Throttle | None]:
        if self.config.rules is None:
            yield None
            return
        client = aioredis.Redis.from_url(self.config.redis_url)
        try:
            yield throttle.Throttle(client, self.config.rules, self.config.throttle_policy)
        finally:
            await client.aclose()


class _Backoff:
    """Waits that double from 1 s to 30 s while an outage lasts."""

    def __init__(self) -> None:
        self._delay = 1.0

    def next(self, why: str) -> float:
        delay = self._delay
        logger.warning("%s; trying again in %.0f s", why, delay)
        self._delay = min(delay * 2, 30.0)
        return delay

    def reset(self) -> None:
        self._delay = 1.0


async def _first(*waits: Coroutine[object, object, object]) -> None:
    """Return when the first of ``waits`` does, cancelling the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _transaction_settings(engine: sa.Engine, lease: dt.timedelta) -> None:
    """Each transaction of a poller: ended by PostgreSQL if it sits open for a whole lease; no JIT.

    The poller's transactions last milliseconds; one left open is a stalled process (stopped,
    swapped out), and its row locks would keep the emails it was claiming from every other
    poller, and its claims from the reaper, until it woke. Ended, it rolls back: what it had
    claimed and not committed stays Pending Send, and the poller reconnects when it wakes.

    Set in each transaction, not for the session: PgBouncer refuses the ``options`` startup
    parameter, and in transaction mode a session's settings stay with whichever server
    connection ran them.

    JIT is off in the same statement: the poller's statements take milliseconds, and the claim
    of capped providers (its lateral lookups, whose row counts the planner cannot know) is
    estimated costly enough for PostgreSQL to spend ~150 ms compiling it, twice what running
    it takes.
    """
    limit = int(lease.total_seconds() * 1000)
    statement = (
        f"SELECT set_config('idle_in_transaction_session_timeout', '{limit}', true),"
        " set_config('jit', 'off', true)"
    )

    def limited(connection: sa.Connection) -> None:
        connection.exec_driver_sql(statement)

    event.listen(engine, "begin", limited)


def run(config: Config) -> None:
    """Run a poller until told to stop (or, with ``exit_when_idle``, until nothing is due)."""
    poller = Poller(config)
    collector.tune()
    try:
        asyncio.run(_main(poller, config.grace))
    except ExceptionGroup as group:
        # One clear error for the command line, not the tree of tasks it brought down.
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        if isinstance(error, exc.DBAPIError):
            error = db.translate(error, poller.engine)
        raise error from group


async def _main(poller: Poller, grace: float) -> None:
    logger.info("poller %s started", poller.identity.id)
    work = asyncio.create_task(poller.run())
    stop = asyncio.create_task(poller.stopping.wait())
    await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not work.done():
        try:
            await asyncio.wait_for(asyncio.shield(work), grace)
        except TimeoutError:
            logger.warning("grace period over: claimed emails stay Sending until their lease ends")
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return
    work.result()
    logger.info("poller %s stopped", poller.identity.id)
