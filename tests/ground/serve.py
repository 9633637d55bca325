"""Keep a local control plane and real node running for manual use (kubectl, helm) or for `make e2e` against them.

    sudo .venv/bin/python -m tests.ground.serve --workdir /tmp/ground
    KUBECONFIG=/tmp/ground/controlplane/admin.kubeconfig kubectl get nodes

It prints the kubeconfig and the node's bridge address (where MinIO must listen for the pods to reach it:
DATAMOVER_E2E_S3_HOST). Stop it with Ctrl-C or SIGTERM: the node's teardown then runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.ground import image
from tests.ground.controlplane import start_control_plane
from tests.ground.node import start_node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ground.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with start_control_plane(args.workdir / "controlplane") as cp, \
            start_node(cp, args.workdir / "node", images=[image.archive()]) as node:
        print(f"ready: KUBECONFIG={cp.admin_kubeconfig} DATAMOVER_E2E_S3_HOST={node.ip} "
              f"DATAMOVER_E2E_WORKER_IMAGE={image.IMAGE_NAME}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
