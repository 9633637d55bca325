"""What the Kubernetes client costs the image and each process: installed size, import time, RSS after import.

Not a test: it prints figures and asserts nothing. It measures whatever is installed in the running interpreter's
environment, so the same script compares two clients by running it in two virtualenvs (docs/install.md, "Which
Kubernetes client"). Run from the repository root:

    .venv/bin/python bench/client_footprint.py --rounds 9          # pykube-ng (the client datamover uses)
    OLD/.venv/bin/python bench/client_footprint.py --client kubernetes --rounds 9  # OLD: a checkout on kubernetes

Installed size: the files each distribution's RECORD lists, for the client plus every distribution that only it
pulls in (the closure of datamover's requirements with the client, minus the closure without it). Import time and
RSS: each round is a fresh `python` child that imports one module and reports the wall time of that import and its
VmRSS/VmHWM afterwards (rounds interleaved across modules, medians printed). The child's bytecode caches are warm,
as they are in the image (every `.pyc` is compiled at build time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
MODULES = {
    "controller": "datamover.controller.main",
    "worker": "datamover.worker.main",
}
CHILD = """
import json, sys, time
started = time.perf_counter()
__import__(sys.argv[1])
took = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kib = lambda key: int(status[key].split()[0])
print(json.dumps({"seconds": took, "rss": kib("VmRSS") * 1024, "hwm": kib("VmHWM") * 1024}))
"""


def requirements(name: str) -> set[str]:
    """The distributions `name` needs when installed without extras (markers evaluated here)."""
    needed: set[str] = set()
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            needed.add(canonicalize_name(requirement.name))
    return needed


def closure(roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(metadata.PackageNotFoundError):  # an optional one not installed
            todo.extend(requirements(name))
    return seen


def installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def sizes(client: str) -> tuple[dict[str, int], int]:
    """The client's own size and that of each distribution only it brings, and the whole environment's size."""
    ours = requirements("datamover")
    only = closure(ours) - closure(ours - {canonicalize_name(client)})
    everything = sum(installed_bytes(d.metadata["Name"]) for d in metadata.distributions())
    return {name: installed_bytes(name) for name in sorted(only)}, everything


def measure(module: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, module], check=True, capture_output=True, text=True,
                          cwd=REPO)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", default="pykube-ng", help="the client's distribution name (default pykube-ng)")
    parser.add_argument("--rounds", type=int, default=7, help="fresh processes per module (default 7)")
    args = parser.parse_args()
    own, everything = sizes(args.client)
    mb = 1e6
    print(f"installed: {args.client} and what only it needs: {sum(own.values()) / mb:.1f} MB "
          f"(of {everything / mb:.0f} MB in this environment)")
    for name, size in sorted(own.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24} {size / mb:6.1f} MB")
    modules = {"client": args.client.replace("-ng", "").replace("-", "_"), **MODULES}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in modules}
    for _ in range(args.rounds):
        for label, module in modules.items():
            runs[label].append(measure(module))
    print(f"import, median of {args.rounds} fresh processes (warm bytecode caches):")
    for label, module in modules.items():
        seconds = statistics.median(r["seconds"] for r in runs[label])
        rss = statistics.median(r["rss"] for r in runs[label])
        hwm = statistics.median(r["hwm"] for r in runs[label])
        print(f"  {label:<10} import {module:<26} {seconds:5.2f} s   RSS {rss / mb:5.1f} MB (peak {hwm / mb:5.1f} MB)")


if __name__ == "__main__":
    main()
