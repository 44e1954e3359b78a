"""A short temporary directory: Unix socket paths are limited to 107 bytes and pytest's tmp_path is long."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def short_dir(prefix: str = "mb-") -> Iterator[Path]:
    """A fresh directory under /tmp, removed with everything in it on exit."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
