"""A stateful stand-in for ``spire-server entry create|show|update|delete`` (tests only).

It keeps entries in a JSON file (``$FAKE_SPIRE_STATE``), appends every call's argv to ``$FAKE_SPIRE_LOG``
(one argument a line, then ``--``) and prints ``entry show`` in SPIRE's text format (v1.x
``cmd/spire-server/cli/entry/util.go`` ``printEntry``: ``Entry ID         : …``, ``Selector         : …``,
a blank line after each entry, ``Found N entries`` first). ``-selector`` filters like SPIRE's default
``-matchSelectorsOn superset``. Creating an entry whose (parent ID, SPIFFE ID, selectors) already exist
fails as the real server does (``AlreadyExists``). The registered-entries script is proved against a
real SPIRE server elsewhere; this fake pins the script's logic.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

_MULTI = {"selector", "dns", "federatesWith"}


def _parse(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        arg = args[i].lstrip("-")
        if "=" in arg:
            key, value = arg.split("=", 1)
        elif arg == "storeSVID":
            key, value = arg, "true"
        else:
            key, value = arg, args[i + 1]
            i += 1
        out.setdefault(key, []).append(value)
        i += 1
    return out


def _entry(flags: dict[str, list[str]], entry_id: str) -> dict[str, object]:
    return {
        "id": entry_id,
        "spiffe_id": flags["spiffeID"][0],
        "parent_id": flags["parentID"][0],
        "selectors": sorted(flags.get("selector", [])),
        "dns": flags.get("dns", []),
        "federates_with": flags.get("federatesWith", []),
        "ttl": flags.get("x509SVIDTTL", ["0"])[0],
        "store_svid": flags.get("storeSVID", ["false"])[0] == "true",
    }


def _show(entries: list[dict[str, object]]) -> None:
    print(f"Found {len(entries)} {'entry' if len(entries) == 1 else 'entries'}")
    for e in entries:
        print(f"Entry ID         : {e['id']}")
        print(f"SPIFFE ID        : {e['spiffe_id']}")
        print(f"Parent ID        : {e['parent_id']}")
        print("Revision         : 0")
        print(f"X509-SVID TTL    : {'default' if e['ttl'] == '0' else e['ttl']}")
        print("JWT-SVID TTL     : default")
        for sel in e["selectors"]:  # type: ignore[attr-defined]
            print(f"Selector         : {sel}")
        for td in e["federates_with"]:  # type: ignore[attr-defined]
            print(f"FederatesWith    : {td}")
        for dns in e["dns"]:  # type: ignore[attr-defined]
            print(f"DNS name         : {dns}")
        if e["store_svid"]:
            print("StoreSvid        : true")
        print()


def main(argv: list[str]) -> int:
    state = Path(os.environ["FAKE_SPIRE_STATE"])
    with open(os.environ["FAKE_SPIRE_LOG"], "a", encoding="utf-8") as log:
        log.write("".join(f"{a}\n" for a in argv) + "--\n")
    entries: list[dict[str, object]] = json.loads(state.read_text()) if state.exists() else []
    if argv[:1] != ["entry"] or len(argv) < 2:
        print(f"unknown command {argv!r}", file=sys.stderr)
        return 1
    flags = _parse(argv[2:])
    flags.pop("socketPath", None)
    verb = argv[1]
    if verb == "show":
        found = [
            e
            for e in entries
            if all(e["spiffe_id"] == v for v in flags.get("spiffeID", []))
            and all(e["parent_id"] == v for v in flags.get("parentID", []))
            and set(flags.get("selector", [])) <= set(e["selectors"])  # type: ignore[arg-type]
        ]
        _show(found)
        return 0
    if verb == "create":
        new = _entry(flags, str(uuid.uuid4()))
        key = (new["parent_id"], new["spiffe_id"], new["selectors"])
        if any((e["parent_id"], e["spiffe_id"], e["selectors"]) == key for e in entries):
            print("Error: failed to create entry: similar entry already exists", file=sys.stderr)
            return 1
        entries.append(new)
    elif verb == "update":
        (entry_id,) = flags.pop("entryID")
        index = next((i for i, e in enumerate(entries) if e["id"] == entry_id), None)
        if index is None:
            print(f"Error: entry {entry_id} not found", file=sys.stderr)
            return 1
        entries[index] = _entry(flags, entry_id)
    elif verb == "delete":
        (entry_id,) = flags["entryID"]
        entries = [e for e in entries if e["id"] != entry_id]
    else:
        return 1
    state.write_text(json.dumps(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
