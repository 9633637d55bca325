"""The node agent proves itself against the real control plane: real Jobs, real RBAC, real deletions.

Each test would fail with a fake agent (nothing runs, or the Job controller sees nothing) or a fake control plane
(no Job controller, no RBAC, no TokenRequest): the assertions read what the real controllers and the API server did
and what the processes themselves printed.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from tests.ground.nodeagent import ControlPlaneLike, NodeAgent, start_node_agent

# Every test here needs the local node agent, so none runs under `make e2e` (a real cluster has kubelets instead).
pytestmark = [pytest.mark.ground, pytest.mark.local_processes]

Kubectl = Callable[..., CompletedProcess[str]]
Json = dict[str, Any]
IMAGE = "registry.invalid/never-pulled:1"  # the agent runs `command`; an image that cannot exist proves it


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace whose `default` ServiceAccount exists (pods are refused until the controller made it)."""
    name = f"na-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    _until(lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
           what=f"ServiceAccount {name}/default")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def _until(condition: Callable[[], Any], *, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)


def _apply(kubectl: Kubectl, *objects: Json) -> None:
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def _get(kubectl: Kubectl, *args: str) -> Json:
    result: Json = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return result


def _pod(namespace: str, name: str, script: str, *, args: tuple[str, ...] = (), **spec: Any) -> Json:
    """A pod whose single container runs `python -c script args...` with the venv's python."""
    container: Json = {"name": "main", "image": IMAGE, "command": ["python", "-c", textwrap.dedent(script)],
                       "args": list(args)}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **spec.pop("metadata", {})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def _wait_phase(kubectl: Kubectl, namespace: str, name: str, phase: str, timeout: int = 60) -> Json:
    kubectl("wait", f"--for=jsonpath={{.status.phase}}={phase}", f"pod/{name}", "-n", namespace,
            f"--timeout={timeout}s")
    return _get(kubectl, "pod", name, "-n", namespace)


def _terminated(pod: Json) -> Json:
    state: Json = pod["status"]["containerStatuses"][0]["state"]
    assert "terminated" in state, state
    terminated: Json = state["terminated"]
    return terminated


def _wait_log(agent: NodeAgent, namespace: str, name: str, text: str, timeout: float = 60.0) -> str:
    result: str = _until(lambda: text in agent.pod_log(namespace, name) and agent.pod_log(namespace, name),
                         what=f"{text!r} in the log of pod {namespace}/{name}", timeout=timeout)
    return result


def test_node_is_registered_ready_with_a_lease(kubectl: Kubectl, node_agent: NodeAgent) -> None:
    node = _get(kubectl, "node", node_agent.node_name)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["status"]["capacity"]["pods"] == "110"
    lease = _get(kubectl, "lease", node_agent.node_name, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == node_agent.node_name

    # A new Node is born with the not-ready taint (TaintNodesByCondition admission); the real node lifecycle
    # controller lifts it once it reads our Ready condition, and would put it back if our heartbeats stopped.
    def condition_taints() -> list[Json]:
        taints = _get(kubectl, "node", node_agent.node_name)["spec"].get("taints", [])
        return [t for t in taints if t["key"].startswith("node.kubernetes.io/")]

    _until(lambda: not condition_taints(), what="the node lifecycle controller to untaint the node")


def test_indexed_job_runs_each_index_and_completes(kubectl: Kubectl, node_agent: NodeAgent, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "indexed", "namespace": namespace},
        "spec": {
            "completions": 3,
            "parallelism": 3,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "main",
                        "image": IMAGE,
                        "command": ["python", "-c",
                                    "import os, sys; print(f'index={os.environ[\"JOB_COMPLETION_INDEX\"]} "
                                    "exe={sys.executable}')"],
                    }],
                },
            },
        },
    }
    _apply(kubectl, job)
    kubectl("wait", "--for=condition=complete", "job/indexed", "-n", namespace, "--timeout=120s")

    job_status = _get(kubectl, "job", "indexed", "-n", namespace)["status"]
    assert job_status["succeeded"] == 3
    assert job_status.get("completedIndexes") == "0-2"
    pods = _get(kubectl, "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=indexed")["items"]
    assert len(pods) == 3
    seen = set()
    for pod in pods:
        name = pod["metadata"]["name"]
        index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
        log = node_agent.pod_log(namespace, name)
        assert f"index={index} " in log, log  # the env var came from this very pod's annotation (fieldRef)
        # The process ran with the project venv's python, resolved through PATH.
        assert f"exe={Path(sys.executable).parent}/python" in log, log
        assert pod["spec"]["nodeName"] == node_agent.node_name
        assert pod["status"]["phase"] == "Succeeded"
        assert _terminated(pod)["exitCode"] == 0 and _terminated(pod)["reason"] == "Completed"
        # The Job controller saw the pod finish and released it.
        assert "batch.kubernetes.io/job-tracking" not in pod["metadata"].get("finalizers", [])
        seen.add(int(index))
    assert seen == {0, 1, 2}


def test_failing_pods_are_retried_until_backoff_limit(kubectl: Kubectl, node_agent: NodeAgent,
                                                      namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "failing", "namespace": namespace},
        "spec": {
            "backoffLimit": 2,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": IMAGE,
                "command": ["python", "-c", "print('attempt failing on purpose'); raise SystemExit(1)"],
            }]}},
        },
    }
    _apply(kubectl, job)
    # The Job controller waits 10 s, then 20 s, between failed pods.
    kubectl("wait", "--for=condition=failed", "job/failing", "-n", namespace, "--timeout=240s")

    job_status = _get(kubectl, "job", "failing", "-n", namespace)["status"]
    failed = next(c for c in job_status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "BackoffLimitExceeded"
    assert job_status["failed"] == 3
    pods = _get(kubectl, "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=failing")["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Failed"
        assert _terminated(pod)["exitCode"] == 1 and _terminated(pod)["reason"] == "Error"
        assert "attempt failing on purpose" in node_agent.pod_log(namespace, pod["metadata"]["name"])


def test_on_failure_restarts_in_place(kubectl: Kubectl, node_agent: NodeAgent, namespace: str,
                                      tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    script = """
        import pathlib, sys
        counter = pathlib.Path(sys.argv[1])
        attempt = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempt))
        print(f"attempt {attempt}")
        raise SystemExit(0 if attempt == 3 else 3)
    """
    _apply(kubectl, _pod(namespace, "flaky", script, args=(str(counter),), restartPolicy="OnFailure"))
    pod = _wait_phase(kubectl, namespace, "flaky", "Succeeded")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert _terminated(pod)["exitCode"] == 0
    assert node_agent.pod_log(namespace, "flaky").split() == ["attempt", "1", "attempt", "2", "attempt", "3"]


def test_service_account_rbac_is_enforced(kubectl: Kubectl, node_agent: NodeAgent, namespace: str) -> None:
    script = """
        import os
        import kubernetes
        from kubernetes.client.exceptions import ApiException
        kubernetes.config.load_config()
        try:
            cm = kubernetes.client.CoreV1Api().read_namespaced_config_map("settings", os.environ["NS"])
            print(f"status=200 colour={cm.data['colour']}")
        except ApiException as error:
            print(f"status={error.status} body={error.body}")
    """
    ns_env = {"env": [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}
    _apply(
        kubectl,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": namespace}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": namespace},
         "data": {"colour": "blue"}},
        _pod(namespace, "denied", script, serviceAccountName="reader", container=ns_env),
    )
    _wait_phase(kubectl, namespace, "denied", "Succeeded")
    log = node_agent.pod_log(namespace, "denied")
    assert "status=403" in log, log
    assert f"system:serviceaccount:{namespace}:reader" in log, log  # the pod spoke as its ServiceAccount

    _apply(
        kubectl,
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "read-settings", "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "reader-reads-settings", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-settings"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]},
    )
    # RBAC takes effect once the API server's authorizer cache has the binding: the same question, via `can-i`.
    _until(lambda: kubectl("auth", "can-i", "get", "configmaps", "-n", namespace,
                           f"--as=system:serviceaccount:{namespace}:reader", check=False).stdout.strip() == "yes",
           what="the RoleBinding to take effect")
    _apply(kubectl, _pod(namespace, "allowed", script, serviceAccountName="reader", container=ns_env))
    _wait_phase(kubectl, namespace, "allowed", "Succeeded")
    assert "status=200 colour=blue" in node_agent.pod_log(namespace, "allowed")


def test_env_resolves_like_a_kubelet(kubectl: Kubectl, node_agent: NodeAgent, namespace: str) -> None:
    script = """
        import json, os, sys
        names = ["PASSWORD", "MAYBE", "MODE", "POD_NAME", "POD_NAMESPACE", "POD_UID", "NODE_NAME", "SA_NAME",
                 "POD_IP", "HOST_IP", "APP", "NOTE", "GREETING", "S_password", "KUBECONFIG"]
        print(json.dumps({"env": {n: os.environ.get(n) for n in names}, "argv": sys.argv[1:]}))
    """

    def field(path: str) -> Json:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "mode"}}},
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_UID", **field("metadata.uid")},
        {"name": "NODE_NAME", **field("spec.nodeName")},
        {"name": "SA_NAME", **field("spec.serviceAccountName")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "HOST_IP", **field("status.hostIP")},
        {"name": "APP", **field("metadata.labels['app']")},
        {"name": "NOTE", **field("metadata.annotations['example.com/note']")},
        {"name": "GREETING", "value": "hello-$(POD_NAME)-$$(LITERAL)-$(UNDEFINED)"},
    ]
    _apply(
        kubectl,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": namespace},
         "stringData": {"password": "s3cr3t"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf", "namespace": namespace},
         "data": {"mode": "fast"}},
        _pod(namespace, "envy", script, args=("$(MODE)", "$(POD_NAMESPACE)"),
             metadata={"labels": {"app": "mover"}, "annotations": {"example.com/note": "noted"}},
             container={"env": env, "envFrom": [{"prefix": "S_", "secretRef": {"name": "creds"}}]}),
    )
    pod = _wait_phase(kubectl, namespace, "envy", "Succeeded")
    seen = json.loads(node_agent.pod_log(namespace, "envy").strip().splitlines()[-1])
    assert seen["argv"] == ["fast", namespace]
    kubeconfig = seen["env"].pop("KUBECONFIG")
    assert kubeconfig and Path(kubeconfig).is_file()
    assert seen["env"] == {
        "PASSWORD": "s3cr3t",
        "MAYBE": None,
        "MODE": "fast",
        "POD_NAME": "envy",
        "POD_NAMESPACE": namespace,
        "POD_UID": pod["metadata"]["uid"],
        "NODE_NAME": node_agent.node_name,
        "SA_NAME": "default",
        "POD_IP": pod["status"]["podIP"],
        "HOST_IP": pod["status"]["hostIP"],
        "APP": "mover",
        "NOTE": "noted",
        "GREETING": "hello-envy-$(LITERAL)-$(UNDEFINED)",
        "S_password": "s3cr3t",
    }


def test_missing_secret_waits_with_create_container_config_error(kubectl: Kubectl, node_agent: NodeAgent,
                                                                 namespace: str) -> None:
    env = {"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]}
    script = "import os; print('token=' + os.environ['TOKEN'])"
    _apply(kubectl, _pod(namespace, "patient", script, container=env, automountServiceAccountToken=False))

    def waiting() -> Json | None:
        pod = _get(kubectl, "pod", "patient", "-n", namespace)
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        state: Json | None = statuses[0].get("state", {}).get("waiting")
        return pod if state and state.get("reason") == "CreateContainerConfigError" else None

    pod = _until(waiting, what="CreateContainerConfigError")
    assert pod["status"]["phase"] == "Pending"
    assert 'secret "late" not found' in pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert node_agent.pod_log(namespace, "patient") == ""

    _apply(kubectl, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": namespace},
                     "stringData": {"token": "t0k"}})
    _wait_phase(kubectl, namespace, "patient", "Succeeded")
    assert "token=t0k" in node_agent.pod_log(namespace, "patient")


def test_pod_without_command_fails_clearly(kubectl: Kubectl, node_agent: NodeAgent, namespace: str) -> None:
    pod = _pod(namespace, "entrypoint", "")
    del pod["spec"]["containers"][0]["command"]
    _apply(kubectl, pod)
    failed = _wait_phase(kubectl, namespace, "entrypoint", "Failed")
    assert failed["status"]["reason"] == "ContainerHasNoCommand"
    assert "has no command" in failed["status"]["message"]


def test_deleting_a_pod_sends_sigterm_then_completes_the_deletion(kubectl: Kubectl, node_agent: NodeAgent,
                                                                   namespace: str, tmp_path: Path) -> None:
    marker = tmp_path / "got-sigterm"
    script = """
        import pathlib, signal, sys, time
        def on_term(signum, frame):
            pathlib.Path(sys.argv[1]).write_text("SIGTERM")
            print("SIGTERM received, exiting", flush=True)
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    """
    _apply(kubectl, _pod(namespace, "trapper", script, args=(str(marker),), terminationGracePeriodSeconds=30))
    _wait_log(node_agent, namespace, "trapper", "ready")
    started = time.monotonic()
    # Without a kubelet confirming it, a deleted running pod stays until its grace period ends and then forever:
    # the API server never removes a bound pod by itself. Gone well within 30 s means the agent finished it.
    kubectl("delete", "pod", "trapper", "-n", namespace, "--timeout=25s")
    assert time.monotonic() - started < 25
    assert marker.read_text() == "SIGTERM"
    assert "SIGTERM received, exiting" in node_agent.pod_log(namespace, "trapper")
    assert kubectl("get", "pod", "trapper", "-n", namespace, check=False).returncode != 0


def test_pod_ignoring_sigterm_is_killed_after_its_grace_period(kubectl: Kubectl, node_agent: NodeAgent,
                                                               namespace: str) -> None:
    script = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"ready pid={os.getpid()}", flush=True)
        while True:
            time.sleep(0.1)
    """
    hold = "example.com/keep-for-inspection"  # our own finalizer keeps the object so its last status can be read
    _apply(kubectl, _pod(namespace, "stubborn", script, terminationGracePeriodSeconds=3,
                         metadata={"finalizers": [hold]}))
    log = _wait_log(node_agent, namespace, "stubborn", "ready pid=")
    pid = int(log.split("ready pid=")[1].split()[0])
    started = time.monotonic()
    kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=false")
    pod = _wait_phase(kubectl, namespace, "stubborn", "Failed", timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed >= 2.5, f"killed after {elapsed:.1f}s, before its 3 s grace period"
    terminated = _terminated(pod)
    assert terminated["exitCode"] == 137 and terminated["reason"] == "Error"  # 128 + SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # The agent confirmed the deletion (grace 0); only our finalizer keeps the object now.
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 0
    kubectl("patch", "pod", "stubborn", "-n", namespace, "--type=json",
            "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
    kubectl("wait", "--for=delete", "pod/stubborn", "-n", namespace, "--timeout=30s")


def test_a_restarted_agent_does_not_rerun_finished_pods(kubectl: Kubectl, node_agent: NodeAgent, namespace: str,
                                                        control_plane: ControlPlaneLike, tmp_path: Path) -> None:
    _apply(kubectl, _pod(namespace, "once", "print('ran')"))
    pod = _wait_phase(kubectl, namespace, "once", "Succeeded")
    # A second agent for the same node, as after a restart: it must see the finished pod and leave it alone.
    with start_node_agent(control_plane, tmp_path / "second-agent", python_bin_dir=node_agent.python_bin_dir) as second:
        time.sleep(3)
        assert pod["metadata"]["uid"] not in {record.uid for record in second.started_pods()}
        assert second.pod_log(namespace, "once") == ""
    assert node_agent.pod_log(namespace, "once").count("ran") == 1
    assert _get(kubectl, "pod", "once", "-n", namespace)["status"]["phase"] == "Succeeded"


def test_active_deadline_fails_the_pod(kubectl: Kubectl, node_agent: NodeAgent, namespace: str) -> None:
    script = """
        import time
        print("working", flush=True)
        while True:
            time.sleep(0.1)
    """
    _apply(kubectl, _pod(namespace, "overdue", script, activeDeadlineSeconds=2, terminationGracePeriodSeconds=1))
    pod = _wait_phase(kubectl, namespace, "overdue", "Failed", timeout=30)
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert _terminated(pod)["exitCode"] == 143  # 128 + SIGTERM: python's default handler let the signal kill it
    assert "working" in node_agent.pod_log(namespace, "overdue")


def test_stopping_the_agent_kills_its_processes_and_a_restart_does_not_rerun_them(
    kubectl: Kubectl, control_plane: ControlPlaneLike, namespace: str, tmp_path: Path
) -> None:
    # An agent of its own, on a node of its own, so stopping it leaves the session's agent alone.
    node = f"node-{uuid.uuid4().hex[:6]}"
    script = """
        import os, time
        print(f"ready pid={os.getpid()}", flush=True)
        while True:
            time.sleep(0.1)
    """
    python_bin_dir = Path(sys.executable).parent
    try:
        with start_node_agent(control_plane, tmp_path / "first", python_bin_dir=python_bin_dir,
                              node_name=node) as first:
            _apply(kubectl, _pod(namespace, "longrun", script, nodeName=node))
            log = _wait_log(first, namespace, "longrun", "ready pid=")
            pid = int(log.split("ready pid=")[1].split()[0])
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        # The API still shows what the agent last reported: a kubelet that dies reports nothing either.
        assert _get(kubectl, "pod", "longrun", "-n", namespace)["status"]["phase"] == "Running"

        with start_node_agent(control_plane, tmp_path / "again", python_bin_dir=python_bin_dir,
                              node_name=node) as again:
            pod = _wait_phase(kubectl, namespace, "longrun", "Failed", timeout=30)
            terminated = _terminated(pod)
            assert terminated["exitCode"] == 137
            assert "node agent was restarted" in terminated["message"]
            assert again.pod_log(namespace, "longrun") == ""  # restartPolicy Never: reported, not run again
    finally:
        kubectl("delete", "node", node, "--wait=false", check=False)
