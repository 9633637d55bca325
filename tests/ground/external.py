"""A cluster someone else runs (kind, a dev cluster), seen through the same interface as our local control plane.

`make e2e` sets DATAMOVER_E2E_KUBECONFIG; the control-plane fixtures then hand the tests this instead of starting
etcd and kube-apiserver, and no node of ours runs (the cluster's kubelets run the operator and worker pods).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.ground.binaries import binary
from tests.ground.controlplane import KubectlError
from tests.ground.procs import GroundError

E2E_KUBECONFIG = "DATAMOVER_E2E_KUBECONFIG"
E2E_S3_HOST = "DATAMOVER_E2E_S3_HOST"  # an address of this machine that the cluster's pods can reach
E2E_WORKER_IMAGE = "DATAMOVER_E2E_WORKER_IMAGE"  # the datamover image, loaded into the cluster


def e2e_kubeconfig() -> Path | None:
    value = os.environ.get(E2E_KUBECONFIG)
    return Path(value) if value else None


def s3_host() -> str:
    return os.environ.get(E2E_S3_HOST, "127.0.0.1")


@dataclass
class ExternalCluster:
    """The subset of ControlPlane the product's tests use, for a cluster given by a kubeconfig."""

    admin_kubeconfig: Path
    workdir: Path
    server: str = ""
    ca_file: Path = field(default_factory=Path)

    @classmethod
    def open(cls, kubeconfig: Path, workdir: Path) -> ExternalCluster:
        config = yaml.safe_load(kubeconfig.read_text())
        contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
        clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
        try:
            cluster = clusters[contexts[config["current-context"]]["cluster"]]
        except KeyError as error:
            raise GroundError(f"{kubeconfig}: no usable current-context ({error})") from error
        workdir.mkdir(parents=True, exist_ok=True)
        ca_file = workdir / "cluster-ca.crt"
        if "certificate-authority-data" in cluster:
            ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        elif "certificate-authority" in cluster:
            ca_file = Path(cluster["certificate-authority"])
        else:
            raise GroundError(f"{kubeconfig}: the cluster entry has no CA; e2e needs TLS verification")
        found = cls(admin_kubeconfig=kubeconfig, workdir=workdir, server=cluster["server"], ca_file=ca_file)
        found.kubectl("version")  # fail now, naming the cluster, if it cannot be reached
        return found

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | str | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(binary("kubectl")), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": self.server,
                                                      "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "token-user", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "token-user"}}],
            "current-context": "e2e",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path, *,
                                   bound_pod: tuple[str, str] | None = None) -> Path:
        args = ["create", "token", name, "-n", namespace, "--duration=2h"]
        if bound_pod is not None:
            args += ["--bound-object-kind=Pod", f"--bound-object-name={bound_pod[0]}",
                     f"--bound-object-uid={bound_pod[1]}"]
        return self.token_kubeconfig(self.kubectl(*args).stdout.strip(), path)
