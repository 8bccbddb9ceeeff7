"""``/metrics`` in the Prometheus text format, read from PostgreSQL at each scrape: right with
any number of pollers on any number of hosts, and unchanged by a restart of this process. The
providers' throttling state is read from Redis, where the pollers keep it.

Labels are few-valued (statuses, results, reply classes, poller ids, the incoming mailboxes
set up): no operation ids, no recipient addresses.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from bulkmail import dashboard, db, models, throttle
from bulkmail.inbound import monitor
from bulkmail.web import security

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Database(Collector):
    """Every metric, from one short read of the database per scrape."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        now = models.utcnow()
        with db.session_scope(self.engine) as session:
            emails = dashboard.emails_by_status(session)
            totals = dashboard.totals(session)
            oldest = dashboard.oldest_pending_age(session, now)
            backlog = dashboard.retry_backlog(session, now)
            workers = dashboard.workers(session, now)
            operations = dashboard.operations_by_status(session)
            incoming = monitor.incoming_counts(session)
            synced = monitor.mailboxes(session)
        by_status = GaugeMetricFamily("bulkmail_emails", "Emails by status now", labels=["status"])
        for label, count in emails.items():
            by_status.add_metric([label.lower().replace(" ", "_")], count)
        yield by_status
        for name in ("sent", "retried", "failed"):
            yield CounterMetricFamily(
                f"bulkmail_emails_{name}",
                f"Emails moved to {name} by the pollers (retried: back to Pending Send)",
                value=totals[name],
            )
        attempts = CounterMetricFamily(
            "bulkmail_delivery_attempts", "Delivery attempts by result", labels=["result"]
        )
        for result, count in totals["attempts"].items():
            attempts.add_metric([result], count)
        yield attempts
        replies = CounterMetricFamily(
            "bulkmail_smtp_replies", "Delivery attempts by SMTP reply class", labels=["class"]
        )
        for reply_class, count in totals["reply_classes"].items():
            replies.add_metric([reply_class], count)
        yield replies
        yield GaugeMetricFamily(
            "bulkmail_oldest_pending_age_seconds",
            "Age of the oldest Pending Send email (0: none)",
            value=oldest or 0.0,
        )
        waiting = GaugeMetricFamily(
            "bulkmail_retry_backlog_emails",
            f"Pending Send emails waiting to be retried (counted to {backlog['cap']})",
            labels=["due"],
        )
        waiting.add_metric(["now"], backlog["due_now"])
        waiting.add_metric(["later"], backlog["due_later"])
        yield waiting
        pollers = [w for w in workers if w["kind"] == "poller"]
        alive = GaugeMetricFamily("bulkmail_pollers", "Pollers by state", labels=["state"])
        for state in ("alive", "lost"):
            alive.add_metric([state], sum(1 for p in pollers if p["state"] == state))
        yield alive
        by_kind = GaugeMetricFamily(
            "bulkmail_workers",
            "Pollers, Celery workers and inbound workers by state",
            labels=["kind", "state"],
        )
        for kind in ("poller", "celery", "inbound"):
            for state in ("alive", "lost"):
                by_kind.add_metric(
                    [kind, state],
                    sum(1 for w in workers if w["kind"] == kind and w["state"] == state),
                )
        yield by_kind
        beats = GaugeMetricFamily(
            "bulkmail_poller_last_heartbeat_timestamp_seconds",
            "When each running (or lost) poller was last seen",
            labels=["poller"],
        )
        for poller in pollers:
            if poller["state"] != "stopped":
                seen = dt.datetime.fromisoformat(poller["last_seen_at"])
                beats.add_metric([poller["id"]], seen.timestamp())
        yield beats
        ops = GaugeMetricFamily(
            "bulkmail_bulk_operations", "Bulk operations by status", labels=["status"]
        )
        for status, count in operations.items():
            ops.add_metric([status], count)
        yield ops
        received = CounterMetricFamily(
            "bulkmail_incoming_emails",
            "Emails imported from incoming mailboxes, by kind",
            labels=["kind"],
        )
        for kind, count in incoming.items():
            received.add_metric([kind], count)
        yield received
        # One series per configured incoming mailbox: a handful, set up by hand.
        last_sync = GaugeMetricFamily(
            "bulkmail_incoming_last_success_timestamp_seconds",
            "When each incoming mailbox was last synced without error (0: never)",
            labels=["mailbox"],
        )
        for mailbox in synced:
            success = mailbox["last_success_at"]
            last_sync.add_metric(
                [str(mailbox["mailbox"])],
                dt.datetime.fromisoformat(str(success)).timestamp() if success else 0.0,
            )
        yield last_sync
        info = GaugeMetricFamily("bulkmail_build_info", "The running version", labels=["version"])
        info.add_metric([importlib.metadata.version("bulkmail")], 1)
        yield info


class Providers(Collector):
    """Each provider's rate and state now; nothing while throttling is off or Redis does not
    answer (``absent(bulkmail_provider_rate)`` alerts on that)."""

    def __init__(self, watch: throttle.Watch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        try:
            shown = self.watch.snapshot()
        except throttle.Unavailable:
            return
        if not shown:
            return
        rate = GaugeMetricFamily(
            "bulkmail_provider_rate",
            "Messages/second a provider may take now, all pollers together (0: unlimited)",
            labels=["provider"],
        )
        limit = GaugeMetricFamily(
            "bulkmail_provider_rate_limit",
            "A provider's configured messages/second (0: unlimited)",
            labels=["provider"],
        )
        state = GaugeMetricFamily(
            "bulkmail_provider_state",
            "1 for the state a provider is in: normal, throttled or cooling_down",
            labels=["provider", "state"],
        )
        for provider in shown:
            rate.add_metric([provider.provider], provider.rate)
            limit.add_metric([provider.provider], provider.limit)
            for mode in throttle.Mode:
                label = mode.value.replace(" ", "_")
                state.add_metric([provider.provider, label], float(mode is provider.mode))
        yield from (rate, limit, state)


def _scrape(engine: sa.Engine, watch: throttle.Watch) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Database(engine))
    registry.register(Providers(watch))
    return generate_latest(registry)


async def metrics(request: Request) -> Response:
    if not security.metrics_allowed(request, request.app.state.access):
        return PlainTextResponse(
            "authentication required: send Authorization: Bearer with the metrics token\n",
            status_code=401,
        )
    state = request.app.state
    body = await run_in_threadpool(_scrape, state.engine, state.providers)
    return Response(body, media_type=CONTENT_TYPE)


routes: list[BaseRoute] = [Route("/metrics", metrics)]
