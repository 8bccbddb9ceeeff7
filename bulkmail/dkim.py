"""DKIM signatures (RFC 6376: rsa-sha256, relaxed/relaxed) over the bytes ``mime.build`` wrote.

No I/O and no parsing through the ``email`` package: the builder's output is CRLF-terminated
with one header block, so the canonical forms are a few byte substitutions, and OpenSSL (through
``cryptography``) signs in a fraction of a millisecond where dkimpy's pure Python takes ~9 ms.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from bulkmail import errors

# What a signature covers when the message has it (RFC 6376 section 5.4.1, and the
# unsubscribe fields mail providers check); a field the message lacks is left out.
SIGNED = (
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
MIN_BITS = 1024  # RFC 8301: verifiers must reject shorter RSA keys
_SELECTOR = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_FIELD_START = re.compile(rb"(?m)^(?=[^ \t])")
_WSP_RUN = re.compile(rb"[ \t]+")
_TRAILING_WSP = re.compile(rb"[ \t]+(?=\r\n|\Z)")


@dataclass(frozen=True, kw_only=True, slots=True)
class Signer:
    """One domain's key: signs messages whose From address is at ``domain``."""

    domain: str  # ASCII, lower case (an A-label for an IDN)
    selector: str
    key: rsa.RSAPrivateKey = field(repr=False)

    def sign(self, message: bytes, *, now: float | None = None) -> bytes:
        """The message with a DKIM-Signature field in front of it."""
        head, separator, body = message.partition(b"\r\n\r\n")
        if not separator:
            raise errors.InvalidInput("the message has no body separator; cannot sign it")
        fields = _fields(head + b"\r\n")
        names = [name for name in SIGNED if name in fields]
        body_hash = hashlib.sha256(canonical_body(body)).digest()
        stamp = int(time.time() if now is None else now)
        unsigned = (
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={self.domain};\r\n"
            f"\ts={self.selector}; t={stamp};\r\n"
            f"\th={':'.join(names)};\r\n"
            f"\tbh={base64.b64encode(body_hash).decode()};\r\n"
            "\tb="
        ).encode("ascii")
        # The signature's own field comes last, with b= empty and no CRLF (section 3.7).
        data = b"".join(fields[name] for name in names) + canonical_field(unsigned)[:-2]
        signature = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        encoded = base64.b64encode(signature)
        folded = b"\r\n\t".join(encoded[i : i + 72] for i in range(0, len(encoded), 72))
        return unsigned + folded + b"\r\n" + message


def load_key(pem: bytes, *, source: str) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key in PEM, or one clear error saying what is wrong."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidInput(
            f"{source} holds no unencrypted PEM private key; create one with "
            "`openssl genrsa -out dkim.pem 2048`"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise errors.InvalidInput(f"{source} holds no RSA key; DKIM here signs with rsa-sha256")
    if key.key_size < MIN_BITS:
        raise errors.InvalidInput(
            f"{source} holds a {key.key_size}-bit key; verifiers reject keys below "
            f"{MIN_BITS} bits: make one of 2048"
        )
    return key


def check_selector(selector: str) -> str:
    value = selector.strip().lower()
    if not _SELECTOR.fullmatch(value) or len(value) > 200:
        raise errors.InvalidInput(
            f"selector {selector!r} is not a DNS label like mail2026; use letters, digits and -"
        )
    return value


def dns_record(selector: str, domain: str, key: rsa.RSAPrivateKey) -> str:
    """The TXT record to publish: name, type and value in strings of at most 255 octets."""
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    value = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    strings = " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {strings} )"


def canonical_field(raw: bytes) -> bytes:
    """One header field in relaxed form (RFC 6376 section 3.4.2)."""
    name, _, value = raw.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def canonical_body(body: bytes) -> bytes:
    """The body in relaxed form (RFC 6376 section 3.4.4)."""
    # Base64 parts and most text hold no tab, double space or space before a line end: three
    # byte searches spare the regular expressions, ten times the cost, on most of the bytes.
    if b"\t" in body or b"  " in body or b" \r\n" in body or body.endswith(b" "):
        body = _WSP_RUN.sub(b" ", _TRAILING_WSP.sub(b"", body))
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _fields(head: bytes) -> dict[str, bytes]:
    """The relaxed form of each field by lower-case name; the last of repeated fields, the one
    a verifier takes first (RFC 6376 section 5.4.2)."""
    found: dict[str, bytes] = {}
    for raw in _FIELD_START.split(head):
        if raw:
            canonical = canonical_field(raw)
            found[canonical.partition(b":")[0].decode("ascii", errors="replace")] = canonical
    return found
