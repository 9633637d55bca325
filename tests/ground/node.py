"""A real Kubernetes node for the ground: containerd, runc, CNI, kubelet and kube-scheduler, confined and cleaned up.

It exists so worker pods and the operator run as users run them: from the datamover image, started by a real
kubelet under the pod's securityContext, with real SIGTERM, grace periods and `kubectl logs`. Everything it can put
under its work directory goes there; what the software puts elsewhere (iptables chains, cgroups, sysctls, /run
entries, mounts, links) is recorded before the start and removed in `finally`. `host_snapshot()` and
`host_changes()` let a test prove the host looks the same afterwards.

What this machine needs (measured, issue 11): cgroup v1 with the cgroupfs driver and `failCgroupV1: false`;
containerd's `restrict_oom_score_adj` (root lacks CAP_SYS_RESOURCE); a locally built pause image; the node IP on a
bridge the run creates (the kubelet refuses loopback); pods with no default route, reaching the API server through
one DNAT rule from the `kubernetes` Service's ClusterIP to the API server on loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.ground.binaries import binary
from tests.ground.controlplane import KUBERNETES_SERVICE_IP, ControlPlane, insecure_context
from tests.ground.procs import GroundError, Proc, free_ports, http_check, running, wait_ready

PAUSE_IMAGE = "datamover.local/pause:ground"
NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses
READY_TIMEOUT = 120.0
# The kubelet's default; pods that ended do not count, and the pod range (.10-.250 of the /24) holds 241 addresses.
MAX_PODS = 110
# The node's cgroup weighs as much as ten busy processes of the host: about what its pods (the operator and up to
# eight workers at once) weighed as local processes before the node existed.
NODE_CPU_SHARES = 10 * 1024
# Sysctls the kubelet (protectKernelDefaults: false) or CNI may set; restored on exit.
SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
           "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Places outside the work directory where containerd or the kubelet create things, whatever they are told.
HOST_DIRS = ("/run/containerd", "/var/run/netns", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers",
             "/var/lib/containerd", "/etc/cni/net.d", "/opt/cni", "/opt/containerd", "/etc/kubernetes",
             "/usr/libexec/kubernetes")
COUNTERS = re.compile(r" \[\d+:\d+\]$")  # a chain's packet and byte counters in iptables-save
BUILTIN_CHAINS = ("INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING")


class NodeNeedsRoot(GroundError):
    """The real node runs containerd, runc and a kubelet: it needs root, as they do."""


# One node per host at a time: two kubelets would share the KUBE-* chains, /run/containerd and the sysctls, and each
# run's before/after comparison would see the other's. A second test run on the host waits here for the first.
HOST_LOCK_TIMEOUT = 3600.0
_host_lock_depth = 0


def _host_lock_path() -> Path:
    """Where the lock lives: one place per host, not per cache, so runs with different DATAMOVER_CACHEs (a clone's CI
    beside a developer's run) still take turns."""
    run_lock = Path("/run/lock")
    return (run_lock if run_lock.is_dir() else Path(tempfile.gettempdir())) / "datamover-node.lock"


@contextlib.contextmanager
def host_lock(timeout: float = HOST_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the host-wide node lock (re-entrant within this process); wait up to `timeout` for another run."""
    global _host_lock_depth
    if _host_lock_depth:
        _host_lock_depth += 1
        try:
            yield
        finally:
            _host_lock_depth -= 1
        return
    with open(_host_lock_path(), "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GroundError(f"another test run has held the real node's host lock ({lock.name}) for "
                                      f"{timeout:.0f}s") from None
                time.sleep(1.0)
        _host_lock_depth = 1
        try:
            yield
        finally:
            _host_lock_depth = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------------------
# The host, before and after


@dataclass(frozen=True)
class HostSnapshot:
    """What a node could change on the host, in comparable form."""

    iptables: tuple[str, ...]
    routes: tuple[str, ...]
    links: tuple[str, ...]
    mounts: tuple[str, ...]
    cgroups: tuple[str, ...]
    sysctls: tuple[str, ...]
    run_dirs: tuple[str, ...]


def _lines(argv: Sequence[str]) -> tuple[str, ...]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GroundError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return tuple(result.stdout.splitlines())


def _iptables_rules() -> tuple[str, ...]:
    """iptables-save and ip6tables-save without counters and comments: tables, chains with policies, rules."""
    rules: list[str] = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            rules += [f"{tool}: {COUNTERS.sub('', line)}" for line in _lines([tool])
                      if line and not line.startswith("#")]
    return tuple(rules)


def _cgroups() -> tuple[str, ...]:
    found: list[str] = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            for dirpath, dirnames, _files in os.walk(hierarchy):
                dirnames.sort()
                found.append(os.path.relpath(dirpath, CGROUP_ROOT))
    return tuple(found)


def host_snapshot() -> HostSnapshot:
    mounts = tuple(" ".join(line.split()[3:5]) for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return HostSnapshot(
        iptables=_iptables_rules(),
        routes=_lines(["ip", "route", "show", "table", "all"]),
        links=tuple(re.sub(r"^\d+: ", "", line) for line in _lines(["ip", "-o", "link", "show"])),
        mounts=mounts,
        cgroups=_cgroups(),
        sysctls=tuple(f"{name}={_read_sysctl(name)}" for name in SYSCTLS),
        run_dirs=tuple(sorted(f"{p} {sorted(os.listdir(p)) if os.path.isdir(p) else ''}" for p in HOST_DIRS
                              if os.path.lexists(p))),
    )


def host_changes(before: HostSnapshot, after: HostSnapshot) -> list[str]:
    """Human-readable differences, one per line: `+ kind: item` appeared, `- kind: item` went away."""
    changes: list[str] = []
    for kind in ("iptables", "routes", "links", "mounts", "cgroups", "sysctls", "run_dirs"):
        old, new = set(getattr(before, kind)), set(getattr(after, kind))
        changes += [f"+ {kind}: {item}" for item in sorted(new - old)]
        changes += [f"- {kind}: {item}" for item in sorted(old - new)]
    return changes


def _read_sysctl(name: str) -> str:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------------------
# The pause image


def pause_image_archive(directory: Path) -> Path:
    """An OCI archive holding only the static `pause` binary (tools/pause), named PAUSE_IMAGE."""
    pause = binary("pause")
    layer_raw = io.BytesIO()
    with tarfile.open(fileobj=layer_raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode, info.mtime = pause.stat().st_size, 0o755, 946684800
        with pause.open("rb") as f:
            tar.addfile(info, f)
    raw = layer_raw.getvalue()
    layer = gzip.compress(raw, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }, sort_keys=True).encode()

    def desc(media_type: str, data: bytes) -> dict[str, object]:
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }, sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        **desc("application/vnd.oci.image.manifest.v1+json", manifest),
        "annotations": {"io.containerd.image.name": PAUSE_IMAGE},
    }]}).encode()
    out = directory / "pause.oci.tar"
    with tarfile.open(out, "w") as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                           *((f"blobs/sha256/{hashlib.sha256(d).hexdigest()}", d) for d in (config, manifest,
                                                                                             layer))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


# --------------------------------------------------------------------------------------------------------------
# The node


@dataclass
class Node:
    """A running node: its name and IP (on the run's own bridge), and how to reach its parts."""

    name: str
    ip: str
    bridge: str
    pod_subnet: str
    workdir: Path
    containerd_address: str
    logs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict, repr=False)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this node's containerd, in the CRI namespace."""
        result = subprocess.run([str(binary("ctr")), "--address", self.containerd_address, "-n", NAMESPACE, *args],
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise GroundError(f"ctr {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def task_pids(self) -> dict[str, int]:
        """container id -> host PID of its process, for every running task."""
        pids: dict[str, int] = {}
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "RUNNING":
                pids[parts[0]] = int(parts[1])
        return pids

    def signal_container(self, container_id: str, sig: str) -> None:
        """Send `sig` (e.g. "SIGKILL", "SIGSTOP") to every process of a running container, as its runtime would."""
        self.ctr("tasks", "kill", "--all", "--signal", sig, container_id.removeprefix("containerd://"))

    def check_alive(self) -> None:
        for proc in self.procs.values():
            proc.check_alive()


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GroundError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")


def _containerd_config(workdir: Path, cni_bin: Path, cni_conf: Path) -> str:
    root, state = workdir / "containerd" / "root", workdir / "containerd" / "state"
    return f"""version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
                    "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing", "io.containerd.nri.v1.nri",
                    "io.containerd.internal.v1.opt"]

[grpc]
  address = "{workdir / 'containerd' / 'containerd.sock'}"

[ttrpc]
  address = "{workdir / 'containerd' / 'containerd.sock.ttrpc'}"

[debug]
  address = ""

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{binary('runc')}"
        Root = "{state / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def _cni_config(bridge: str, subnet_prefix: str, gateway: str, ipam_dir: Path) -> str:
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": "datamover-ground",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            # The bridge already has the gateway address (the node IP); pods get no default route, only the subnet
            # and the Service range through the gateway, so they reach nothing outside this run's network.
            "isGateway": False,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": f"{subnet_prefix}.0/24", "rangeStart": f"{subnet_prefix}.10",
                             "rangeEnd": f"{subnet_prefix}.250", "gateway": gateway}]],
                "routes": [{"dst": f"{KUBERNETES_SERVICE_IP.rsplit('.', 1)[0]}.0/24", "gw": gateway}],
                "dataDir": str(ipam_dir),
            },
        }],
    }, indent=1)


def _kubelet_config(workdir: Path, node: Node, ca_file: Path, port: int, healthz_port: int, max_pods: int) -> str:
    return yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cgroupRoot": f"/{node.name}",
        "containerRuntimeEndpoint": f"unix://{node.containerd_address}",
        "podLogsDir": str(workdir / "pod-logs"),
        "volumePluginDir": str(workdir / "kubelet-plugins"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca_file)}},
        "authorization": {"mode": "AlwaysAllow"},
        "failSwapOn": False,
        "resolvConf": "",
        "oomScoreAdj": 0,  # root here lacks CAP_SYS_RESOURCE: the kubelet cannot lower its own score
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "registerNode": True,
        "maxPods": max_pods,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
    }, sort_keys=False)


def _subnet_prefix() -> str:
    """A /24 for this run's bridge and pods, chosen at random in 10.224.0.0/12 and not routed on this host yet."""
    routes = "\n".join(_lines(["ip", "-4", "route", "show", "table", "all"]))
    for _ in range(50):
        prefix = f"10.{224 + secrets.randbelow(16)}.{secrets.randbelow(256)}"
        if f"{prefix}." not in routes:
            return prefix
    raise GroundError("no free /24 in 10.224.0.0/12 for the node's bridge")


@contextlib.contextmanager
def start_node(cp: ControlPlane, workdir: Path, images: Sequence[Path] = (), *,
               timeout: float = READY_TIMEOUT, max_pods: int = MAX_PODS) -> Iterator[Node]:
    """Start containerd, the kubelet and kube-scheduler for `cp`; import `images`; tear everything down on exit.

    Ready means: the Node object is Ready (runtime and network ready), and the scheduler answers its health check.
    """
    if os.geteuid() != 0:
        raise NodeNeedsRoot("the real node (containerd, runc, kubelet) needs root; run the control-plane tier as root")
    with host_lock():
        yield from _start_node(cp, Path(workdir).resolve(), images, timeout, max_pods)


def _start_node(cp: ControlPlane, workdir: Path, images: Sequence[Path], timeout: float,
                max_pods: int) -> Iterator[Node]:
    workdir.mkdir(parents=True, exist_ok=True)
    bins = {n: binary(n) for n in ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "kubelet",
                                   "kube-scheduler", "bridge", "host-local", "loopback", "pause")}
    suffix = secrets.token_hex(3)
    prefix = _subnet_prefix()
    node = Node(name=f"dm-node-{suffix}", ip=f"{prefix}.1", bridge=f"dmbr{suffix}", pod_subnet=f"{prefix}.0/24",
                workdir=workdir, containerd_address=str(workdir / "containerd" / "containerd.sock"))
    logs = workdir / "logs"
    node.logs = {n: logs / f"{n}.log" for n in ("containerd", "kubelet", "kube-scheduler")}
    before = host_snapshot()
    sysctls = {name: _read_sysctl(name) for name in SYSCTLS}
    cni_bin = workdir / "cni" / "bin"
    cni_conf = workdir / "cni" / "net.d"
    for path in (cni_bin, cni_conf, logs):
        path.mkdir(parents=True, exist_ok=True)
    for plugin in ("bridge", "host-local", "loopback"):
        (cni_bin / plugin).symlink_to(bins[plugin])
    # containerd finds its shim on PATH.
    shim_dir = workdir / "containerd" / "bin"
    shim_dir.mkdir(parents=True)
    (shim_dir / "containerd-shim-runc-v2").symlink_to(bins["containerd-shim-runc-v2"])
    env = {"PATH": f"{shim_dir}:{bins['runc'].parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}

    try:
        with contextlib.ExitStack() as stack:
            # The network: a bridge with the node IP, and the Service ClusterIP of `kubernetes` sent to loopback.
            _run("ip", "link", "add", node.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{node.ip}/24", "dev", node.bridge)
            _run("ip", "link", "set", node.bridge, "up")
            Path(f"/proc/sys/net/ipv4/conf/{node.bridge}/route_localnet").write_text("1")
            api_port = cp.server.rsplit(":", 1)[1]
            _run("iptables", "-t", "nat", "-A", "PREROUTING", "-i", node.bridge, "-d", f"{KUBERNETES_SERVICE_IP}/32",
                 "-p", "tcp", "--dport", "443", "-j", "DNAT", "--to-destination", f"127.0.0.1:{api_port}",
                 "-m", "comment", "--comment", f"datamover ground {node.name}")
            (cni_conf / "10-datamover.conflist").write_text(
                _cni_config(node.bridge, prefix, node.ip, workdir / "cni" / "ipam"))

            config = workdir / "containerd" / "config.toml"
            config.write_text(_containerd_config(workdir, cni_bin, cni_conf))
            node.procs["containerd"] = stack.enter_context(running(
                "containerd", [bins["containerd"], f"--config={config}", "--log-level=warn"],
                node.logs["containerd"], ready=lambda: _containerd_ready(node), timeout=timeout, env=env))
            for archive in (pause_image_archive(workdir), *images):
                node.ctr("images", "import", str(archive))

            scheduler_port, kubelet_port, healthz_port = free_ports(3)
            sched_kubeconfig = cp.client_cert_kubeconfig("system:kube-scheduler", workdir / "scheduler.kubeconfig")
            node.procs["kube-scheduler"] = stack.enter_context(running(
                "kube-scheduler",
                [bins["kube-scheduler"], f"--kubeconfig={sched_kubeconfig}",
                 f"--authentication-kubeconfig={sched_kubeconfig}", f"--authorization-kubeconfig={sched_kubeconfig}",
                 "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", "--leader-elect=false",
                 f"--cert-dir={workdir / 'scheduler-certs'}", "--v=1"],
                node.logs["kube-scheduler"],
                ready=http_check(f"https://127.0.0.1:{scheduler_port}/healthz", ssl_context=insecure_context()),
                timeout=timeout))

            kubelet_kubeconfig = cp.client_cert_kubeconfig(f"system:node:{node.name}",
                                                            workdir / "kubelet.kubeconfig",
                                                            organizations=["system:nodes"])
            _make_cgroup_root(node.name)
            kubelet_config = workdir / "kubelet-config.yaml"
            kubelet_config.write_text(_kubelet_config(workdir, node, cp.ca_file, kubelet_port, healthz_port,
                                                       max_pods))
            node.procs["kubelet"] = stack.enter_context(running(
                "kubelet",
                [bins["kubelet"], f"--config={kubelet_config}", f"--kubeconfig={kubelet_kubeconfig}",
                 f"--root-dir={workdir / 'kubelet'}", f"--node-ip={node.ip}", f"--hostname-override={node.name}",
                 "--v=1"],
                node.logs["kubelet"], ready=http_check(f"http://127.0.0.1:{healthz_port}/healthz"),
                timeout=timeout, env=env))
            wait_ready(node.procs["kubelet"], lambda: _node_ready(cp, node.name), timeout=timeout,
                       what=f"Node {node.name} Ready")
            stack.callback(_stop_pods, node)
            yield node
    finally:
        _teardown(node, before, sysctls)


def _make_cgroup_root(name: str) -> None:
    """The kubelet's cgroupRoot, in every v1 hierarchy (it must exist); cpuset needs its CPUs and memory nodes.

    Its CPU weight is NODE_CPU_SHARES: with the default (1024, one process's worth) every pod of the node together
    got as much CPU as one other process of this shared host, and at a load average of 20 the 200-job test's
    workers took 45 s each to copy three small objects (as local processes they each weighed 1024).
    """
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        if hierarchy.is_dir() and not hierarchy.is_symlink() and (hierarchy / "cgroup.procs").exists():
            (hierarchy / name).mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).exists():
                    (hierarchy / name / knob).write_text((hierarchy / knob).read_text())
            if (hierarchy / name / "cpu.shares").exists():
                (hierarchy / name / "cpu.shares").write_text(str(NODE_CPU_SHARES))


def _containerd_ready(node: Node) -> bool:
    if not os.path.exists(node.containerd_address):
        return False
    return node.ctr("version", check=False, timeout=10).returncode == 0


def _node_ready(cp: ControlPlane, name: str) -> bool:
    try:
        obj = cp.api("GET", f"/api/v1/nodes/{name}")
    except (GroundError, OSError):
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


def _stop_pods(node: Node) -> None:
    """Before the kubelet stops: stop every container (SIGKILL) so nothing of the pods outlives the node."""
    with contextlib.suppress(GroundError, subprocess.TimeoutExpired):
        for container in node.task_pids():
            node.ctr("tasks", "kill", "--signal", "SIGKILL", container, check=False, timeout=30)


# --------------------------------------------------------------------------------------------------------------
# Teardown: everything the node made, whatever state it is in


def _teardown(node: Node, before: HostSnapshot, sysctls: dict[str, str]) -> None:
    errors: list[str] = []

    def attempt(what: str, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except Exception as error:  # teardown goes on; the errors are raised together at the end
            errors.append(f"{what}: {error}")

    for proc in node.procs.values():  # normally already stopped by the ExitStack
        attempt(f"stop {proc.name}", proc.stop)
    attempt("kill leftover processes", lambda: _kill_leftovers(node))
    attempt("unmount", lambda: _unmount_under((node.workdir, Path("/run/containerd"))))
    attempt("network", lambda: _remove_network(node))
    attempt("iptables", lambda: _restore_iptables(before))
    attempt("cgroups", lambda: _remove_cgroups(node.name))
    attempt("sysctls", lambda: _restore_sysctls(sysctls))
    attempt("run dirs", lambda: _remove_new_dirs(before, node.workdir))
    attempt("work directory", lambda: _remove_workdir(node.workdir))
    if errors:
        raise GroundError("the node's teardown left things behind:\n" + "\n".join(errors))


def _cgroup_dirs(name: str) -> list[Path]:
    return [h / name for h in sorted(CGROUP_ROOT.iterdir()) if (h / name).is_dir() and not h.is_symlink()]


def _kill_leftovers(node: Node) -> None:
    """SIGKILL every process in the node's cgroups (the pods') and every shim of its containerd."""
    for _ in range(50):
        pids: set[int] = set()
        for top in _cgroup_dirs(node.name):
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids |= {int(p) for p in procs.read_text().split()}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"containerd-shim" in cmdline and node.containerd_address.encode() in cmdline:
                        pids.add(int(proc.name))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise GroundError(f"processes of {node.name} survive SIGKILL")


def _unmount_under(roots: Sequence[Path]) -> None:
    """Unmount every mount point under `roots`, deepest first (lazily: a mount still busy goes when freed)."""
    prefixes = tuple(str(r).rstrip("/") + "/" for r in roots)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefixes):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _remove_network(node: Node) -> None:
    result = subprocess.run(["ip", "-o", "link", "show", "master", node.bridge], capture_output=True, text=True,
                            check=False)
    for line in result.stdout.splitlines():
        veth = line.split(":")[1].strip().split("@")[0]
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
    if subprocess.run(["ip", "link", "show", node.bridge], capture_output=True, check=False).returncode == 0:
        _run("ip", "link", "del", node.bridge)


def _restore_iptables(before: HostSnapshot) -> None:
    """Delete the rules and chains that appeared since `before` (the kubelet's KUBE-* chains, our DNAT)."""
    for tool in ("iptables", "ip6tables"):
        save = f"{tool}-save"
        if not shutil.which(save):
            continue
        old = {r.split(": ", 1)[1] for r in before.iptables if r.startswith(f"{save}: ")}
        table = ""
        new_rules: list[tuple[str, str]] = []
        new_chains: list[tuple[str, str]] = []
        for line in _lines([save]):
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and line not in old:
                new_rules.append((table, line))
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                if COUNTERS.sub("", line) not in old and chain not in BUILTIN_CHAINS:
                    new_chains.append((table, chain))
        for table, rule in reversed(new_rules):
            subprocess.run([tool, "-t", table, "-D", *_split_rule(rule[3:])], capture_output=True, check=False)
        for table, chain in new_chains:
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True, check=False)
        for table, chain in new_chains:
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True, check=False)
        # A table that did not exist before stays, empty, in nftables (iptables-nft): only nft deletes it.
        old_tables = {line[1:] for line in old if line.startswith("*")}
        family = "ip" if tool == "iptables" else "ip6"
        for table in {t for t, _ in new_rules} | {t for t, _ in new_chains} | _tables(save):
            if table not in old_tables and shutil.which("nft"):
                subprocess.run(["nft", "delete", "table", family, table], capture_output=True, check=False)


def _tables(save: str) -> set[str]:
    return {line[1:] for line in _lines([save]) if line.startswith("*")}


def _split_rule(rule: str) -> list[str]:
    return shlex.split(rule)


def _remove_cgroups(name: str) -> None:
    for top in _cgroup_dirs(name):
        for dirpath, _dirnames, _files in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(dirpath)


def _restore_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        if value and _read_sysctl(name) != value:
            (Path("/proc/sys") / name).write_text(value)


def _remove_new_dirs(before: HostSnapshot, workdir: Path) -> None:
    """/run/containerd (shim sockets) and the like, if the node created them."""
    existed = {entry.split(" ", 1)[0] for entry in before.run_dirs}
    for path in HOST_DIRS:
        if path not in existed and os.path.lexists(path):
            _unmount_under([Path(path)])
            shutil.rmtree(path)
    # The kubelet links every container's log into /var/log/containers, whatever its configuration says.
    containers = Path("/var/log/containers")
    if containers.is_dir():
        for link in containers.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(workdir)):
                link.unlink()


def _remove_workdir(workdir: Path) -> None:
    """Everything but the logs (kept for a failed test's reader), including the images' unpacked layers."""
    for child in workdir.iterdir():
        if child.name != "logs":
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

