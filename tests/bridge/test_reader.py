"""bridge.artifacts: the one reader of rendered documents (check and the demo), selector semantics as
spire-controller-manager applies them."""

from __future__ import annotations

import pytest

from bridge import artifacts

_POD = {"app": "httpbin"}


def _crd(spec: dict[str, object]) -> artifacts.ClusterSpiffeId:
    doc = {"kind": "ClusterSPIFFEID", "metadata": {"name": "x"}, "spec": spec}
    (crd,) = artifacts.cluster_spiffe_ids({"spire/cluster-spiffeids.yaml": [doc]})
    return crd


@pytest.mark.parametrize(
    ("spec", "selects"),
    [
        ({}, True),  # no selector at all: every pod of every namespace
        ({"podSelector": {"matchLabels": _POD}}, True),  # no namespaceSelector: every namespace
        ({"podSelector": {}}, True),  # {} is labels.Everything()
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}}}, True),
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}, False),
        (  # both selectors: both must match
            {
                "podSelector": {"matchLabels": _POD},
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
            },
            False,
        ),
        ({"podSelector": {"matchLabels": {"app": "inventory"}}}, False),
        (
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["httpbin"]}]}},
            True,
        ),
        ({"podSelector": {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}}, False),
    ],
)
def test_cluster_spiffeid_selects_like_spire_controller_manager(
    spec: dict[str, object], selects: bool
) -> None:
    assert _crd(spec).selects("default", _POD) is selects


def test_register_entries_from_the_script_and_json() -> None:
    script = (
        'ensure_entry() {\n  spire-server entry show -spiffeID "$spiffe_id" -selector "$key"\n}\n'
        'ensure_entry spiffe://apps.example.org/a k "" -- \\\n    spire-server entry create \\\n'
        "    -spiffeID spiffe://apps.example.org/a \\\n"
        "    -selector sconecas_sessionmanager:session_name:ns/a \\\n"
        "    -federatesWith spiffe://example.org\n"
    )
    data = {
        "entries": [
            {
                "spiffe_id": "spiffe://example.org/b",
                "selectors": [{"type": "cas_session_name", "value": "ns/b"}],
            }
        ]
    }
    entries = artifacts.register_entries({"spire/entries.json": data, "spire/register-entries.sh": script})
    assert [(e.spiffe_id, e.session_name, e.federates_with) for e in entries] == [
        ("spiffe://example.org/b", "ns/b", ()),
        ("spiffe://apps.example.org/a", "ns/a", ("example.org",)),
    ]
