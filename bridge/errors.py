"""Errors of the ``bridge`` package.

Tree::

    BridgeError                   base: anything ``bridge`` raises on purpose (CLI: ``error: …``, exit 2)
    ├── SpecError                 the bridge spec is invalid; carries every problem found at once
    │   └── FlagError             (bridge.flags) flags of a single-purpose command are invalid
    ├── EnvoyError                (bridge.envoy.errors) Envoy could not be started or did not get ready
    ├── DemoError                 (bridge.demo.errors) a demo step could not run (not a failed check)
    ├── KubeError                 (bridge.kube) the cluster refused or could not be reached (apply/diff)
    │   └── KindsMissing          the cluster lacks CRDs for kinds the spec renders; names what to install
    └── SpireError                (bridge.spire_local) a local spire-server/agent could not run or refused

The renderer packages have their own bases (``istio.errors.IstioError``, ``scone.errors.SconeError``);
``bridge.render`` maps them to ``SpecError`` naming the app or service.

Messages read ``<field path>: <value!r>: <rule>``.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error raised on purpose by ``bridge``."""


class SpecError(BridgeError):
    """The bridge spec is invalid. ``problems`` lists every ``path: value: rule`` line found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
