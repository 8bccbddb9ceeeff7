"""A Dovecot of the test run's own: IMAP and POP3 on free loopback ports, in a temporary folder.

Debian 12's ``dovecot-imapd`` and ``dovecot-pop3d`` (``.ci/services`` installs them), with a
self-signed certificate for the TLS ports (IMAPS, POP3S) and STARTTLS on the others. Users
are any name with the one password ``PASSWORD`` (a static passdb: a passwd-file is re-read at
most once a second, so a user added right after a login would be refused), logins are allowed in
clear on loopback, and mail is Maildir under the folder. Messages are put in with IMAP APPEND,
as a mail server delivers them. The server is stopped, and its folder removed, when the
``with`` block ends.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import imapclient

from tests import services
from tests.servers import free_port

DOVECOT = "/usr/sbin/dovecot"
PASSWORD = "s3cret"

# Dovecot 2.3 refuses a ``{`` block on one line, and mailbox access for a uid below
# first_valid_uid (the dovecot user is ~109): both are spelled out here.
CONFIG = """\
protocols = imap pop3
listen = 127.0.0.1
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
ssl = yes
ssl_cert = <{folder}/cert.pem
ssl_key = <{folder}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
# A refused login answers at once, not after Dovecot's 2 s: the tests refuse some on purpose.
auth_failure_delay = 0
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {internal}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{folder}/mail/%u
pop3_uidl_format = %08Xu%08Xv
# IDLE hears of new mail through inotify, else by looking this often (Dovecot's default: 30 s).
mailbox_idle_check_interval = 1 secs
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={folder}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
  }}
}}
"""


class Dovecot:
    """A running Dovecot: put messages in users' mailboxes, read what is there."""

    def __init__(self, folder: Path, ports: list[int]):
        self.folder = folder
        # IMAP and POP3 offer STARTTLS; IMAPS and POP3S are TLS from the start.
        self.imap_port, self.pop3_port, self.imaps_port, self.pop3s_port = ports
        # The self-signed certificate of 127.0.0.1 and localhost: a client's CA file.
        self.certificate = folder / "cert.pem"

    def client(self, user: str) -> imapclient.IMAPClient:
        client = imapclient.IMAPClient("127.0.0.1", port=self.imap_port, ssl=False, timeout=10)
        client.login(user, PASSWORD)
        return client

    def append(self, user: str, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        """APPEND ``messages`` to ``user``'s ``folder``; returns how many."""
        count = 0
        with self.client(user) as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for message in messages:
                client.append(folder, message)
                count += 1
        return count

    def uids(self, user: str, folder: str = "INBOX") -> dict[int, set[bytes]]:
        """UID -> flags of what ``folder`` holds now."""
        with self.client(user) as client:
            client.select_folder(folder, readonly=True)
            flags = client.get_flags(client.search("ALL"))
        return {uid: set(f) for uid, f in flags.items()}

    def reset_uidvalidity(self, user: str) -> None:
        """Give ``user``'s INBOX a new UIDVALIDITY, its messages new UIDs: as a server does
        when a mailbox is restored or rebuilt. Dovecot must not hold the folder open."""
        maildir = self.folder / "mail" / user
        for name in ("dovecot-uidlist", "dovecot.index", "dovecot.index.cache"):
            (maildir / name).unlink(missing_ok=True)
        (maildir / "dovecot.index.log").unlink(missing_ok=True)
        time.sleep(1.1)  # UIDVALIDITY is the creation time in seconds


@contextlib.contextmanager
def own_dovecot() -> Iterator[Dovecot]:
    """A fresh Dovecot in a temporary folder: stopped and removed when the block ends."""
    if not os.path.exists(DOVECOT):
        services.missing("Dovecot", "not installed (`make services` installs it)")
    folder = Path(tempfile.mkdtemp(prefix="bulkmail-test-dovecot-"))
    # As root, Dovecot's own processes and the mail belong to the dovecot user; otherwise to
    # whoever runs the tests.
    internal = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    group = "dovecot" if os.geteuid() == 0 else internal.pw_name
    for sub in ("run", "state", "mail", "home"):
        (folder / sub).mkdir()
    for path in (folder, folder / "mail", folder / "home", folder / "state"):
        os.chown(path, internal.pw_uid, internal.pw_gid)
    folder.chmod(0o755)
    _certificate(folder)
    process: subprocess.Popen[bytes] | None = None

    def remove() -> None:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    try:
        for _ in range(3):
            server = Dovecot(folder, [free_port() for _ in range(4)])
            config = folder / "dovecot.conf"
            config.write_text(
                CONFIG.format(
                    folder=folder,
                    internal=internal.pw_name,
                    internal_group=group,
                    imap_port=server.imap_port,
                    pop3_port=server.pop3_port,
                    imaps_port=server.imaps_port,
                    pop3s_port=server.pop3s_port,
                    password=PASSWORD,
                    uid=internal.pw_uid,
                    gid=internal.pw_gid,
                )
            )
            with (folder / "stderr.log").open("ab") as log:
                process = subprocess.Popen(
                    [DOVECOT, "-F", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
                )
            if _answers(server, process):
                break
        else:
            log_text = (folder / "stderr.log").read_text(errors="replace")
            log_text += (
                (folder / "dovecot.log").read_text(errors="replace")
                if (folder / "dovecot.log").exists()
                else ""
            )
            services.missing("Dovecot", f"it did not start: {log_text[-500:]}")
        yield server
    finally:
        remove()
        atexit.unregister(remove)


def _answers(server: Dovecot, process: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    """Wait until the ports answer (the plain ones greet; the TLS ones wait for the client's
    hello, so a connection is enough); False if Dovecot exits first (a port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            for port in (server.imap_port, server.pop3_port):
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    probe.recv(64)
            for port in (server.imaps_port, server.pop3s_port):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    process.wait()
    return False


def _certificate(folder: Path) -> None:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, in ``folder``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        services.missing("openssl", "not installed (`make services` installs it)")
    assert openssl is not None
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
