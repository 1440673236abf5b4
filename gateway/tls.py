"""The TLS listener's certificate: loaded at start (a clear error when it cannot be), re-read when its files
change, without a restart and without dropping a connection.

The listener keeps one `ssl.SSLContext` for its whole life (the socket server is bound to it). A changed pair
of files is first loaded into a scratch context: a half-written file or a key that does not match its
certificate is refused there, logged, and the running certificate keeps serving. Only a pair that loads is put
into the live context, where every handshake from then on uses it; connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
from pathlib import Path

from gateway.logs import get_logger
from gateway.policy.model import Tls

log = get_logger("gateway.tls")

CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    """The certificate or key cannot be used; the message says which file and why."""


def _context(cert_file: Path, key_file: Path, min_version: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[min_version]
    context.set_alpn_protocols(["http/1.1"])  # the listener speaks HTTP/1.1 only (no h2: see the README)
    _load(context, cert_file, key_file)
    return context


def _load(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    for kind, path in (("cert_file", cert_file), ("key_file", key_file)):
        if not path.is_file():
            raise TlsError(f"server.tls.{kind}: {path} does not exist or is not a file")
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else str(exc)
        raise TlsError(f"server.tls: cannot use {cert_file} with {key_file}: {reason}") from None
    except OSError as exc:
        raise TlsError(f"server.tls: cannot read {exc.filename}: {exc.strerror}") from None


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0))
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class Certificate:
    """The listener's SSL context and the files it came from."""

    def __init__(self, settings: Tls, base: Path) -> None:
        self.cert_file = (base / settings.cert_file).resolve()
        self.key_file = (base / settings.key_file).resolve()
        self.min_version = settings.min_version
        self.context = _context(self.cert_file, self.key_file, self.min_version)  # raises TlsError
        self._stamp = _stamp(self.cert_file, self.key_file)
        self.reloads = 0
        self.errors = 0

    def reload_if_changed(self) -> bool:
        """Re-read the files if they changed since the last look; True when a new certificate is live."""
        stamp = _stamp(self.cert_file, self.key_file)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            # One copy of the pair, read once: the files may change again between the two loads below.
            with tempfile.TemporaryDirectory(prefix="gateway-tls-") as scratch:
                cert, key = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
                key.touch(mode=0o600)
                key.write_bytes(self.key_file.read_bytes())
                cert.write_bytes(self.cert_file.read_bytes())
                _context(cert, key, self.min_version)  # scratch context: proves the pair loads
                _load(self.context, cert, key)
        except OSError as exc:
            self.errors += 1
            log.error("tls_reload_failed", error=f"cannot read {exc.filename}: {exc.strerror}",
                      detail="the previous certificate keeps serving")
            return False
        except TlsError as exc:
            self.errors += 1
            log.error("tls_reload_failed", error=str(exc), detail="the previous certificate keeps serving")
            return False
        self.reloads += 1
        log.info("tls_reloaded", cert_file=str(self.cert_file))
        return True

    async def watch(self, interval: float = CHECK_INTERVAL) -> None:
        """Look at the files every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
