"""istio-agent's file-mounted credential names: ``file-cert:<cert>~<key>``, ``file-root:<path>``,
``file-root:system`` — read from disk, watched, pushed on change.

Semantics follow istio-agent (``security/pkg/nodeagent/cache/secretcache.go`` ``generateFileSecret``
and ``security/pkg/model.go`` ``SdsCertificateConfigFromResourceName``):

* ``file-cert:<cert>~<key>`` — split on ``~``, exactly two parts; served as ``tls_certificate`` with
  both files' bytes inline (istio-agent reads them as they are). ``file-root:<path>`` — no ``~``; served
  as ``validation_context.trusted_ca``. ``file-root:system`` — the OS trust store, found like
  istio-agent's ``GetOSRootFilePath`` (Go's ``crypto/x509/root_linux.go`` list, first that exists).
* Relative paths are relative to the server's working directory, as in istio-agent.

Where we are stricter than istio-agent, and why:

* **Only under ``--file-credentials-dir``.** Any local process that can reach the SDS socket could
  otherwise read any file the server can (a private key is a file). A path is resolved (symlinks too:
  Kubernetes secret volumes are ``..data`` symlinks) and must lie inside one of the configured
  directories; anything else is refused with one ``sds.file_credential.refused`` warning per name and
  never read. ``file-root:system`` is the server's own choice of path, not the client's, and is allowed.
* **A torn rotation is never pushed.** A certificate and its key are two files rewritten one after the
  other; a cert whose public key does not match the key file is not served (the previous pair keeps
  being served) and is retried at the next poll. istio-agent debounces 100 ms and hopes.
* **Bounded.** At most ``max_files`` names watched, files larger than ``max_bytes`` refused.

Watching: one asyncio task polls ``os.stat`` of the watched paths every ``poll_seconds`` (inode, size,
mtime, ctime — a symlink swap changes the inode) and re-reads a name only when a signature changed.
No inotify, no thread: a handful of ``stat`` calls per second on the server's loop.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from sds_server import secrets
from sds_server.snapshot import FILE_NAME_PREFIXES, Resource, make_resource
from sds_server.x509svid import key_matches_certificate

log = structlog.get_logger(__name__)

CERT_PREFIX, ROOT_PREFIX = FILE_NAME_PREFIXES  # defined once, beside the names they must not shadow
SYSTEM_ROOT = "file-root:system"
SEPARATOR = "~"  # istio ``security.ResourceSeparator``
# istio ``security.GetOSRootFilePath`` (from Go's crypto/x509/root_linux.go), in that order.
OS_ROOT_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/ssl/cert.pem",
    "/etc/ssl/certs/ca-certificates",
)

Signature = tuple[int, int, int, int, int] | None


def is_file_name(name: str) -> bool:
    """Whether ``name`` is one of istio-agent's file credential names (valid or not)."""
    return name.startswith(FILE_NAME_PREFIXES)


def parse(name: str) -> tuple[str, ...] | None:
    """The paths a file credential name refers to (cert, key) or (root,); ``None`` if malformed."""
    for prefix, count in ((CERT_PREFIX, 2), (ROOT_PREFIX, 1)):
        if name.startswith(prefix):
            parts = name[len(prefix) :].split(SEPARATOR)
            return tuple(parts) if len(parts) == count and all(parts) else None
    return None


def os_root_file() -> Path | None:
    """The OS trust store istio-agent would use for ``file-root:system``."""
    return next((Path(p) for p in OS_ROOT_FILES if os.path.exists(p)), None)


class FileCredentialError(Exception):
    """A file credential cannot be served (message says which file and why). Internal to this module."""


@dataclass(slots=True)
class _Watched:
    paths: tuple[Path, ...]
    users: int = 0
    signature: tuple[Signature, ...] = ()
    resource: Resource | None = None
    failing: str = ""  # the last error logged (logged again only when it changes)


def _stat(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileCredentials:
    """File-backed resources by name. Runs on the server's loop (:meth:`run`); not thread-safe."""

    def __init__(
        self,
        dirs: Sequence[Path],
        *,
        poll_seconds: float = 1.0,
        max_files: int = 256,
        max_bytes: int = 2 * 1024 * 1024,
        system_roots: Path | None = None,
    ) -> None:
        self.dirs = tuple(Path(os.path.realpath(d)) for d in dirs)
        self.poll_seconds = poll_seconds
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._system = system_roots
        self._watched: dict[str, _Watched] = {}
        self._refused: set[str] = set()
        self.on_change: Callable[[frozenset[str]], None] = lambda names: None

    # ---- names --------------------------------------------------------------------------------
    def _paths(self, name: str) -> tuple[Path, ...] | None:
        """The paths to read for ``name``, or ``None`` (refused: logged once per name)."""
        if name == SYSTEM_ROOT:
            root = self._system or os_root_file()
            if root is None:
                self._refuse(name, "", "no OS trust store found (istio-agent's list of paths)")
                return None
            return (root,)
        parts = parse(name)
        if parts is None:
            self._refuse(name, "", "malformed: file-cert:<cert>~<key> or file-root:<path>")
            return None
        for part in parts:
            real = Path(os.path.realpath(part))
            if not any(real.is_relative_to(d) for d in self.dirs):
                allowed = [str(d) for d in self.dirs] or "none configured"
                self._refuse(name, part, f"not under any --file-credentials-dir ({allowed})")
                return None
        return tuple(Path(part) for part in parts)

    def _refuse(self, name: str, path: str, reason: str) -> None:
        if name not in self._refused:
            if len(self._refused) < 4 * self.max_files:  # a client spraying names cannot grow this
                self._refused.add(name)
            log.warning("sds.file_credential.refused", name=name, path=path or None, reason=reason)

    def allowed(self, name: str) -> bool:
        """Whether ``name`` is a file credential this server would serve (path checks only)."""
        return name in self._watched or self._paths(name) is not None

    # ---- subscriptions ------------------------------------------------------------------------
    def acquire(self, name: str) -> bool:
        """A stream subscribed to ``name``: watch it (loading it now). False when refused."""
        w = self._watched.get(name)
        if w is None:
            if len(self._watched) >= self.max_files:
                self._refuse(name, "", f"more than {self.max_files} file credentials watched")
                return False
            paths = self._paths(name)
            if paths is None:
                return False
            w = self._watched[name] = _Watched(paths)
            self._reload(name, w)
        w.users += 1
        return True

    def release(self, name: str) -> None:
        """A stream dropped ``name``: stop watching it when nobody uses it."""
        w = self._watched.get(name)
        if w is not None:
            w.users -= 1
            if w.users <= 0:
                del self._watched[name]

    def get(self, name: str) -> Resource | None:
        w = self._watched.get(name)
        return None if w is None else w.resource

    @property
    def watched(self) -> int:
        return len(self._watched)

    # ---- reading ------------------------------------------------------------------------------
    def _read(self, path: Path) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as exc:
            raise FileCredentialError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        if len(data) > self.max_bytes:
            raise FileCredentialError(f"{path}: larger than {self.max_bytes} bytes")
        return data

    def _build(self, name: str, paths: tuple[Path, ...]) -> Resource:
        pems = [self._read(p) for p in paths]
        try:
            with warnings.catch_warnings():
                if len(paths) == 1:
                    # Only "is there a PEM certificate" is checked; Envoy parses the roots. OS stores hold
                    # roots cryptography warns about (Debian's: a serial <= 0), which must not fail this.
                    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                leaf = x509.load_pem_x509_certificates(pems[0])[0]
        except ValueError as exc:
            raise FileCredentialError(f"{paths[0]}: no PEM certificate: {exc}") from exc
        if len(paths) == 1:
            return make_resource(name, "trusted_ca", secrets.trusted_ca_secret(name, pems[0]))
        chain_pem, key_pem = pems
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise FileCredentialError(f"{paths[1]}: no unencrypted PEM private key: {exc}") from exc
        if not key_matches_certificate(key, leaf):
            raise FileCredentialError(
                f"{paths[1]}: does not match the certificate in {paths[0]} (a rotation half written?)"
            )
        return make_resource(
            name,
            "tls_certificate",
            secrets.tls_certificate_secret(name, chain_pem, key_pem),
            serial=format(leaf.serial_number, "x"),
            not_after=leaf.not_valid_after_utc,
        )

    def _reload(self, name: str, w: _Watched) -> bool:
        """Re-read ``name``; True when its served content changed."""
        signature = tuple(_stat(p) for p in w.paths)
        try:
            resource = self._build(name, w.paths)
        except FileCredentialError as exc:
            # keep serving what we had; retry at the next poll (signature not recorded)
            if str(exc) != w.failing:
                w.failing = str(exc)
                log.warning(
                    "sds.file_credential.unreadable",
                    name=name,
                    error=str(exc),
                    serving_previous=(w.resource is not None),
                )
            return False
        w.signature = signature
        w.failing = ""
        changed = w.resource is None or w.resource.version != resource.version
        if changed:
            log.info(
                "sds.file_credential.loaded",
                name=name,
                version=resource.version[:16],
                serial=resource.serial or None,
            )
        w.resource = resource
        return changed

    def poll(self) -> frozenset[str]:
        """Re-read names whose files changed; the names whose content changed."""
        changed = set()
        for name, w in list(self._watched.items()):
            stale = w.failing or tuple(_stat(p) for p in w.paths) != w.signature
            if stale and self._reload(name, w):
                changed.add(name)
        return frozenset(changed)

    async def run(self) -> None:
        """Poll forever (cancel to stop); report changed names through :attr:`on_change`."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            if not self._watched:
                continue
            try:
                changed = self.poll()
            except Exception:  # never let the watcher die: log and keep polling
                log.exception("sds.file_credential.poll_failed")
                continue
            if changed:
                self.on_change(changed)
