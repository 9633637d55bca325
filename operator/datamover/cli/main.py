"""`kubectl-datamover` (run as `kubectl datamover ...`): a job's live progress per worker, and abort.

kubectl finds any executable named `kubectl-<name>` on PATH and runs it for `kubectl <name>`; the console script is
installed with the package (krew-style name, no krew needed). It reads the current kubeconfig and context (or
--kubeconfig, --context, -n) like kubectl does, and only reads and patches MigrationJobs: what the RBAC of a user who
may `kubectl get` and `kubectl patch` them allows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO, cast

import kubernetes
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from datamover.api import (
    GROUP,
    PLURAL,
    VERSION,
    MigrationStatus,
    WorkerReport,
    human_bytes,
    job_plan,
    progress_status,
    worker_reports,
)
from datamover.engine import Plan

BAR_WIDTH = 30
MERGE_PATCH = "application/merge-patch+json"


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[#########.........]` for done of total (empty when the total is not known yet)."""
    filled = width * min(done, total) // total if total > 0 else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _worker_line(index: int, report: WorkerReport) -> str:
    done = report.bytes_migrated + report.bytes_skipped + report.bytes_planned
    objects = report.objects_migrated + report.objects_skipped + report.objects_planned
    listing = "" if report.listing_done or report.state.final else ", listing"
    failed = f", {report.objects_failed} failed" if report.objects_failed else ""
    rate = f"  {human_bytes(report.bytes_per_second)}/s" if not report.state.final else ""
    return (f"  worker {index:<3} {bar(done, report.bytes_total)} {report.state.value:<10} "
            f"{objects}/{report.objects_total} objects, {human_bytes(done)}/{human_bytes(report.bytes_total)}"
            f"{failed}{listing}{rate}")


def _requests(counts: Mapping[str, Mapping[str, int]]) -> str:
    return "; ".join(f"{side} " + ", ".join(f"{kind} {n}" for kind, n in sorted(by_kind.items()))
                     for side, by_kind in sorted(counts.items(), reverse=True) if by_kind) or "none"


def _plan_lines(plan: Plan) -> list[str]:
    """spec.mode plan: what a run would do (status.plan), in the order a person prices it."""
    def amount(label: str, objects: int, size: int) -> str:
        return f"    {label:<20} {objects:>8} objects  {human_bytes(size):>9}"
    mechanisms = ", ".join(f"{name} {a.objects}" for name, a in sorted(plan.by_mechanism.items()) if a.objects)
    return [
        "  plan (a run would do this; the plan wrote nothing):",
        amount("copy", plan.copy.objects, plan.copy.bytes) + (f"  ({mechanisms})" if mechanisms else ""),
        amount("skip as identical", plan.identical.objects, plan.identical.bytes),
        amount("delete from source", plan.delete_from_source.objects, plan.delete_from_source.bytes),
        amount("excluded by filter", plan.excluded.objects, plan.excluded.bytes),
        f"    run requests         {_requests(plan.run_requests)}",
        f"    the plan's requests  {_requests(plan.plan_requests)}",
    ]


def render(body: Mapping[str, Any]) -> str:
    """What `kubectl datamover status` prints for one MigrationJob."""
    meta = body["metadata"]
    status = MigrationStatus.of(body)
    reports = worker_reports(body)
    progress = progress_status(reports)
    phase = status.phase.value if status.phase else "(no status yet)"
    lines = [f"{meta['namespace']}/{meta['name']}: {phase}" + (f" ({status.reason})" if status.reason else "")]
    if status.message:
        lines.append(f"  {status.message}")
    done_bytes = progress["bytesMigrated"] + progress["bytesSkipped"] + progress["bytesPlanned"]
    live = "  ".join(part for part in (
        f"{progress['rate']}, {progress['objectsPerSecond']:g} objects/s" if progress["rate"] else "",
        f"ETA {progress['eta']}" if progress["eta"] else "",
        f"last progress {progress['lastProgressTime']}" if progress.get("lastProgressTime") else "",
    ) if part)
    lines.append(f"  overall    {bar(done_bytes, progress['bytesTotal'])} {progress['percent']:>4}  "
                 f"{progress['objects']} objects, {progress['bytes']}" + (f"  {live}" if live else ""))
    lines.extend(_worker_line(index, reports[index]) for index in sorted(reports))
    plan = job_plan(reports)
    if plan is not None:
        lines.extend(_plan_lines(plan))
    if progress["objectsFailed"]:
        lines.append(f"  {progress['objectsFailed']} object(s) failed: see the workers' messages and Events "
                     f"(kubectl describe mj {meta['name']} -n {meta['namespace']})")
    return "\n".join(lines)


def _api(args: argparse.Namespace) -> tuple[client.CustomObjectsApi, str]:
    """The API client and namespace for the kubeconfig and context kubectl would use."""
    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig, context=args.context)
        _, current = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig)
        context_namespace = (current or {}).get("context", {}).get("namespace")
    except kubernetes.config.ConfigException:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        context_namespace = None
    return client.CustomObjectsApi(), args.namespace or context_namespace or "default"


def _get(api: client.CustomObjectsApi, namespace: str, name: str) -> Mapping[str, Any]:
    return cast(Mapping[str, Any], api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))


def _updates(api: client.CustomObjectsApi, namespace: str, name: str) -> Iterator[Mapping[str, Any]]:
    """The MigrationJob now, then each change of it, until it is gone."""
    body = _get(api, namespace, name)
    yield body
    version = body["metadata"]["resourceVersion"]
    while True:
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
            field_selector=f"metadata.name={name}", resource_version=version, timeout_seconds=60)
        for event in stream:
            if event["type"] == "DELETED":
                return
            body = event["object"]
            version = body["metadata"]["resourceVersion"]
            yield body


def status(api: client.CustomObjectsApi, namespace: str, name: str, *, follow: bool, out: TextIO) -> int:
    if not follow:
        out.write(render(_get(api, namespace, name)) + "\n")
        return 0
    shown = ""
    for body in _updates(api, namespace, name):
        text = render(body)
        if text != shown:
            out.write(("\n" if shown else "") + text + "\n")
            out.flush()
            shown = text
        if MigrationStatus.of(body).final:
            return 0
    out.write(f"{namespace}/{name} was deleted\n")
    return 1


def abort(api: client.CustomObjectsApi, namespace: str, name: str, *, wait: float | None, out: TextIO) -> int:
    """Set spec.abort; with `wait`, wait up to that many seconds for a final phase and print it."""
    api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"abort": True}},
                                       _content_type=MERGE_PATCH)
    out.write(f"migrationjob.datamover.io/{name} abort requested\n")
    if wait is None:
        return 0
    deadline = time.monotonic() + wait
    for body in _updates(api, namespace, name):
        current = MigrationStatus.of(body)
        if current.final and current.phase is not None:
            out.write(f"migrationjob.datamover.io/{name} {current.phase.value}\n")
            return 0
        if time.monotonic() > deadline:
            break
    out.write(f"migrationjob.datamover.io/{name} not final after {wait:.0f}s\n")
    return 1


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="kubectl datamover", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--namespace", help="the MigrationJob's namespace (default: the context's)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="progress of a MigrationJob, overall and per worker")
    show.add_argument("name")
    show.add_argument("-w", "--watch", action="store_true", help="print again on every change until it ends")
    stop = commands.add_parser("abort", help="stop a MigrationJob cleanly (sets spec.abort: true)")
    stop.add_argument("name")
    stop.add_argument("--wait", type=float, metavar="SECONDS", nargs="?", const=300.0,
                      help="wait for the final phase (aborted or cancelled), up to SECONDS (default 300)")
    args = parser.parse_args(argv)
    api, namespace = _api(args)
    try:
        if args.command == "status":
            return status(api, namespace, args.name, follow=args.watch, out=out)
        return abort(api, namespace, args.name, wait=args.wait, out=out)
    except ApiException as error:
        if error.status == 404:
            print(f"Error: migrationjob.datamover.io {args.name!r} not found in namespace {namespace!r}",
                  file=sys.stderr)
            return 1
        if error.status == 422:  # refused by the CRD's rules, e.g. the job has already ended
            try:
                why = json.loads(error.body or "{}").get("message", error.body)
            except (TypeError, ValueError):
                why = error.body
            print(f"Error: the API server refused it: {why}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())
