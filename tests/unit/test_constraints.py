"""constraints.txt pins the whole dependency set: every distribution bulkmail and its dev and demo
extras need, at the version installed here (the Makefile installs with it)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pinned() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        assert found is not None, f"not a pin: {line!r}"
        pins[canonicalize_name(found.group(1))] = found.group(2)
    return pins


def _needed(name: str, extras: frozenset[str], found: dict[str, str]) -> None:
    """Add ``name`` and what it requires with ``extras``, recursively, to ``found``."""
    distribution = metadata.distribution(name)
    key = canonicalize_name(name)
    if key != "bulkmail":
        if key in found:
            return
        found[key] = distribution.version
    for text in distribution.requires or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and not any(
            marker.evaluate({"extra": extra}) for extra in (*extras, "")
        ):
            continue
        _needed(requirement.name, frozenset(requirement.extras), found)


def test_constraints_pin_every_dependency_at_its_installed_version() -> None:
    needed: dict[str, str] = {}
    _needed("bulkmail", frozenset({"dev", "demo"}), needed)
    assert "aiosmtpd" in needed
    assert "pytest" in needed
    pinned = _pinned()
    unpinned = sorted(set(needed) - set(pinned))
    assert not unpinned, f"not in constraints.txt: {unpinned}; run `make lock`"
    differing = {name: (version, pinned[name]) for name, version in needed.items()}
    differing = {name: pair for name, pair in differing.items() if pair[0] != pair[1]}
    assert not differing, f"installed vs pinned: {differing}; run `make install`"


def test_a_production_install_has_no_demo_catcher() -> None:
    runtime = [
        Requirement(text)
        for text in metadata.distribution("bulkmail").requires or []
        if "extra ==" not in text
    ]
    assert "aiosmtpd" not in {canonicalize_name(r.name) for r in runtime}
