"""Operator scale on the local ground: N tiny MigrationJobs created at once, with a concurrency limit.

For each N it prints create -> first status, create -> running (admitted jobs), create -> final (p50/p95/max, seconds),
slot freed -> next queued job admitted, the operator's CPU seconds and peak RSS, and its API requests (counted from
the API server's audit log, which records the operator's ServiceAccount only). A last phase measures what waiting
costs: one long job holds the only slot while N jobs sit queued, and the operator's requests in a quiet window are
divided by the queued jobs. A benchmark, not a test: it asserts nothing about time, it measures.

    .venv/bin/python bench/operator_scale.py [--jobs 50 200] [--limit 20] [--queued 200] [--window 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamover import kubeapi
from tests.ground.fleet import FINAL_PHASES, FleetWatch, Timeline, count_requests, create_all
from tests.ground.stack import Stack, local_stack

MiB = 1024 * 1024


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _row(label: str, values: list[float]) -> str:
    if not values:
        return f"  {label:<34} (none)"
    return (f"  {label:<34} p50 {statistics.median(values):6.2f}  p95 {_pct(values, 0.95):6.2f}  "
            f"max {max(values):6.2f}  (n={len(values)})")


def _operator_usage(stack: Stack) -> tuple[float, int]:
    """CPU seconds used so far and peak RSS (KiB) of the operator's process (its container's, on the node)."""
    (status,) = stack.operator.pod()["status"]["containerStatuses"]
    pid = stack.node.task_pids()[status["containerID"].removeprefix("containerd://")]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return cpu, hwm


def _restart_operator(stack: Stack, api: kubeapi.Client, namespace: str, limit: int) -> None:
    """`helm upgrade` to `limit` (a restart), and wait until it answers a job: its liveness endpoint is up before its
    watches are."""
    stack.operator.upgrade("--set", f"maxConcurrentJobs={limit}")
    warmup = _job(stack, "warm-up", "fleet", "none/", namespace)
    warmup["spec"]["abort"] = True
    with FleetWatch(api, namespace) as fleet:
        create_all(api, namespace, [warmup], fleet)
        fleet.wait(["warm-up"], lambda t: t.phase in FINAL_PHASES, "answered", timeout=120)


def _job(stack: Stack, name: str, bucket: str, prefix: str, dst: str) -> dict[str, Any]:
    def side(server: Any, bucket: str, secret: str) -> dict[str, Any]:
        return {"bucket": bucket, "prefix": prefix, "endpoint": server.endpoint, "region": server.region,
                "addressingStyle": "path", "credentialsSecretRef": {"name": secret}}

    return {"apiVersion": "datamover.io/v1alpha1", "kind": "MigrationJob", "metadata": {"name": name},
            "spec": {"source": side(stack.cloud_a, bucket, "cloud-a"),
                     "destination": side(stack.cloud_b, dst, "cloud-b"), "concurrency": 2}}


def _slot_handover(timelines: dict[str, Timeline]) -> list[float]:
    """For each job admitted after another ended: seconds from the latest end before it to its admission."""
    ends = sorted(t.final for t in timelines.values() if t.final is not None)
    handovers = []
    for timeline in timelines.values():
        if timeline.admitted is None:
            continue
        before = [end for end in ends if end <= timeline.admitted]
        if before and timeline.admitted - timeline.created > 1.0:  # not one of the first, admitted on creation
            handovers.append(timeline.admitted - before[-1])
    return handovers


def _operator_handover(logs: str) -> tuple[list[float], list[float]]:
    """From the operator's log, for each job that waited in the queue: the slot freed before its admission -> its slot
    granted, and granted -> its WorkersStarting written; so a slow handover shows whether the queue or the API
    requests were slow."""
    freed: list[float] = []
    queued: set[str] = set()
    granted: dict[str, float] = {}
    to_grant: list[float] = []
    to_start: list[float] = []
    for line in logs.splitlines():
        if not line[:4].isdigit():
            continue
        when = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        job = next((f.split("=", 1)[1] for f in line.split() if f.startswith("job=")), "")
        if "event=slot-freed" in line:
            freed.append(when)
        elif "event=phase" in line and "reason=Queued" in line:
            queued.add(job)
        elif "event=slot-granted" in line and job in queued:
            granted[job] = when
            last_freed = max((f for f in freed if f <= when), default=None)
            if last_freed is not None:
                to_grant.append(when - last_freed)
        elif "event=phase" in line and "reason=WorkersStarting" in line and job in granted:
            to_start.append(when - granted[job])
    return to_grant, to_start


def _namespace(stack: Stack, namespace: str) -> None:
    """A namespace with both clouds' Secrets, and a destination bucket of the same name."""
    stack.control_plane.kubectl("create", "namespace", namespace)
    for secret, server in (("cloud-a", stack.cloud_a), ("cloud-b", stack.cloud_b)):
        stack.control_plane.kubectl("create", "secret", "generic", secret, "-n", namespace,
                                    f"--from-literal=accessKeyId={server.access_key}",
                                    f"--from-literal=secretAccessKey={server.secret_key}")
    stack.cloud_b.client().create_bucket(Bucket=namespace)


def fleet_run(stack: Stack, api: kubeapi.Client, namespace: str, jobs: int, limit: int) -> None:
    _namespace(stack, namespace)
    _restart_operator(stack, api, namespace, limit)
    cpu0, _ = _operator_usage(stack)
    wall0 = time.time()
    manifests = [_job(stack, f"j-{i:03d}", "fleet", f"p{i:03d}/", namespace) for i in range(jobs)]
    with FleetWatch(api, namespace) as fleet:
        create_all(api, namespace, manifests, fleet)
        names = [m["metadata"]["name"] for m in manifests]
        everything = fleet.wait(names, lambda t: t.phase in FINAL_PHASES, "finished", timeout=3600)
        timelines = {name: everything[name] for name in names}
        max_holding = fleet.max_holding
    wall1 = time.time()
    cpu1, hwm = _operator_usage(stack)
    requests = count_requests(stack.control_plane.audit_log or Path("/nonexistent"), wall0, wall1)
    total = sum(requests.values())
    slot_seconds = sum((t.final or 0) - (t.admitted or t.final or 0) for t in timelines.values())
    phases = {p: sum(1 for t in timelines.values() if t.phase == p) for p in FINAL_PHASES}
    print(f"\n{jobs} jobs at once, limit {limit} (3 objects each): {phases}, at most {max_holding} held a slot")
    print(_row("create -> first status (s)", [t.first_status - t.created for t in timelines.values()
                                              if t.first_status is not None]))
    print(_row("create -> running (s)", [t.running - t.created for t in timelines.values() if t.running]))
    print(_row("create -> final (s)", [t.final - t.created for t in timelines.values() if t.final]))
    print(_row("slot freed -> next admitted (s)", _slot_handover(timelines)))
    freed, granted = _operator_handover(stack.operator.logs(tail=-1))
    print(_row("  in the operator: freed -> granted", freed))
    print(_row("  in the operator: granted -> started", granted))
    print(f"  operator: {cpu1 - cpu0:.1f} CPU s over {wall1 - wall0:.0f} s wall, peak RSS {hwm / 1024:.0f} MiB")
    print(f"  operator API requests: {total} in all, {total / jobs:.1f} per job, "
          f"{total / max(slot_seconds, 1e-9):.2f} per running job per second")
    top = sorted(requests.items(), key=lambda kv: -kv[1])[:6]
    print("  by kind: " + ", ".join(f"{k} {v}" for k, v in top))


def queued_cost(stack: Stack, api: kubeapi.Client, namespace: str, queued: int, window: float) -> None:
    """One job holds the only slot (its worker frozen with SIGSTOP: it reports nothing, so what the window counts is
    the queue's own cost); `queued` jobs wait. Requests in a quiet window, per queued job."""
    _namespace(stack, namespace)
    _restart_operator(stack, api, namespace, 1)
    blocker = _job(stack, "blocker", "slow", "", namespace)
    blocker["spec"]["concurrency"] = 1
    manifests = [blocker] + [_job(stack, f"q-{i:03d}", "fleet", f"p{i:03d}/", namespace) for i in range(queued)]
    with FleetWatch(api, namespace) as fleet:
        create_all(api, namespace, manifests[:1], fleet)
        fleet.wait(["blocker"], lambda t: t.running is not None, "running", timeout=120)
        frozen = _containers(stack, namespace, "blocker")
        for container in frozen:
            stack.node.signal_container(container, "SIGSTOP")
        create_all(api, namespace, manifests[1:], fleet)
        fleet.wait([m["metadata"]["name"] for m in manifests[1:]], lambda t: "Queued" in t.reasons, "queued",
                   timeout=120)
        time.sleep(QUEUE_SETTLE_SECONDS)  # let the last place updates go out: the window is the steady state
        start = time.time()
        time.sleep(window)
        end = time.time()
        still_blocked = fleet.snapshot()["blocker"].phase == "running"
        for container in frozen:
            stack.node.signal_container(container, "SIGCONT")
    requests = count_requests(stack.control_plane.audit_log or Path("/nonexistent"), start, end)
    total = sum(requests.values())
    print(f"\n{queued} jobs queued behind one running job with a frozen worker (limit 1), {window:.0f} s window"
          f"{'' if still_blocked and frozen else ' (WARNING: the blocker was not frozen throughout)'}:")
    print(f"  operator API requests: {total} ({total / window:.2f}/s), {total / window / queued:.4f}/s per queued job"
          + (": " + ", ".join(f"{k} {v}" for k, v in sorted(requests.items())) if requests else ""))
    stack.control_plane.kubectl("delete", "namespace", namespace, "--wait=false")


QUEUE_SETTLE_SECONDS = 12.0


def _containers(stack: Stack, namespace: str, job: str) -> list[str]:
    """The container IDs of a MigrationJob's running worker pods."""
    pods = json.loads(stack.control_plane.kubectl("get", "pods", "-n", namespace, "-l",
                                                  f"datamover.io/migrationjob={job}", "-o", "json").stdout)["items"]
    return [s["containerID"] for p in pods for s in p["status"].get("containerStatuses", [])
            if s.get("containerID") and "running" in s.get("state", {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--queued", type=int, default=200)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="datamover-bench-") as tmp, local_stack(Path(tmp)) as stack:
        api = kubeapi.Client(kubeapi.load_config(str(stack.control_plane.admin_kubeconfig)))
        s3 = stack.cloud_a.client()
        s3.create_bucket(Bucket="fleet")
        for i in range(max([*args.jobs, args.queued])):
            for j in range(3):
                s3.put_object(Bucket="fleet", Key=f"p{i:03d}/obj-{j}", Body=os.urandom(1024 * (1 + j)))
        s3.create_bucket(Bucket="slow")
        chunk = os.urandom(MiB)
        for i in range(8):
            s3.put_object(Bucket="slow", Key=f"big-{i}", Body=chunk * 256)
        load = os.getloadavg()
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for n in args.jobs:
            fleet_run(stack, api, f"scale-{n}", n, args.limit)
        queued_cost(stack, api, "queued", args.queued, args.window)


if __name__ == "__main__":
    main()
