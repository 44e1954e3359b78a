"""``atomic_write``: content, mode from the first byte, no temp files left, old content kept on failure."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sds_server.files import atomic_write


def test_writes_content_with_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "svid.key"
    atomic_write(target, b"secret")
    assert target.read_bytes() == b"secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"bundle", 0o644)
    assert target.read_bytes() == b"bundle"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["svid.key"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "svid.pem"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes", 0o600)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svid.pem"]
