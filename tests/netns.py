"""Test hosts as Linux network namespaces, each joined to the root namespace by a veth pair.

Host k gets the /30 network 10.231.N.0 (N = a free third octet): the root namespace is .1 on
its side of the pair (the services listen there), the host .2. The hosts reach nothing but
their own link, so each one talks to the services through its own gateway address. Cutting a
host sets the root side of its pair down: the host's packets are dropped as on a pulled cable
(its connections hang, they are not refused), and they flow again when it is set up.

Names carry a per-run suffix, so a run that crashed before its cleanup never blocks the next;
everything is removed when the block ends, and at the latest when the Python process exits.
Needs root and iproute2: otherwise the test is skipped locally and fails under CI.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator

from tests import services

NETWORK = ipaddress.IPv4Network("10.231.0.0/16")


@dataclasses.dataclass(frozen=True)
class Host:
    namespace: str
    link: str  # the root namespace's end of the veth pair: down cuts the host off
    address: str  # the host's own address
    gateway: str  # the root namespace's address on the link: where the host finds the services

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the host (``ip netns exec`` execs it: same pid, same signals)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def _free_octets(count: int) -> list[int]:
    """``count`` third octets of NETWORK that no interface of this machine uses now."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    used = {
        int(word.split(".")[2])
        for word in shown.split()
        if word.startswith("10.231.") and word.count(".") == 3
    }
    free = [octet for octet in range(256) if octet not in used]
    if len(free) < count:
        raise RuntimeError(f"fewer than {count} free /30 networks left in {NETWORK}")
    return random.sample(free, count)


@contextlib.contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """``count`` fresh hosts, removed when the block ends."""
    if os.geteuid() != 0:
        services.missing("network namespaces", "creating them needs root")
    if shutil.which("ip") is None:
        services.missing("network namespaces", "the `ip` command (iproute2) is not installed")
    run = uuid.uuid4().hex[:6]
    made: list[Host] = []

    def remove() -> None:
        for host in made:
            # Deleting the namespace deletes its end of the pair, and with it the other end.
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)
        made.clear()

    atexit.register(remove)
    try:
        for k, octet in enumerate(_free_octets(count)):
            base = NETWORK.network_address + octet * 256
            host = Host(
                namespace=f"bulkmail-{run}-{k}",
                link=f"bm{run}r{k}",
                address=str(base + 2),
                gateway=str(base + 1),
            )
            inner = f"bm{run}h{k}"
            made.append(host)
            _ip("netns", "add", host.namespace)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", host.namespace)
            _ip("addr", "add", f"{host.gateway}/30", "dev", host.link)
            _ip("link", "set", host.link, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", inner)
            _ip("-n", host.namespace, "link", "set", inner, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        yield list(made)
    finally:
        remove()
        atexit.unregister(remove)
