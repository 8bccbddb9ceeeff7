"""Send rate of bulkmail's SMTP sender against Postfix's smtp-sink, next to smtp-source's.

Not a test (pytest does not collect it). Run it from the repository root::

    .venv/bin/python tests/bench/bench_smtp.py            # 50,000 messages of 2 KB
    .venv/bin/python tests/bench/bench_smtp.py -n 10000 --json

It starts ``smtp-sink`` on a free loopback port, sends the messages with ``smtp.Sender`` in
batches, then lets Postfix's C load generator ``smtp-source`` send as many messages of the same
size to the same sink, and prints both rates and their ratio (the target is at least 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import time

from bench_send import free_port, smtp_sink

from bulkmail import smtp


def message(number: int, size: int) -> bytes:
    head = (
        f"From: Bulk Sender <sender@example.org>\r\n"
        f"To: <rcpt{number}@example.com>\r\n"
        f"Subject: Benchmark message {number}\r\n"
        f"Message-ID: <{number}.bench@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * (max(size - len(head), 0) // len(line) + 1)
    return head + body[: max(size - len(head), 0)]


def items(count: int, size: int) -> list[smtp.Item[int]]:
    return [
        smtp.Item(
            key=number,
            sender="sender@example.org",
            recipients=(f"rcpt{number}@example.com",),
            message=message(number, size),
        )
        for number in range(count)
    ]


async def send(port: int, messages: list[smtp.Item[int]], connections: int, batch: int) -> float:
    """Seconds to send ``messages`` in batches, from opening the Sender to closing it."""
    settings = smtp.SmtpSettings(host="127.0.0.1", port=port, connections=connections)
    started = time.perf_counter()
    async with smtp.Sender(settings) as sender:
        for start in range(0, len(messages), batch):
            outcomes = await sender.send_batch(messages[start : start + batch])
            failed = [o for o in outcomes if o.kind is not smtp.OutcomeKind.DELIVERED]
            if failed:
                raise SystemExit(f"{len(failed)} messages were not delivered: {failed[0]}")
    return time.perf_counter() - started


def smtp_source(port: int, count: int, size: int, sessions: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-s",
            str(sessions),
            "-d",
            "-l",
            str(size),
            "-m",
            str(count),
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=50_000, help="messages per run")
    parser.add_argument("--size", type=int, default=2000, help="message size in bytes")
    parser.add_argument("--connections", type=int, default=8, help="bulkmail connections")
    parser.add_argument("--batch", type=int, default=1000, help="items per send_batch call")
    parser.add_argument("--sessions", type=int, default=4, help="smtp-source sessions")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; medians reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    for tool in ("smtp-sink", "smtp-source"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed; apt-get install postfix provides it")

    messages = items(args.count, args.size)
    ours, reference = [], []
    port = free_port()
    with smtp_sink(port):
        # A short unmeasured run first, so neither side pays for the sink's first sessions.
        asyncio.run(send(port, messages[:2000], args.connections, args.batch))
        # Alternating rounds share out the noise of a busy machine between both senders.
        for _ in range(args.rounds):
            seconds = asyncio.run(send(port, messages, args.connections, args.batch))
            ours.append(args.count / seconds)
            seconds = smtp_source(port, args.count, args.size, args.sessions)
            reference.append(args.count / seconds)
    rate, reference_rate = statistics.median(ours), statistics.median(reference)
    ratio = rate / reference_rate
    if args.json:
        result = {"phase": "smtp send", "n": args.count, "rate": round(rate)}
        result |= {"reference": round(reference_rate), "ratio": round(ratio, 3)}
        print(json.dumps(result))
    else:
        print(f"bulkmail smtp.Sender, {args.connections} connections: {rate:,.0f} msg/s")
        print(f"smtp-source, {args.sessions} sessions: {reference_rate:,.0f} msg/s")
        print(f"ratio {ratio:.2f} (target >= 0.5); medians of {args.rounds} rounds")
        pairs = zip(ours, reference, strict=True)
        print("rounds (ours/smtp-source):", ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in pairs))


if __name__ == "__main__":
    main()
