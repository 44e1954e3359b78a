"""``bridge.writer``: formats by extension, atomic directory replacement, modes, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from bridge.errors import BridgeError
from bridge.rendering import Rendering
from bridge.writer import MARKER, dumps, serialize, write_tree


def test_formats_by_extension() -> None:
    doc: dict[str, object] = {"b": 1, "a": ["x"], "on": "yes", "date": "2024-01-01", "multi": "l1\nl2\n"}
    text = serialize("x.yaml", doc)
    assert yaml.safe_load(text) == doc  # YAML 1.1 traps are quoted
    assert text.index("b:") < text.index("a:")  # key order kept
    assert "multi: |\n  l1\n  l2\n" in text
    assert json.loads(serialize("x.json", doc)) == doc
    assert serialize("x.sh", "#!/bin/sh\n") == "#!/bin/sh\n"
    stream = serialize("many.yaml", [{"a": 1}, {"b": 2}])
    assert list(yaml.safe_load_all(stream)) == [{"a": 1}, {"b": 2}]
    with pytest.raises(BridgeError, match=r"structured documents go to \.yaml or \.json files"):
        serialize("x.txt", {"a": 1})
    with pytest.raises(BridgeError, match="must be 'yaml' or 'json'"):
        dumps({"a": 1}, "toml")


def test_write_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "out"
    docs = Rendering({"a/b.yaml": {"k": "v"}, "run.sh": "#!/bin/sh\necho hi\n", "README.md": "# hi\n"})
    written = write_tree(target, docs)
    assert [p.relative_to(target).as_posix() for p in written] == ["README.md", "a/b.yaml", "run.sh"]
    assert (target / MARKER).is_file()
    assert os.stat(target / "run.sh").st_mode & 0o777 == 0o755
    assert os.stat(target / "a/b.yaml").st_mode & 0o777 == 0o644
    write_tree(target, Rendering({"only.yaml": {"x": 1}}))
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "only.yaml"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_serialisation_failure_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    write_tree(target, Rendering({"keep.yaml": {"x": 1}}))
    with pytest.raises(BridgeError):
        write_tree(target, Rendering({"ok.yaml": {"a": 1}, "bad.txt": {"b": 2}}))
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "keep.yaml"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("bad", ["/abs.yaml", "../up.yaml", "a/./b.yaml", ""])
def test_paths_must_stay_inside(tmp_path: Path, bad: str) -> None:
    with pytest.raises(BridgeError, match="output paths must be relative"):
        write_tree(tmp_path / "out", Rendering({bad: "x"}))
    assert list(tmp_path.iterdir()) == []


def test_refuses_foreign_directories_and_files(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(BridgeError, match="refusing to replace it"):
        write_tree(tmp_path / "home", Rendering({"a.yaml": {}}))
    (tmp_path / "file").write_text("x")
    with pytest.raises(BridgeError, match="refusing to replace it"):
        write_tree(tmp_path / "file", Rendering({"a.yaml": {}}))
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    write_tree(tmp_path / "empty", Rendering({"a.yaml": {}}))
    assert (tmp_path / "empty" / "a.yaml").is_file()


def test_unwritable_parent_is_a_bridge_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(BridgeError, match="cannot create the output directory"):
        write_tree(locked / "out", Rendering({"a.yaml": {}}))


def test_rendering_is_an_immutable_mapping() -> None:
    r = Rendering({"x.yaml": {"a": 1}, "t.sh": "s"}, warnings=("w",))
    assert dict(r) == {"x.yaml": {"a": 1}, "t.sh": "s"}
    assert len(r) == 2
    assert r.yaml_documents("x.yaml") == [{"a": 1}]
    assert r.text("t.sh") == "s"
    with pytest.raises(TypeError):
        r.text("x.yaml")
    with pytest.raises(TypeError):
        r.yaml_documents("t.sh")
    with pytest.raises(AttributeError):
        r.warnings = ()  # type: ignore[misc]
