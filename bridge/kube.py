"""Cluster I/O: the one module that talks to a Kubernetes API server (through the ``kubernetes`` client).

Everything :mod:`bridge.apply` needs from a cluster, and nothing more: connect with a kubeconfig (and
context), ask discovery whether a kind is served, get / server-side apply / list / delete objects as plain
``dict``. The ``kubernetes`` package (the ``meshbridge[kubernetes]`` extra) is imported only here (an
import contract says so), and this module only by ``apply``/``diff``, so the rest of the CLI neither needs
it nor pays for importing it; without it, :meth:`Cluster.connect` says what to install. Its errors
(``ApiException``, urllib3 connection errors, ``ConfigException``) are mapped once, here, to
:class:`KubeError`.

Error tree (under :class:`bridge.errors.BridgeError`, CLI: ``error: …``, exit 2)::

    KubeError            the cluster could not be reached, or refused a request
    └── KindsMissing     the cluster serves none of these kinds (CRDs not installed)

Discovery is cached by the client in a file; each :class:`Cluster` keeps that file in its own temporary
directory (removed by :meth:`Cluster.close`), so a kind installed since an earlier run is never missed.
Blocking and synchronous: one request at a time, each with the connection's timeout.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError

try:
    import urllib3
    from kubernetes import client as _client
    from kubernetes import config as _config
    from kubernetes import dynamic as _dynamic
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.dynamic.exceptions import (
        ConflictError,
        NotFoundError,
        ResourceNotFoundError,
        ResourceNotUniqueError,
    )
except ImportError:  # the meshbridge[kubernetes] extra is not installed: Cluster.connect says so
    _INSTALLED = False
else:
    _INSTALLED = True
    # the client's functions are partly untyped (and untyped before v35): typed as Any here, at the edge
    _new_client_from_config: Any = _config.new_client_from_config
    _DynamicClient: Any = _dynamic.DynamicClient
    _VersionApi: Any = _client.VersionApi

__all__ = ["FIELD_MANAGER", "Cluster", "KindsMissing", "KubeError", "ObjectRef"]

FIELD_MANAGER = "meshbridge"
"""``fieldManager`` of every server-side apply meshbridge makes."""


class KubeError(BridgeError):
    """The cluster could not be reached, or it refused a request (message names the object)."""


class KindsMissing(KubeError):
    """The cluster does not serve some kinds meshbridge renders; ``kinds`` are ``(apiVersion, kind)``."""

    def __init__(self, kinds: list[tuple[str, str]], message: str) -> None:
        self.kinds = list(kinds)
        super().__init__(message)


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """Which object: group and kind (not version: one object is served under every version), name."""

    group: str
    kind: str
    namespace: str
    """``""`` for cluster-scoped objects."""
    name: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        namespace = str(meta.get("namespace") or "")
        return cls(group, str(obj.get("kind", "")), namespace, str(meta.get("name", "")))

    def __str__(self) -> str:
        kind = f"{self.kind.lower()}.{self.group}" if self.group else self.kind.lower()
        where = f" -n {self.namespace}" if self.namespace else ""
        return f"{kind}/{self.name}{where}"


def _reason(exc: Exception) -> str:
    """The API server's own message (``Status.message``) when there is one, else the exception text."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            status = json.loads(body)
        except ValueError:
            return body.strip()
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    status_code = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status_code is not None:
        return f"HTTP {status_code} {reason or ''}".strip()
    return str(exc) or type(exc).__name__


class Cluster:
    """A connection to one API server. Use :meth:`connect`; close with :meth:`close` (or ``with``)."""

    def __init__(self, api: Any, dynamic: Any, cache_dir: Path, server: str, timeout: float) -> None:
        self._api = api
        self._dyn = dynamic
        self._cache_dir = cache_dir
        self._timeout = timeout
        self._resources: dict[tuple[str, str], Any] = {}
        self.server = server
        """The API server's URL, for messages."""

    # -- connecting -------------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls, *, kubeconfig: str | None = None, context: str | None = None, timeout: float = 10.0
    ) -> Cluster:
        """Connect as ``kubectl`` does: ``$KUBECONFIG`` or ``~/.kube/config``, ``context`` or the current one.

        Raises :class:`KubeError` when the client is not installed, the kubeconfig is unusable, or the API
        server does not answer ``/version`` within ``timeout`` seconds.
        """
        if not _INSTALLED:
            raise KubeError(
                "the kubernetes Python client is not installed: pip install 'meshbridge[kubernetes]'"
            )
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "kubeconfig ($KUBECONFIG or ~/.kube/config)"
        try:
            api = _new_client_from_config(config_file=kubeconfig, context=context)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            ctx = f" context {context!r}" if context else ""
            raise KubeError(f"{where}{ctx}: no usable cluster: {exc}") from exc
        server = str(api.configuration.host)
        cache_dir = Path(tempfile.mkdtemp(prefix="meshbridge-kube-"))
        try:
            try:
                _VersionApi(api).get_code(_request_timeout=timeout)
                dyn = _DynamicClient(api, cache_file=str(cache_dir / "discovery.json"))
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise KubeError(
                    f"{server}: no Kubernetes API server reachable ({type(exc).__name__}); "
                    "check the kubeconfig's context (--context) and that the cluster is up"
                ) from exc
            except ApiException as exc:
                raise KubeError(f"{server}: the API server refused us: {_reason(exc)}") from exc
        except BaseException:
            shutil.rmtree(cache_dir, ignore_errors=True)
            api.close()
            raise
        return cls(api, dyn, cache_dir, server, timeout)

    def close(self) -> None:
        """Release the connection pool and the discovery cache."""
        self._api.close()
        shutil.rmtree(self._cache_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- discovery ---------------------------------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any | None:
        key = (api_version, kind)
        if key not in self._resources:
            try:
                with self._errors(f"discovery of {kind} ({api_version})"):
                    self._resources[key] = self._dyn.resources.get(api_version=api_version, kind=kind)
            except KubeError as exc:
                if not isinstance(exc.__cause__, ResourceNotFoundError):
                    raise
                self._resources[key] = None
        return self._resources[key]

    def serves(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves ``kind`` in ``api_version`` (for custom kinds: its CRD is in)."""
        return self._resource(api_version, kind) is not None

    def _served(self, api_version: str, kind: str) -> Any:
        resource = self._resource(api_version, kind)
        if resource is None:
            raise KindsMissing([(api_version, kind)], f"{self.server}: {kind} ({api_version}) is not served")
        return resource

    # -- objects -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map the client's exceptions inside the block to :class:`KubeError` naming ``what``."""
        try:
            yield
        except (ApiException, ResourceNotFoundError, ResourceNotUniqueError) as exc:
            raise KubeError(f"{what}: {_reason(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeError(f"{what}: {self.server}: API server unreachable ({type(exc).__name__})") from exc

    def _object(
        self, obj: dict[str, Any], call: Callable[..., Any], what: str | None = None, **kwargs: Any
    ) -> Any:
        """``call(resource, name=…, namespace=…, **kwargs)`` of the dynamic client for the object ``obj``
        names, errors mapped naming ``what`` (default: the object)."""
        ref = ObjectRef.of(obj)
        resource = self._served(str(obj["apiVersion"]), ref.kind)
        with self._errors(what or str(ref)):
            return call(
                resource,
                name=ref.name,
                namespace=ref.namespace or None,
                _request_timeout=self._timeout,
                **kwargs,
            )

    def get(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The live object with ``obj``'s kind, namespace and name, or ``None`` if there is none."""
        try:
            live = self._object(obj, self._dyn.get)
        except KubeError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return None
            raise
        return dict(live.to_dict())

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        """Server-side apply ``obj`` with field manager ``meshbridge``; the object as the server has it now.

        ``dry_run`` asks the server to do everything but persist (``dryRun=All``): admission, defaulting,
        schema validation of CRDs and field ownership all run. ``force`` takes over fields another manager
        owns (``kubectl apply --server-side --force-conflicts``); without it such conflicts are errors.
        """
        try:
            result = self._object(
                obj,
                self._dyn.server_side_apply,
                body=obj,
                field_manager=FIELD_MANAGER,
                force_conflicts=force or None,
                dry_run="All" if dry_run else None,
            )
        except KubeError as exc:
            if isinstance(exc.__cause__, ConflictError):
                raise KubeError(
                    f"{exc}; another field manager owns these fields: re-run with --force-conflicts to "
                    "take them over"
                ) from exc.__cause__
            raise
        return dict(result.to_dict())

    def list(self, api_version: str, kind: str, label_selector: str) -> list[dict[str, Any]]:
        """Objects of ``kind`` in every namespace whose labels match ``label_selector``."""
        resource = self._served(api_version, kind)
        with self._errors(f"list {kind} ({api_version}) -l {label_selector}"):
            items = self._dyn.get(resource, label_selector=label_selector, _request_timeout=self._timeout)
        return [dict(item.to_dict()) for item in items.items]

    def delete(self, obj: dict[str, Any], *, dry_run: bool = False) -> None:
        """Delete the object ``obj`` names (already gone counts as deleted)."""
        what = f"delete {ObjectRef.of(obj)}"
        try:
            self._object(obj, self._dyn.delete, what, dry_run="All" if dry_run else None)
        except KubeError as exc:
            if not isinstance(exc.__cause__, NotFoundError):
                raise
