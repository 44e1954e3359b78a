"""The error trees drawn in ``sds_server.errors`` and ``sds_server.workload_api.errors`` match the classes."""

from __future__ import annotations

import inspect
import re
from types import ModuleType

import pytest

import sds_server.errors
import sds_server.workload_api.errors
from sds_server.errors import SdsConfigError, SdsError
from sds_server.workload_api.errors import ConfigError, WorkloadApiError


def _drawn(module: ModuleType) -> dict[str, str | None]:
    """``{class: parent}`` as the docstring's tree draws it (indentation = depth)."""
    tree = (module.__doc__ or "").split("Tree::", 1)[1].split("\n\n")[1]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        m = re.match(r"^( *)(?:[│ ]*[├└]── )?(\w+)", line)
        assert m, line
        depth = len(line) - len(line.lstrip(" │├└─"))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[m.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, m.group(2)))
    return parents


@pytest.mark.parametrize("module", [sds_server.errors, sds_server.workload_api.errors])
def test_docstring_tree_matches_the_classes(module: ModuleType) -> None:
    drawn = _drawn(module)
    defined = {
        name: cls
        for name, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Exception) and cls.__module__ == module.__name__
    }
    assert set(defined) <= set(drawn), "every class is drawn"
    for name, parent in drawn.items():
        if name in defined:
            expected = defined[name].__bases__[0].__name__
            assert parent == (None if expected == "Exception" else expected), name


def test_workload_api_errors_are_sds_errors() -> None:
    assert issubclass(WorkloadApiError, SdsError)


def test_config_errors_carry_problems_like_spec_error() -> None:
    one = SdsConfigError("listen: 'x': a rule")
    assert one.problems == ["listen: 'x': a rule"]
    assert str(one) == "listen: 'x': a rule"
    two = SdsConfigError(["a: 1: r", "b: 2: s"])
    assert two.problems == ["a: 1: r", "b: 2: s"]
    assert str(two) == "a: 1: r\nb: 2: s"
    cfg = ConfigError(["a: 1: r"], "wl.yaml")
    assert cfg.problems == ["a: 1: r"]
    assert str(cfg) == "wl.yaml: a: 1: r"
