"""`kubectl-datamover` (run as `kubectl datamover ...`): a job's live progress per worker, abort, its report, retry.

kubectl finds any executable named `kubectl-<name>` on PATH and runs it for `kubectl <name>`; the console script is
installed with the package (krew-style name, no krew needed). It reads the current kubeconfig and context (or
--kubeconfig, --context, -n) like kubectl does, and reads and patches MigrationJobs: what the RBAC of a user who
may `kubectl get` and `kubectl patch` them allows. `report` also reads the report's store, with the credentials of
the Secret the job names for it (so the user needs `get` on that Secret), or the ambient ones when it names none.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

from datamover import kubeapi
from datamover.api import (
    GROUP,
    KIND,
    VERSION,
    Location,
    MigrationSpec,
    MigrationStatus,
    WorkerReport,
    human_bytes,
    job_plan,
    progress_status,
    worker_reports,
)
from datamover.backends import open_store
from datamover.engine import Plan
from datamover.engine.report import ACTIONS, FAILED, failed_keys, read_report
from datamover.locations import store_config

BAR_WIDTH = 30


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


def _api(args: argparse.Namespace) -> tuple[kubeapi.Client, str]:
    """The API client and namespace for the kubeconfig and context kubectl would use (else the pod's own)."""
    config = kubeapi.load_config(args.kubeconfig, args.context)
    return kubeapi.Client(config), args.namespace or kubeapi.context_namespace(config) or "default"


def _get(api: kubeapi.Client, namespace: str, name: str) -> Mapping[str, Any]:
    return api.get(kubeapi.MIGRATION_JOBS, namespace, name)


def _updates(api: kubeapi.Client, namespace: str, name: str) -> Iterator[Mapping[str, Any]]:
    """The MigrationJob now, then each change of it, until it is gone."""
    return api.follow(kubeapi.MIGRATION_JOBS, namespace, name)


def status(api: kubeapi.Client, namespace: str, name: str, *, follow: bool, out: TextIO) -> int:
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


def abort(api: kubeapi.Client, namespace: str, name: str, *, wait: float | None, out: TextIO) -> int:
    """Set spec.abort; with `wait`, wait up to that many seconds for a final phase and print it."""
    api.patch(kubeapi.MIGRATION_JOBS, namespace, name, {"spec": {"abort": True}}, content_type=kubeapi.MERGE_PATCH)
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


def render_report(name: str, location: str, lines: Sequence[Mapping[str, Any]], *, limit: int) -> str:
    """What `kubectl datamover report` prints: each worker's last summary, then the keys whose last line failed."""
    summaries: dict[int, Mapping[str, Any]] = {}
    for line in lines:
        if line.get("record") == "summary":
            summaries[int(line["worker"])] = line  # a later run of the same worker replaces an earlier one
    out = [f"report of {name}: {location}"]
    if not lines:
        return "\n".join([*out, "  no report lines yet (the workers write a chunk every few seconds)"])
    for worker in sorted(summaries):
        summary = summaries[worker]
        counts = ", ".join(f"{count} {action}" for action, count in summary["counts"].items()) or "no objects"
        lost = "" if summary["complete"] else f" ({summary['linesDropped']} line(s) not written: incomplete)"
        out.append(f"  worker {worker:<3} {counts}{lost}")
    failed = failed_keys(lines, (FAILED,))
    last = {str(line["key"]): line for line in lines if line.get("record") == "object"}
    out.append(f"  {len(failed)} failed key(s)" + (":" if failed else ""))
    for key in failed[:limit]:
        out.append(f"    {key}  {last[key].get('errorCode', '')}: {last[key].get('error', '')}")
    if len(failed) > limit:
        out.append(f"    ... and {len(failed) - limit} more (--limit)")
    return "\n".join(out)


def _secret(api: kubeapi.Client, namespace: str, name: str | None) -> dict[str, str]:
    """A Secret's keys, decoded; empty for no Secret (the ambient credentials then)."""
    if name is None:
        return {}
    secret = api.get(kubeapi.SECRETS, namespace, name)
    return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}


def report(api: kubeapi.Client, namespace: str, name: str, *, limit: int, out: TextIO) -> int:
    body = _get(api, namespace, name)
    spec = MigrationSpec.from_spec(body["spec"])
    location = spec.report_location(namespace, name, body["metadata"]["uid"])
    if location is None:
        print(f"Error: {name} has no spec.report", file=sys.stderr)
        return 1
    owner = spec.report.location or spec.destination
    store = open_store(store_config(location, _secret(api, namespace, owner.secret_name)))
    lines = list(read_report(store, location.prefix))
    out.write(render_report(name, f"{location.describe()}, prefix {location.prefix}", lines, limit=limit) + "\n")
    return 0


def _location_spec(location: Location, secret_name: str | None) -> dict[str, Any]:
    """A Location as spec writes it (the inverse of Location.from_spec)."""
    raw: dict[str, Any] = {"type": location.type.value, "bucket": location.bucket, "prefix": location.prefix,
                           "addressingStyle": location.addressing_style,
                           "insecureSkipTLSVerify": location.insecure_skip_tls_verify}
    optional = {"endpoint": location.endpoint, "region": location.region}
    raw.update({name: value for name, value in optional.items() if value})
    if location.account_name:
        raw["azureBlob"] = {"accountName": location.account_name}
    if location.project:
        raw["gcs"] = {"project": location.project}
    if secret_name:
        raw["credentialsSecretRef"] = {"name": secret_name}
    return raw


def retry_job(body: Mapping[str, Any], name: str, actions: Sequence[str]) -> dict[str, Any]:
    """A new MigrationJob `name`: `body`'s spec, moving only the keys of its report with `actions` (spec.keysFrom)."""
    meta = body["metadata"]
    spec = MigrationSpec.from_spec(body["spec"])
    location = spec.report_location(meta["namespace"], meta["name"], meta["uid"])
    if location is None:
        raise ValueError(f"{meta['name']} has no spec.report, so there is no list of failed keys to retry")
    owner = spec.report.location or spec.destination
    new_spec = {key: value for key, value in body["spec"].items() if key not in ("abort", "suspend", "keysFrom")}
    # The report's keys were selected by the filter's time bounds once already; keysFrom cannot take them (a key
    # looked up by name has no listing time), so they go. Patterns and sizes stay (they are checked again).
    if "filter" in new_spec:
        new_spec["filter"] = {key: value for key, value in new_spec["filter"].items()
                              if key not in ("modifiedAfter", "modifiedBefore")}
    new_spec["keysFrom"] = {"format": "report", "location": _location_spec(location, owner.secret_name),
                            "actions": list(actions)}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": name, "namespace": meta["namespace"],
                         "annotations": {"datamover.io/retry-of": f"{meta['name']}/{meta['uid']}"}},
            "spec": new_spec}


def retry(api: kubeapi.Client, namespace: str, name: str, *, actions: Sequence[str], out: TextIO) -> int:
    """Create NAME-retry-<n> (the first n not taken) from NAME's report; refused while NAME still runs."""
    body = _get(api, namespace, name)
    current = MigrationStatus.of(body)
    if not current.final:
        print(f"Error: {name} has not ended (phase {current.phase.value if current.phase else 'none'}): its report "
              f"is not final yet", file=sys.stderr)
        return 1
    listed = api.list(kubeapi.MIGRATION_JOBS, namespace)
    taken = {item["metadata"]["name"] for item in listed["items"]}
    number = next(n for n in range(1, len(taken) + 2) if f"{name}-retry-{n}" not in taken)
    try:
        job = retry_job(body, f"{name}-retry-{number}", actions)
    except ValueError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    api.create(kubeapi.MIGRATION_JOBS, namespace, job)
    out.write(f"migrationjob.datamover.io/{job['metadata']['name']} created (keys of {name}'s report with action "
              f"{', '.join(actions)})\n")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="kubectl datamover", description=__doc__.splitlines()[0])
    # As with kubectl, -n, --kubeconfig and --context may come before or after the command (`status NAME -n ns`):
    # each command takes them too, and SUPPRESS keeps a command's absent option from hiding one given before it.
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument("-n", "--namespace", default=default,
                            help="the MigrationJob's namespace (default: the context's)")
        target.add_argument("--kubeconfig", default=default,
                            help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
        target.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", parents=[common], help="progress of a MigrationJob, overall and per worker")
    show.add_argument("name")
    show.add_argument("-w", "--watch", action="store_true", help="print again on every change until it ends")
    stop = commands.add_parser("abort", parents=[common], help="stop a MigrationJob cleanly (sets spec.abort: true)")
    stop.add_argument("name")
    stop.add_argument("--wait", type=float, metavar="SECONDS", nargs="?", const=300.0,
                      help="wait for the final phase (aborted or cancelled), up to SECONDS (default 300)")
    summary = commands.add_parser("report", parents=[common],
                                  help="a MigrationJob's report: each worker's summary and the failed keys")
    summary.add_argument("name")
    summary.add_argument("--limit", type=int, default=100, help="failed keys to print at most (default 100)")
    again = commands.add_parser("retry", parents=[common],
                                help="create NAME-retry-<n>: NAME's spec, moving only the keys its report says failed")
    again.add_argument("name")
    again.add_argument("--action", dest="actions", action="append", choices=ACTIONS,
                       help="retry the keys whose last report line has this action (repeatable; default: failed)")
    args = parser.parse_args(argv)
    try:
        api, namespace = _api(args)
    except kubeapi.ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    try:
        if args.command == "status":
            return status(api, namespace, args.name, follow=args.watch, out=out)
        if args.command == "report":
            return report(api, namespace, args.name, limit=args.limit, out=out)
        if args.command == "retry":
            return retry(api, namespace, args.name, actions=args.actions or [FAILED], out=out)
        return abort(api, namespace, args.name, wait=args.wait, out=out)
    except kubeapi.ApiError as error:
        if error.status == 404:
            print(f"Error: migrationjob.datamover.io {args.name!r} not found in namespace {namespace!r}",
                  file=sys.stderr)
            return 1
        if error.status == 422:  # refused by the CRD's rules, e.g. the job has already ended
            print(f"Error: the API server refused it: {error.message}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())
