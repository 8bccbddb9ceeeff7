"""Incoming mailboxes' passwords: Fernet-encrypted with ``BULKMAIL_SECRET_KEY``, or in a file.

Nothing here puts a password or the key into an error message.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import fernet

from bulkmail import errors

_MAKE_KEY = (
    "make one with `python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'`"
)


def _cipher(key: str | None) -> fernet.Fernet:
    if not key:
        raise errors.InvalidInput(
            "BULKMAIL_SECRET_KEY is not set, so the password cannot be stored encrypted; set it "
            f"({_MAKE_KEY}) or keep the password in its file with --keep-file"
        )
    try:
        return fernet.Fernet(key.strip().encode())
    except (ValueError, TypeError):
        raise errors.InvalidInput(
            f"BULKMAIL_SECRET_KEY is not a Fernet key (32 bytes, URL-safe base64); {_MAKE_KEY}"
        ) from None


def encrypt(key: str | None, password: str) -> bytes:
    return _cipher(key).encrypt(password.encode())


def decrypt(key: str | None, token: bytes) -> str:
    try:
        return _cipher(key).decrypt(token).decode()
    except fernet.InvalidToken:
        raise errors.InvalidInput(
            "the stored password cannot be decrypted with BULKMAIL_SECRET_KEY (was the key "
            "changed?); set the password again with `bulkmail mailbox incoming set`"
        ) from None


def read_file(path: str) -> str:
    """The password in ``path``: its first line, without the line break."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise errors.InvalidInput(
            f"cannot read the password file {path}: {error.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise errors.InvalidInput(f"the password file {path} is not UTF-8 text") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise errors.InvalidInput(f"the password file {path} is empty; put the password in it")
    return password
