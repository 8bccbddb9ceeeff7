"""``bulkmail worker poller`` that also records how long each of its claims took, for
``bench_send.py --claim-times``. Not a test (pytest does not collect it)::

    .venv/bin/python tests/bench/timed_poller.py TIMES_FILE [poller options...]

It runs the same command (``bulkmail worker poller`` with the options given), with the public
``outbox.claim`` wrapped: each call is timed in the poller's own process, from the round's call
to the claimed rows in its hands, so the time holds what the poller waits for (a pooled
connection, the claim's statements, the round trips, locks held by other claimers), whatever
the claim does inside. At exit, TIMES_FILE gets one line per claim: seconds and emails claimed.
"""

from __future__ import annotations

import atexit
import sys
import time
from pathlib import Path
from typing import Any

from bulkmail import outbox
from cli import main as cli_main

_claims: list[tuple[float, int]] = []
_claim = outbox.claim


def _timed_claim(*args: Any, **kwargs: Any) -> list[outbox.Claimed]:
    started = time.perf_counter()
    claimed = _claim(*args, **kwargs)
    _claims.append((time.perf_counter() - started, len(claimed)))
    return claimed


def _write(path: Path) -> None:
    path.write_text("".join(f"{seconds:.6f} {rows}\n" for seconds, rows in _claims))


if __name__ == "__main__":
    times = Path(sys.argv[1])
    outbox.claim = _timed_claim
    atexit.register(_write, times)
    sys.argv = ["bulkmail", "worker", "poller", *sys.argv[2:]]
    cli_main.main()
