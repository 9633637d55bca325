"""`make demo` on a short dataset: it must end 0 and print the final phases and the proof of cleanup."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.ground.demo", "--small", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    final = re.search(r"^DEMO RESULT: (.*)$", result.stdout, re.MULTILINE)
    assert final, result.stdout[-4000:]
    assert "gallery=succeeded" in final.group(1)
    assert "archive=aborted" in final.group(1)
    assert "open-uploads=0" in final.group(1) and "rclone-gallery=clean" in final.group(1)
    assert "rclone-archive-copied=clean" in final.group(1)
    assert "kubectl patch mj archive" in result.stdout
    # Nothing it started is left running.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
