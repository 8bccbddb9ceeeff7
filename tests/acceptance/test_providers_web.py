"""``bulkmail web`` shows each provider's rate and state, as the pollers keep them in Redis:
the Providers page, its JSON and ``/metrics``; with throttling off, and with Redis down."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from bulkmail import providers, throttle
from tests import servers, webserver

SETTINGS = {
    "BULKMAIL_PROVIDER_DOMAINS": "corp.example=corp",
    "BULKMAIL_PROVIDER_LIMITS": "corp=7/3",
}


@pytest.fixture
def start_web(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., webserver.Web]]:
    with webserver.started(pg_url, tmp_path) as start:
        yield start


def _defer_google(url: str, deferrals: int) -> None:
    """What a poller does when Google defers ``deferrals`` messages."""

    async def run() -> None:
        client = aioredis.Redis.from_url(url)
        async for key in client.scan_iter("bulkmail:provider:*"):
            await client.delete(key)
        rules = providers.parse(SETTINGS["BULKMAIL_PROVIDER_DOMAINS"])
        await throttle.Throttle(client, rules).report("google", deferrals)
        await client.aclose()

    asyncio.run(run())


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_a_throttled_provider_shows_on_the_page_the_json_and_metrics(
    redis_server: servers.OwnRedis, start_web: Callable[..., webserver.Web]
) -> None:
    _defer_google(redis_server.url(), 5)  # the default threshold: halved, 50/s to 25/s
    web = start_web(
        BULKMAIL_PROVIDER_THROTTLING="true", BULKMAIL_REDIS_URL=redis_server.url(), **SETTINGS
    )

    data = web.json("/api/v1/providers")
    assert data["throttling"] is True
    assert data["problem"] is None
    rows = {row["provider"]: row for row in data["providers"]}
    assert set(rows) == {"corp", "default", "google", "microsoft", "yahoo"}
    assert rows["google"] | {"domains": None} == {
        "provider": "google",
        "domains": None,
        "rate_limit": 50.0,
        "connections": 5,
        "state": "throttled",
        "rate": 25.0,
    }
    assert rows["google"]["domains"] == ["gmail.com", "googlemail.com"]
    assert (rows["corp"]["state"], rows["corp"]["rate"], rows["corp"]["connections"]) == (
        "normal",
        7.0,
        3,
    )
    assert rows["corp"]["domains"] == ["corp.example"]
    assert (rows["default"]["state"], rows["default"]["rate"]) == ("normal", None)

    status, _, page = web.request("/providers")
    assert status == 200
    text = html.unescape(page.decode())
    google = text[text.index('data-provider="google"') :].split("</tr>")[0]
    assert "throttled" in google
    assert "25.0/s" in google
    assert "50/s" in google
    default = text[text.index('data-provider="default"') :].split("</tr>")[0]
    assert "every other domain" in default
    assert "unlimited" in default

    status, _, body = web.request("/metrics")
    assert status == 200
    samples = _samples(body)
    assert samples["bulkmail_provider_rate", (("provider", "google"),)] == 25.0
    assert samples["bulkmail_provider_rate_limit", (("provider", "google"),)] == 50.0
    assert samples["bulkmail_provider_rate", (("provider", "corp"),)] == 7.0
    states = {
        labels[1][1]: value
        for (name, labels), value in samples.items()
        if name == "bulkmail_provider_state" and labels[0] == ("provider", "google")
    }
    assert states == {"normal": 0.0, "throttled": 1.0, "cooling_down": 0.0}


def test_with_throttling_off_the_page_says_so_and_metrics_have_no_provider(
    start_web: Callable[..., webserver.Web],
) -> None:
    web = start_web(**SETTINGS)
    data = web.json("/api/v1/providers")
    assert data["throttling"] is False
    assert {row["state"] for row in data["providers"]} == {"off"}
    status, _, page = web.request("/providers")
    assert status == 200
    assert b'id="throttling-off"' in page
    assert b"bulkmail_provider_" not in web.request("/metrics")[2]


def test_with_redis_down_the_page_says_why_and_metrics_still_answer(
    start_web: Callable[..., webserver.Web],
) -> None:
    nowhere = f"redis://127.0.0.1:{servers.free_port()}/0"
    web = start_web(BULKMAIL_PROVIDER_THROTTLING="true", BULKMAIL_REDIS_URL=nowhere, **SETTINGS)
    data = web.json("/api/v1/providers")
    assert {row["state"] for row in data["providers"]} == {"unknown"}
    assert data["problem"].startswith("the per-provider limits cannot be kept: Redis is")
    status, _, body = web.request("/metrics")
    assert status == 200
    assert b"bulkmail_emails" in body
    assert b"bulkmail_provider_" not in body
