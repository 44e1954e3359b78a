"""What the demo prints: numbered progress lines, ✓/✗ check lines with evidence, the artifact list.

Output is for people (stdout); structured logs stay on stderr via structlog. Check lines have a fixed
shape that tests parse: ``  ✓ <check> — <evidence>`` or ``  ✗ <check> — <evidence>``
(check names never contain " — ").
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

OK = "✓"
FAIL = "✗"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    evidence: str

    def line(self) -> str:
        return f"  {OK if self.ok else FAIL} {self.name} — {self.evidence}"


@dataclass(slots=True)
class Reporter:
    """Prints progress and checks as they happen (flushing, so a pipe sees them live)."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    checks: list[Check] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _step: int = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, text: str) -> None:
        self._step += 1
        self.say(f"[{self._step}] {text}  (+{self.elapsed():.1f}s)")

    def detail(self, text: str) -> None:
        self.say(f"      {text}")

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def check(self, name: str, ok: bool, evidence: str) -> None:
        c = Check(name, ok, evidence)
        self.checks.append(c)
        self.say(c.line())

    @property
    def all_passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def summary(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        verdict = "all checks passed" if not failed else f"{len(failed)} check(s) FAILED"
        passed = len(self.checks) - len(failed)
        return f"{passed}/{len(self.checks)} checks passed — {verdict} in {self.elapsed():.1f}s"
