"""`make demo`'s scenario on a short dataset, on the session's ground: it must end 0 and print the final phases and
the proof of cleanup.

It runs in this process on the session's node and chart, not as `python -m tests.ground.demo` (which starts a
ground of its own): one real node per host at a time, and the session's already holds the host.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.ground import demo
from tests.ground.controlplane import ControlPlane
from tests.ground.node import Node
from tests.ground.stack import OperatorRelease, Stack


def test_demo_runs_end_to_end_and_cleans_up(control_plane: ControlPlane, node: Node, operator: OperatorRelease,
                                            cloud_a: Any, cloud_b: Any, capsys: pytest.CaptureFixture[str]) -> None:
    stack = Stack(control_plane, node, cloud_a, cloud_b, operator)
    try:
        code = demo.run(stack, **demo.SMALL)
    finally:
        control_plane.kubectl("delete", "namespace", demo.NAMESPACE, "--wait=false", check=False)
    out = capsys.readouterr().out
    assert code == 0, out[-4000:]
    final = re.search(r"^DEMO RESULT: (.*)$", out, re.MULTILINE)
    assert final, out[-4000:]
    assert "gallery=succeeded" in final.group(1)
    assert "archive=aborted" in final.group(1)
    assert "open-uploads=0" in final.group(1) and "rclone-gallery=clean" in final.group(1)
    assert "rclone-archive-copied=clean" in final.group(1)
    assert "kubectl patch mj archive" in out
