"""`bulkmail demo` needs no services and proves a real send end to end."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
from pathlib import Path

from tests.acceptance.conftest import BULKMAIL


def test_demo_sends_every_email_to_the_local_catcher(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKMAIL_")}
    done = subprocess.run(
        [str(BULKMAIL), "demo", "--contacts", "300"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "messages arrived in ./demo-outbox/" in done.stdout
    files = sorted((tmp_path / "demo-outbox").glob("*.eml"))
    sent_line = next(line for line in done.stdout.splitlines() if " sent in " in line)
    assert len(files) == int(sent_line.split()[0].replace(",", ""))
    assert len(files) > 200
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert str(parsed["Subject"]).startswith("Welcome, Contact")
    assert parsed["From"] == "bulkmail demo <newsletter@example.org>"
    (attached,) = list(parsed.iter_attachments())
    assert attached.get_filename() == "price-list.csv"
    assert f"<{files[0].stem}>" == parsed["Message-ID"]
    assert (tmp_path / "bulkmail-demo.db").exists()
