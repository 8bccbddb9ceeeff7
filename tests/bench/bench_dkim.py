"""Messages per second of mime.build followed by a DKIM signature (rsa-sha256, relaxed/relaxed,
a 2048-bit key) against mime.build alone: the CPU signing adds to each message a poller sends.

The messages are bench_mime.py's (~2 KB text + HTML, a 100 KB attachment from the part cache).
Run: .venv/bin/python tests/bench/bench_dkim.py [--n N] [--json]
"""

from __future__ import annotations

import argparse
import json

from bench_mime import make_messages, rate  # a script's sys.path holds its own folder
from cryptography.hazmat.primitives.asymmetric import rsa

from bulkmail import dkim, mime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000, help="messages to build and sign")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    messages = make_messages(args.n)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = dkim.Signer(domain="example.org", selector="bench", key=key)
    unsigned = rate(mime.build, messages)
    signed = rate(lambda message: signer.sign(mime.build(message)), messages)
    cost_ms = (1 / signed - 1 / unsigned) * 1000
    result = {
        "phase": "message builder + DKIM",
        "n": args.n,
        "rate": round(signed, 1),
        "reference": round(unsigned, 1),
        "ratio": round(signed / unsigned, 3),
        "note": f"signing adds {cost_ms:.3f} ms of CPU per message",
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"build + sign   {signed:12,.0f} messages/s")
        print(f"build only     {unsigned:12,.0f} messages/s")
        print(f"signing adds   {cost_ms:12.3f} ms per message ({args.n} messages)")


if __name__ == "__main__":
    main()
