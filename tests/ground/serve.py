"""Keep a local control plane and node agent running for manual use (kubectl) or for `make e2e` against them.

    .venv/bin/python -m tests.ground.serve --workdir /tmp/ground
    KUBECONFIG=/tmp/ground/controlplane/admin.kubeconfig kubectl get nodes
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.ground.controlplane import start_control_plane
from tests.ground.nodeagent import start_node_agent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ground.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with start_control_plane(args.workdir / "controlplane") as cp, \
            start_node_agent(cp, args.workdir / "node-agent", python_bin_dir=Path(sys.executable).parent):
        print(f"ready: KUBECONFIG={cp.admin_kubeconfig}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
