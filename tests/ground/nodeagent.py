"""A stand-in kubelet (and scheduler) so that real batch/v1 Jobs run their pods as local processes on the test ground.

The test ground has a real kube-apiserver, etcd and kube-controller-manager but no kubelet, no scheduler and no
container runtime. This agent fills exactly that gap and nothing more: it registers one Node and keeps it alive, binds
unscheduled pods to it, runs each pod's single container `command` + `args` as a local process, and reports what
happened through `pods/status`, so that the *real* Job controller counts successes and failures, applies
`backoffLimit` and removes its tracking finalizers as it would in a cluster. Like a kubelet it resolves `env`/`envFrom`
(Secrets, ConfigMaps, fieldRefs, `$(VAR)`), honours `restartPolicy` and `activeDeadlineSeconds`, and on deletion sends
SIGTERM, waits the grace period, sends SIGKILL and then confirms the deletion.

What it deliberately does not do: images (a container must name its `command`; the project venv's bin dir comes first
on PATH), volumes and mounts, init or sidecar containers, probes, resource limits, networking (every pod is
127.0.0.1), `kubectl logs`/`exec` (read `NodeAgent.pod_log` instead), node selectors, affinity and taints (every
schedulable pod lands here). Pods get a kubeconfig with a TokenRequest token of their ServiceAccount in KUBECONFIG
instead of the in-cluster token mount, so RBAC is enforced on everything they do.

It is used by the pytest plugin `plugin_nodeagent` and can be used on its own (`start_node_agent`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import kubernetes.client
import kubernetes.config

log = logging.getLogger("datamover.nodeagent")
_AGENT_IDS = itertools.count(1)

Json = dict[str, Any]

DEFAULT_NODE_NAME = "datamover-test-node"
POD_IP = "127.0.0.1"

# Kubelet-like timings, shortened where a test would otherwise wait for nothing.
HEARTBEAT_SECONDS = 10.0  # kubelet renews its Lease every 10 s; the node controller waits 40-50 s before "Unknown".
LEASE_DURATION_SECONDS = 40
CONFIG_RETRY_SECONDS = 1.0  # a kubelet retries CreateContainerConfigError on its sync loop; we poll a little faster.
RESTART_BACKOFF_FIRST = 1.0  # kubelet starts at 10 s and caps at 5 min; tests cannot afford that.
RESTART_BACKOFF_MAX = 8.0
WATCH_TIMEOUT_SECONDS = 5  # server-side watch timeout: also bounds how long stop() waits for the watch thread.
DEFAULT_GRACE_SECONDS = 30
# A TokenRequest for exactly 3607 s bound to a pod is what the kubelet asks for; an API server with the default
# --service-account-extend-token-expiration=true then issues a token valid for a year, so we never need to refresh it.
TOKEN_EXPIRATION_SECONDS = 3607


class ControlPlaneLike(Protocol):
    """What the agent needs from the control plane (the `ControlPlane` of `tests.ground.controlplane` fits)."""

    @property
    def server(self) -> str: ...

    @property
    def ca_file(self) -> Path: ...

    @property
    def admin_kubeconfig(self) -> Path: ...


class ApiError(Exception):
    """A non-2xx answer of the API server, with its status code and `Status` body."""

    def __init__(self, status: int, reason: str, body: Json) -> None:
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(f"{status} {reason}: {body.get('message', '')}")


class _Api:
    """JSON in, JSON out over the kubernetes client's authenticated connection pool.

    The generated client's models validate and reshape responses (and trip on some, like Binding); a kubelet stand-in
    needs exact control over patch types and status fields, so it speaks plain JSON and keeps the client only for
    its kubeconfig handling (client certificates or tokens) and its pooled TLS connections.
    """

    def __init__(self, kubeconfig: Path) -> None:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
        # Every pod worker holds a connection now and then, and the watch holds one for good.
        configuration.connection_pool_maxsize = 64
        self._client = kubernetes.client.ApiClient(configuration=configuration)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _send(self, method: str, path: str, query: Mapping[str, str] | None, body: Any, content_type: str,
              timeout: float | tuple[float, float]) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self._client.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()), header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        return self._client.call_api(*request, _request_timeout=timeout)

    def call(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None,
             content_type: str = "application/json", timeout: float = 30.0) -> Json:
        response = self._send(method, path, query, body, content_type, timeout)
        data = response.read()
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"message": data.decode("utf-8", "replace")}
        if not 200 <= response.status <= 299:
            raise ApiError(response.status, str(response.reason), parsed if isinstance(parsed, dict) else {})
        return parsed if isinstance(parsed, dict) else {"items": parsed}

    def watch(self, path: str, query: Mapping[str, str]) -> Iterator[Json]:
        """Yield watch events until the server ends the stream (it does after `timeoutSeconds`)."""
        response = self._send("GET", path, {**query, "watch": "true"}, None, "application/json",
                              (10.0, float(WATCH_TIMEOUT_SECONDS) + 30.0))
        raw = response.response
        try:
            if not 200 <= response.status <= 299:
                data = response.read()
                raise ApiError(response.status, str(response.reason), json.loads(data) if data else {})
            for line in raw:
                if line.strip():
                    yield json.loads(line)
        finally:
            raw.release_conn()

    def get(self, path: str) -> Json | None:
        try:
            return self.call("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _pod_path(namespace: str, name: str, sub: str = "") -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}{sub}"


def _is_terminal(pod: Json) -> bool:
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


class ContainerConfigError(Exception):
    """The container cannot be configured yet (missing Secret/ConfigMap/key): the pod waits, as with a kubelet."""


class ContainerStartError(Exception):
    """The container's process cannot start (executable not found): a failed run, restarted per restartPolicy."""


class ContainerHasNoCommand(Exception):
    """The container relies on its image's entrypoint, which a node without images cannot know: the pod fails."""


# ---------------------------------------------------------------------------------------------------------------------
# Environment, as the kubelet builds it


_VAR_REF = re.compile(r"\$\$|\$\(([^)]*)\)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_MAP_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names are replaced, unknown ones kept verbatim, `$$` escapes `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, value)


def _field_value(pod: Json, path: str) -> str:
    metadata = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        # The agent is the node and the pod network at once: the values it is about to report.
        "status.podIP": POD_IP,
        "status.hostIP": POD_IP,
        "status.podIPs": POD_IP,
        "status.hostIPs": POD_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _MAP_FIELD.match(path)
    if match:
        return str(metadata.get(match.group(1), {}).get(match.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")


class _Sources:
    """Secrets and ConfigMaps of one namespace, each read once per container start."""

    def __init__(self, api: _Api, namespace: str) -> None:
        self._api = api
        self._namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str) -> dict[str, str] | None:
        key = (kind, name)
        if key not in self._cache:
            resource = "secrets" if kind == "Secret" else "configmaps"
            obj = self._api.get(f"/api/v1/namespaces/{quote(self._namespace)}/{resource}/{quote(name)}")
            if obj is None:
                self._cache[key] = None
            elif kind == "Secret":
                self._cache[key] = {
                    k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()
                }
            else:
                values = dict(obj.get("data") or {})
                for k, v in (obj.get("binaryData") or {}).items():
                    values[k] = base64.b64decode(v).decode("utf-8", "replace")
                self._cache[key] = values
        return self._cache[key]

    def key(self, kind: str, ref: Json) -> str | None:
        """The value of `ref.key`, None if optional and missing; raises the kubelet's messages otherwise."""
        name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional", False))
        values = self.data(kind, name)
        if values is None:
            if optional:
                return None
            raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
        if key not in values:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in {kind} {self._namespace}/{name}")
        return values[key]


def resolve_env(api: _Api, pod: Json, container: Json) -> dict[str, str]:
    """The container's environment from `envFrom` then `env`, in the kubelet's order and with its error messages."""
    namespace = pod["metadata"]["namespace"]
    sources = _Sources(api, namespace)
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if field not in source:
                continue
            ref = source[field]
            values = sources.data(kind, ref.get("name", ""))
            if values is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
            for key, item in values.items():
                # A kubelet skips keys that are no valid variable names (and emits an Event); so do we.
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = item
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            # Expansion sees only variables defined before this one (envFrom included), exactly as in a kubelet.
            env[name] = expand(var.get("value", ""), env)
            continue
        value_from = var["valueFrom"]
        value: str | None
        if "fieldRef" in value_from:
            value = _field_value(pod, value_from["fieldRef"].get("fieldPath", ""))
        elif "secretKeyRef" in value_from:
            value = sources.key("Secret", value_from["secretKeyRef"])
        elif "configMapKeyRef" in value_from:
            value = sources.key("ConfigMap", value_from["configMapKeyRef"])
        else:
            raise ContainerConfigError(f"env {name}: valueFrom {sorted(value_from)} is not supported by the node agent")
        if value is not None:
            env[name] = value
    return env


# ---------------------------------------------------------------------------------------------------------------------
# The agent


@dataclasses.dataclass
class PodRecord:
    """One pod the agent took on: what a failing test's report shows."""

    namespace: str
    name: str
    uid: str
    log_path: Path
    started: float  # wall clock when the agent took the pod on
    summary: str = "accepted"  # last container state, e.g. "terminated exitCode=1 (Error)"


class NodeAgent:
    """Registers a Node, binds pending pods to it and runs them as local processes; see the module docstring."""

    def __init__(self, control_plane: ControlPlaneLike, workdir: Path, *, python_bin_dir: Path,
                 node_name: str = DEFAULT_NODE_NAME) -> None:
        self.node_name = node_name
        self.workdir = workdir
        self.python_bin_dir = python_bin_dir
        self._server = control_plane.server
        self._ca_file = Path(control_plane.ca_file)
        self._admin_kubeconfig = Path(control_plane.admin_kubeconfig)
        self._api: _Api | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[str, _PodWorker] = {}  # pod uid -> worker, while the pod needs one
        self._done: set[str] = set()  # pod uids this agent finished: never run twice, whatever a stale event says
        self._binding: set[str] = set()  # pod uids with a Binding sent, so a burst of events binds once
        self._records: list[PodRecord] = []
        self._threads: list[threading.Thread] = []
        self._node_uid = ""
        self._server_version = "v0.0.0"
        self._log_handler: logging.Handler | None = None
        # One logger per agent, so two agents in one process (a restart test) keep separate agent.log files.
        self.log = log.getChild(f"{node_name}.{next(_AGENT_IDS)}")

    # -- public --------------------------------------------------------------------------------------------------

    @property
    def api(self) -> _Api:
        if self._api is None:
            raise RuntimeError("the node agent is not started")
        return self._api

    def log_path(self, namespace: str, name: str) -> Path:
        return self.workdir / "pods" / f"{namespace}_{name}.log"

    def pod_log(self, namespace: str, name: str) -> str:
        """Everything the pod's process(es) wrote to stdout and stderr so far (restarts append); '' if none."""
        path = self.log_path(namespace, name)
        return path.read_text(errors="replace") if path.exists() else ""

    def started_pods(self) -> list[PodRecord]:
        """The pods this agent took on, in order (a snapshot)."""
        with self._lock:
            return list(self._records)

    def start(self) -> None:
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.workdir / "agent.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
        self.log.addHandler(self._log_handler)
        self.log.setLevel(logging.INFO)
        self._api = _Api(self._admin_kubeconfig)
        self._server_version = str(self.api.call("GET", "/version").get("gitVersion", "v0.0.0"))
        self._register_node()
        self._renew_lease()
        for target, name in ((self._heartbeat_loop, "nodeagent-heartbeat"), (self._watch_loop, "nodeagent-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.log.info("event=agent_started node=%s workdir=%s", self.node_name, self.workdir)

    def stop(self) -> None:
        """Stop the loops and kill every process the agent started; pods are left as the API last saw them."""
        self._stop.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.kill_now()
        for worker in workers:
            worker.join(timeout=10)
        for thread in self._threads:
            thread.join(timeout=WATCH_TIMEOUT_SECONDS + 5)
        if self._api is not None:
            self._api.close()
        self.log.info("event=agent_stopped node=%s", self.node_name)
        if self._log_handler is not None:
            self.log.removeHandler(self._log_handler)
            self._log_handler.close()

    # -- node ----------------------------------------------------------------------------------------------------

    def _node_status(self) -> Json:
        now = _now()
        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{_memory_kib()}Ki",
            "pods": "110",
            "ephemeral-storage": f"{shutil.disk_usage(self.workdir).total // 1024}Ki",
        }
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": "datamover node agent",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}
                for t, s, r in conditions
            ],
            "addresses": [{"type": "InternalIP", "address": POD_IP}, {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                "osImage": "datamover node agent", "containerRuntimeVersion": "local-process://1",
                "kubeletVersion": self._server_version, "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {},
        }
        try:
            created = self.api.call("POST", "/api/v1/nodes", body=node)
        except ApiError as error:
            if error.status != 409:
                raise
            created = self.api.call("GET", f"/api/v1/nodes/{quote(self.node_name)}")
        self._node_uid = created["metadata"]["uid"]
        # Status is ignored on create: it goes through the status subresource, as the kubelet's does.
        self._patch_node_status(transitions=True)

    def _patch_node_status(self, *, transitions: bool) -> None:
        status = self._node_status()
        if not transitions:
            # A heartbeat: only lastHeartbeatTime moves, so the conditions keep their lastTransitionTime.
            for condition in status["conditions"]:
                del condition["lastTransitionTime"]
        self.api.call("PATCH", f"/api/v1/nodes/{quote(self.node_name)}/status", body={"status": status},
                      content_type="application/strategic-merge-patch+json")

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{quote(self.node_name)}"
        try:
            self.api.call("PATCH", path, body={"spec": {"renewTime": _now_micro(), "holderIdentity": self.node_name}},
                          content_type="application/merge-patch+json")
            return
        except ApiError as error:
            if error.status != 404:
                raise
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.node_name,
                "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                     "uid": self._node_uid}],
            },
            "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                     "renewTime": _now_micro()},
        }
        try:
            self.api.call("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body=lease)
        except ApiError as error:
            # kube-node-lease is made by the API server at start-up; until then the Node status is the heartbeat.
            if error.status not in (404, 409):
                raise

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._renew_lease()
                self._patch_node_status(transitions=False)
            except Exception:  # the next beat retries; a dead heartbeat thread would make the node NotReady.
                self.log.exception("event=heartbeat_failed node=%s", self.node_name)

    # -- pods ----------------------------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.api.call("GET", "/api/v1/pods")
                for pod in listed.get("items") or []:
                    self._dispatch("ADDED", pod)
                version = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    query = {"resourceVersion": version, "allowWatchBookmarks": "true",
                             "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS)}
                    for event in self.api.watch("/api/v1/pods", query):
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), str(obj.get("reason", "")), obj)
                        version = obj.get("metadata", {}).get("resourceVersion", version)
                        if event.get("type") != "BOOKMARK":
                            self._dispatch(str(event.get("type")), obj)
                        if self._stop.is_set():
                            break
            except ApiError as error:
                if error.status != 410:  # 410 Gone: our resourceVersion is too old, re-list (routine)
                    self.log.warning("event=watch_error error=%r", error)
                    self._stop.wait(1.0)
            except Exception as error:  # the API server restarting, a broken stream: re-list after a pause
                if not self._stop.is_set():
                    self.log.warning("event=watch_error error=%r", error)
                    self._stop.wait(1.0)

    def _dispatch(self, kind: str, pod: Json) -> None:
        metadata = pod.get("metadata", {})
        uid = metadata.get("uid", "")
        spec = pod.get("spec", {})
        node = spec.get("nodeName")
        if kind == "DELETED":
            with self._lock:
                worker = self._workers.get(uid)
                self._binding.discard(uid)
            if worker is not None:
                worker.gone()
            return
        if not node:
            self._maybe_bind(pod)
            return
        if node != self.node_name:
            return
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None:
                if uid in self._done or self._stop.is_set():
                    return
                if _is_terminal(pod):
                    # Finished before (maybe by an earlier agent): never run again. A kubelet only has to finish a
                    # graceful deletion that started after the pod ended; the API server does that itself for
                    # terminal pods (it sets the grace period to 0), so there is nothing left to do here.
                    self._done.add(uid)
                    return
                record = PodRecord(metadata["namespace"], metadata["name"], uid,
                                   self.log_path(metadata["namespace"], metadata["name"]), time.time())
                worker = _PodWorker(self, pod, record)
                self._workers[uid] = worker
                self._records.append(record)
                worker.start()
                return
        worker.update(pod)

    def _maybe_bind(self, pod: Json) -> None:
        metadata, spec = pod["metadata"], pod.get("spec", {})
        uid = metadata.get("uid", "")
        if (
            metadata.get("deletionTimestamp")
            or _is_terminal(pod)
            or spec.get("schedulingGates")
            # Pods for another scheduler are not ours to place; the default one is absent, so we stand in for it.
            or spec.get("schedulerName", "default-scheduler") != "default-scheduler"
        ):
            return
        with self._lock:
            if uid in self._binding:
                return
            self._binding.add(uid)
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": metadata["name"], "namespace": metadata["namespace"], "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.api.call("POST", _pod_path(metadata["namespace"], metadata["name"], "/binding"), body=binding)
            self.log.info("event=pod_bound pod=%s/%s uid=%s node=%s", metadata["namespace"], metadata["name"], uid,
                          self.node_name)
        except ApiError as error:
            if error.status not in (404, 409):  # gone, or already bound: nothing to retry
                self.log.warning("event=bind_failed pod=%s/%s error=%r", metadata["namespace"], metadata["name"], error)
                with self._lock:
                    self._binding.discard(uid)

    def _worker_finished(self, uid: str, *, final: bool) -> None:
        with self._lock:
            self._workers.pop(uid, None)
            if final:
                self._done.add(uid)

    def _credentials(self, pod: Json, pod_dir: Path) -> Path | None:
        """A kubeconfig holding a pod-bound token of the pod's ServiceAccount, or None if automount is off."""
        metadata, spec = pod["metadata"], pod.get("spec", {})
        namespace = metadata["namespace"]
        account = spec.get("serviceAccountName") or "default"
        automount = spec.get("automountServiceAccountToken")
        sa_path = f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(account)}"
        if automount is None:
            service_account = self.api.get(sa_path)
            if service_account is None:
                raise ContainerConfigError(f'serviceaccount "{account}" not found')
            automount = service_account.get("automountServiceAccountToken")
        if automount is False:
            return None
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [],  # empty: the API server's own audiences, like the kubelet's kube-api-access volume
                "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                                   "uid": metadata["uid"]},
            },
        }
        try:
            answer = self.api.call("POST", f"{sa_path}/token", body=request)
        except ApiError as error:
            raise ContainerConfigError(f"token request for serviceaccount {namespace}/{account} failed: "
                                       f"{error}") from error
        token = answer["status"]["token"]
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ground", "cluster": {"server": self._server,
                                                        "certificate-authority": str(self._ca_file)}}],
            "users": [{"name": f"{namespace}:{account}", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "ground", "user": f"{namespace}:{account}",
                                                     "namespace": namespace}}],
            "current-context": "pod",
        }
        path = pod_dir / "kubeconfig"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(kubeconfig, indent=2))  # JSON is YAML: every kubeconfig reader takes it
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    def _base_env(self, pod: Json, pod_dir: Path) -> dict[str, str]:
        """What an image would provide: PATH with the project venv first, a HOME, a HOSTNAME."""
        host_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        return {
            "PATH": f"{self.python_bin_dir}{os.pathsep}{host_path}",
            "HOME": str(pod_dir),
            "HOSTNAME": pod["metadata"]["name"],
            "LANG": "C.UTF-8",
            # Python images usually set this; without it a pod's prints reach its log only at exit.
            "PYTHONUNBUFFERED": "1",
        }


def _memory_kib() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 4 * 1024 * 1024


class _PodWorker(threading.Thread):
    """Runs one pod from acceptance to a terminal phase (or to its deletion), like a kubelet pod worker."""

    def __init__(self, agent: NodeAgent, pod: Json, record: PodRecord) -> None:
        metadata = pod["metadata"]
        super().__init__(name=f"pod-{metadata['namespace']}/{metadata['name']}", daemon=True)
        self.agent = agent
        self.log = agent.log
        self.record = record
        self.namespace: str = metadata["namespace"]
        self.pod_name: str = metadata["name"]
        self.uid: str = metadata["uid"]
        self._pod = pod
        self._changed = threading.Event()
        self._lock = threading.Lock()
        # Latches: once seen they stay, whatever order later events arrive in.
        self._deletion_grace: float | None = None
        self._gone = False
        self._kill_now = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._pod_dir = agent.workdir / "pods" / f"{self.namespace}_{self.pod_name}"
        # Status this worker reports; it owns the pod's status while it runs.
        self._start_time = _now()
        self._conditions: dict[str, tuple[str, str, str | None]] = {}  # type -> (status, transition time, reason)
        self._restart_count = 0
        self._state: Json = {"waiting": {"reason": "ContainerCreating"}}
        self._last_state: Json = {}
        self._container_id = ""
        self._phase = "Pending"
        self._reason: str | None = None
        self._message: str | None = None
        self._deadline_hit = False  # activeDeadlineSeconds ran out while the process ran

    # -- signals from the agent ---------------------------------------------------------------------------------

    def update(self, pod: Json) -> None:
        with self._lock:
            self._pod = pod
            self._latch(pod)
        self._changed.set()

    def gone(self) -> None:
        with self._lock:
            self._gone = True
        self._changed.set()

    def kill_now(self) -> None:
        with self._lock:
            self._kill_now = True
            proc = self._proc
        if proc is not None:
            _kill_group(proc, signal.SIGKILL)
        self._changed.set()

    def _latch(self, pod: Json) -> None:
        metadata = pod.get("metadata", {})
        if metadata.get("deletionTimestamp"):
            grace = float(metadata.get("deletionGracePeriodSeconds") or 0)
            # A second, shorter delete shortens the grace period, as with a kubelet; a longer one does not extend it.
            self._deletion_grace = grace if self._deletion_grace is None else min(grace, self._deletion_grace)

    def _pod_snapshot(self) -> Json:
        with self._lock:
            return self._pod

    def _wait(self, seconds: float) -> None:
        """Sleep until something about the pod changed, or `seconds` passed."""
        if self._changed.wait(seconds):
            self._changed.clear()

    def _pause(self, seconds: float) -> None:
        """Sleep `seconds` unless the pod is deleted, its deadline passes or the agent stops. Our own status patches
        come back as pod updates; returning on every one would turn a retry into a busy loop."""
        until = time.monotonic() + seconds
        while time.monotonic() < until and not (self._stopping or self._deleting or self._deadline_passed()):
            self._wait(until - time.monotonic())

    @property
    def _stopping(self) -> bool:
        return self._kill_now or self.agent._stop.is_set()

    @property
    def _deleting(self) -> bool:
        return self._gone or self._deletion_grace is not None

    # -- the pod's life -----------------------------------------------------------------------------------------

    def run(self) -> None:
        final = False
        try:
            final = self._run()
        except Exception as error:
            # A bug or a lasting API failure. The pod is not taken on again: re-running a process that may already
            # have run is worse than a stuck pod, which the test's report names.
            final = True
            self.log.exception("event=pod_worker_crashed pod=%s/%s uid=%s", self.namespace, self.pod_name, self.uid)
            self.record.summary = f"node agent error: {error!r}"
        finally:
            if self._proc is not None and self._proc.poll() is None:
                _kill_group(self._proc, signal.SIGKILL)
                self._proc.wait()
            self.agent._worker_finished(self.uid, final=final)

    def _run(self) -> bool:
        """Returns True when the pod is finished for good (terminal or deleted), False when the agent stopped."""
        api = self.agent.api
        # The event that created this worker may be stale; the API's current object decides.
        for attempt in range(10):
            try:
                fresh = api.get(_pod_path(self.namespace, self.pod_name))
                break
            except ApiError:
                if attempt == 9 or self._stopping:
                    raise
                time.sleep(0.5)
        if fresh is None or fresh["metadata"]["uid"] != self.uid:
            return True
        self.update(fresh)
        if _is_terminal(fresh):
            return True
        spec = fresh.get("spec", {})
        status = fresh.get("status", {})
        self._start_time = status.get("startTime") or _now()
        for condition in status.get("conditions") or []:
            self._conditions[condition["type"]] = (condition["status"], condition.get("lastTransitionTime") or _now(),
                                                   condition.get("reason"))
        self._pod_dir.mkdir(parents=True, exist_ok=True)
        containers = spec.get("containers") or []
        container = containers[0]
        restart_policy = spec.get("restartPolicy", "Always")

        previous = next((c for c in status.get("containerStatuses") or [] if c.get("name") == container["name"]), None)
        if previous is not None:
            self._restart_count = int(previous.get("restartCount") or 0)
            if previous.get("lastState"):
                self._last_state = {k: v for k, v in previous["lastState"].items() if v}
            if "running" in (previous.get("state") or {}):
                # An earlier agent started this container and took the process with it when it stopped: a kubelet
                # would find the container dead, so do we.
                started = previous["state"]["running"].get("startedAt") or self._start_time
                lost = {"exitCode": 137, "reason": "Error", "startedAt": started, "finishedAt": _now(),
                        "message": "process lost: the node agent was restarted"}
                if restart_policy == "Never":
                    return self._finish(lost)
                self._last_state = {"terminated": lost}
                self._restart_count += 1
            elif "terminated" in (previous.get("state") or {}) and restart_policy == "Never":
                # It ran to the end but the phase was never reported (an agent stopped in between): report, not rerun.
                return self._finish(previous["state"]["terminated"])

        self._set_condition("PodScheduled", "True")
        if len(containers) != 1 or spec.get("initContainers") or spec.get("ephemeralContainers"):
            return self._finish(None, reason="UnsupportedPod",
                                message="the datamover node agent runs exactly one container per pod, no init or "
                                        "sidecar containers")
        self._set_condition("Initialized", "True")
        self._set_condition("ContainersReady", "False", "ContainersNotReady")
        self._set_condition("Ready", "False", "ContainersNotReady")
        self._report()

        backoff = RESTART_BACKOFF_FIRST
        while True:
            if self._stopping:
                return False
            if self._deleting:
                return self._finish(None)
            if self._deadline_passed():
                return self._finish(None, reason="DeadlineExceeded",
                                    message="Pod was active on the node longer than the specified deadline")
            try:
                terminated = self._run_container(self._pod_snapshot(), container)
            except ContainerConfigError as error:
                self._state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
                self.record.summary = f"waiting CreateContainerConfigError: {error}"
                self._report()
                self._pause(CONFIG_RETRY_SECONDS)
                continue
            except ContainerHasNoCommand as error:
                self._state = {"waiting": {"reason": "ContainerHasNoCommand", "message": str(error)}}
                return self._finish(None, reason="ContainerHasNoCommand", message=str(error))
            except ApiError as error:  # the API server hiccuped while we read Secrets or asked for a token: retry
                self.log.warning("event=container_setup_failed pod=%s/%s error=%r", self.namespace, self.pod_name,
                                 error)
                self._pause(CONFIG_RETRY_SECONDS)
                continue
            if terminated is None:  # the agent is stopping: leave the pod as the API last saw it
                return False
            code = int(terminated["exitCode"])
            if self._deleting or self._deadline_hit:
                return self._finish(terminated, reason="DeadlineExceeded" if self._deadline_hit else None,
                                    message="Pod was active on the node longer than the specified deadline"
                                    if self._deadline_hit else None)
            if restart_policy == "Never" or (restart_policy == "OnFailure" and code == 0):
                return self._finish(terminated)
            # OnFailure (or Always): restart in place, as a kubelet does, after a back-off that doubles.
            self._last_state = {"terminated": terminated}
            self._restart_count += 1
            self._state = {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": f"back-off {backoff:g}s restarting failed container="
                                                  f"{container['name']} pod={self.pod_name}_{self.namespace}"}}
            self._set_condition("ContainersReady", "False", "ContainersNotReady")
            self._set_condition("Ready", "False", "ContainersNotReady")
            self._phase = "Running"
            self._report()
            self._pause(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    def _deadline_passed(self) -> bool:
        deadline = self._pod_snapshot().get("spec", {}).get("activeDeadlineSeconds")
        started = _parse_time(self._start_time)
        return deadline is not None and started is not None and time.time() - started >= float(deadline)

    def _run_container(self, pod: Json, container: Json) -> Json | None:
        """One run of the container; its `terminated` state, or None if the agent is stopping."""
        # The pod's own variables first: they may fail (missing Secret) and must not cost a token each retry.
        pod_env = resolve_env(self.agent.api, pod, container)
        env = self.agent._base_env(pod, self._pod_dir)
        kubeconfig = self.agent._credentials(pod, self._pod_dir)
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        env.update(pod_env)  # as in a container, the pod's env wins over what the "image" set
        started_at = _now()
        try:
            argv = self._argv(container, env)
        except ContainerStartError as error:
            return self._start_failed(started_at, str(error))
        workdir = container.get("workingDir")
        cwd = workdir if workdir and Path(workdir).is_dir() else str(self._pod_dir)
        log_path = self.record.log_path
        with open(log_path, "ab") as log_file:
            try:
                with self._lock:
                    if self._kill_now:
                        return None
                    # A new session, so the whole process tree can be signalled at once like a container's cgroup.
                    self._proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
                                                  stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as error:
                return self._start_failed(started_at, f"failed to start {argv[0]!r}: {error}")
        proc = self._proc
        assert proc is not None
        self._container_id = f"local-process://{proc.pid}"
        self._state = {"running": {"startedAt": started_at}}
        self._phase = "Running"
        self._set_condition("ContainersReady", "True")
        self._set_condition("Ready", "True")
        self.record.summary = f"running pid={proc.pid}"
        self._report()
        self.log.info("event=container_started pod=%s/%s uid=%s pid=%d argv=%s", self.namespace, self.pod_name,
                      self.uid, proc.pid, argv)

        term_sent: float | None = None
        kill_sent = False
        while proc.poll() is None:
            if self._stopping:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
                return None
            grace: float | None = None
            if self._gone:
                grace = 0.0  # the object is gone (force deletion): nothing to wait for
            elif self._deletion_grace is not None:
                grace = self._deletion_grace
            elif self._deadline_passed():
                self._deadline_hit = True
                grace = float(pod.get("spec", {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
            if grace is not None:
                if term_sent is None:
                    term_sent = time.monotonic()
                    self.log.info("event=container_sigterm pod=%s/%s pid=%d grace=%s", self.namespace,
                                  self.pod_name, proc.pid, grace)
                    _kill_group(proc, signal.SIGTERM)
                if not kill_sent and time.monotonic() - term_sent >= grace:
                    self.log.info("event=container_sigkill pod=%s/%s pid=%d", self.namespace, self.pod_name, proc.pid)
                    _kill_group(proc, signal.SIGKILL)
                    kill_sent = True
            self._wait(0.1)
        if self._stopping:
            # stop() may have SIGKILLed the process itself: that is the agent going away, not the container failing.
            return None
        code = proc.returncode
        # The container is its whole process group: whatever the main process left behind goes with it.
        _kill_group(proc, signal.SIGKILL)
        exit_code = code if code >= 0 else 128 - code
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "startedAt": started_at, "finishedAt": _now(), "containerID": self._container_id}
        self.log.info("event=container_exited pod=%s/%s uid=%s exit_code=%d", self.namespace, self.pod_name,
                      self.uid, exit_code)
        return terminated

    def _argv(self, container: Json, env: Mapping[str, str]) -> list[str]:
        command = [expand(part, env) for part in container.get("command") or []]
        args = [expand(part, env) for part in container.get("args") or []]
        if not command:
            raise ContainerHasNoCommand(
                f"container {container.get('name')!r} has no command: the node agent runs local processes and cannot "
                f"know the entrypoint of image {container.get('image')!r}; set spec.containers[].command"
            )
        argv = command + args
        if "/" not in argv[0]:
            found = shutil.which(argv[0], path=env.get("PATH"))
            if found is None:
                raise ContainerStartError(f'exec: "{argv[0]}": executable file not found in $PATH')
            argv[0] = found
        return argv

    def _start_failed(self, started_at: str, message: str) -> Json:
        with open(self.record.log_path, "ab") as log_file:
            log_file.write(f"[node agent] {message}\n".encode())
        self.log.info("event=container_start_failed pod=%s/%s message=%s", self.namespace, self.pod_name, message)
        return {"exitCode": 128, "reason": "StartError", "message": message, "startedAt": started_at,
                "finishedAt": _now()}

    def _finish(self, terminated: Json | None, *, reason: str | None = None, message: str | None = None) -> bool:
        """Report the terminal phase, then complete a pending deletion; the pod is never run again."""
        if terminated is not None:
            self._state = {"terminated": terminated}
            succeeded = terminated["exitCode"] == 0 and reason is None
            self.record.summary = f"terminated exitCode={terminated['exitCode']} ({terminated['reason']})"
        else:
            # Never ran (deleted first, deadline, unsupported): Failed, like a kubelet marks a pod it gives up on.
            succeeded = False
            if "waiting" in self._state and reason is not None:
                self._state = {"waiting": {"reason": reason, "message": message or ""}}
            self.record.summary = f"failed before running: {reason or 'deleted'}"
        self._phase = "Succeeded" if succeeded else "Failed"
        self._reason, self._message = reason, message
        self.log.info("event=pod_finished pod=%s/%s uid=%s phase=%s reason=%s", self.namespace, self.pod_name,
                      self.uid, self._phase, reason)
        ready_reason = "PodCompleted" if succeeded else "PodFailed"
        self._set_condition("ContainersReady", "False", ready_reason)
        self._set_condition("Ready", "False", ready_reason)
        if not self._gone:
            self._report()
        if self._deleting and not self._gone:
            # The kubelet's last word on a pod: confirm the deletion with grace 0, for this very pod (uid).
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid}}
            try:
                self.agent.api.call("DELETE", _pod_path(self.namespace, self.pod_name), body=body)
            except ApiError as error:
                if error.status not in (404, 409):
                    raise
            self.log.info("event=pod_deleted pod=%s/%s uid=%s", self.namespace, self.pod_name, self.uid)
        return True

    # -- status ---------------------------------------------------------------------------------------------------

    def _set_condition(self, kind: str, status: str, reason: str | None = None) -> None:
        previous = self._conditions.get(kind)
        when = previous[1] if previous is not None and previous[0] == status else _now()
        self._conditions[kind] = (status, when, reason)

    def _report(self) -> None:
        """Patch the pod's status with everything this worker knows (strategic merge: other writers' conditions,
        like the controllers' DisruptionTarget, stay)."""
        pod = self._pod_snapshot()
        container = (pod.get("spec", {}).get("containers") or [{}])[0]
        state = {"waiting": None, "running": None, "terminated": None, **self._state}
        last_state = {"waiting": None, "running": None, "terminated": None, **self._last_state}
        running = "running" in self._state
        container_status = {
            "name": container.get("name", ""),
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": self._container_id or None,
            "ready": running,
            "started": running,
            "restartCount": self._restart_count,
            "state": state,
            "lastState": last_state,
        }
        status = {
            "phase": self._phase,
            "reason": self._reason,
            "message": self._message,
            "startTime": self._start_time,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "conditions": [
                {"type": kind, "status": value, "lastTransitionTime": when, "lastProbeTime": None, "reason": reason}
                for kind, (value, when, reason) in self._conditions.items()
            ],
            "containerStatuses": [container_status],
        }
        try:
            self.agent.api.call("PATCH", _pod_path(self.namespace, self.pod_name, "/status"), body={"status": status},
                                content_type="application/strategic-merge-patch+json")
        except ApiError as error:
            # 404: gone meanwhile, nothing to report to. Anything else is logged, not raised: the process must still
            # be supervised, and the next report carries the whole status again.
            if error.status != 404:
                self.log.warning("event=status_patch_failed pod=%s/%s error=%r", self.namespace, self.pod_name, error)


def _kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


@contextlib.contextmanager
def start_node_agent(control_plane: ControlPlaneLike, workdir: Path, *, python_bin_dir: Path,
                     node_name: str = DEFAULT_NODE_NAME) -> Iterator[NodeAgent]:
    """Run a node agent for the duration of the block; every process it started is killed on the way out."""
    agent = NodeAgent(control_plane, workdir, python_bin_dir=python_bin_dir, node_name=node_name)
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


__all__ = [
    "DEFAULT_NODE_NAME",
    "ApiError",
    "ControlPlaneLike",
    "NodeAgent",
    "PodRecord",
    "expand",
    "start_node_agent",
]
