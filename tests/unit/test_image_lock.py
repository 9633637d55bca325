"""The image installs only what tools/image/requirements.lock pins: every runtime dependency must be in it, or the
image's operator dies at import (as it did when wcmatch came in)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].replace("_", "-").lower()


def test_every_runtime_dependency_is_locked_for_the_image() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = {_name(line) for line in (REPO / "tools" / "image" / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    assert {_name(d) for d in dependencies} - locked == set(), "run: python tools/image/build.py --lock"
