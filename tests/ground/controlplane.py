"""A real, throwaway Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on 127.0.0.1.

It exists so control-plane tests and the demo talk to the genuine API server, with its validation, RBAC,
TokenRequest and controllers, instead of a fake. It runs no kubelet and no scheduler: those are the real node's
(tests/ground/node.py). Everything lives under one work directory and is stopped on exit.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.ground.binaries import binary
from tests.ground.procs import GroundError, Proc, free_ports, http_check, running, wait_ready

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCE = SERVICE_ACCOUNT_ISSUER
ADMIN_USER = "datamover-ground-admin"
READY_TIMEOUT = 90.0


# --------------------------------------------------------------------------------------------------------------
# Certificates


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class CertificateAuthority:
    """The ground's self-signed CA: signs the API server's serving cert and every client cert."""

    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path, common_name: str = "datamover-ground-ca") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(cert_file=directory / "ca.crt", key_file=directory / "ca.key")
        ca.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, ca.key_file)
        return ca

    def issue(
        self,
        path_prefix: Path,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> tuple[Path, Path]:
        """Issue a leaf certificate; writes `<prefix>.crt` and `<prefix>.key` and returns their paths."""
        ca_key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_file, key_file = path_prefix.with_suffix(".crt"), path_prefix.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return cert_file, key_file


# --------------------------------------------------------------------------------------------------------------
# The control plane


class KubectlError(AssertionError):
    """kubectl exited non-zero where success was expected; carries the command's output."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        super().__init__(
            f"kubectl {' '.join(result.args[1:])} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )


# Service accounts of this namespace (the operator's) get one audit line per request; nobody else is audited.
AUDITED_GROUPS = ("system:serviceaccounts:datamover-system",)
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata", "userGroups": list(AUDITED_GROUPS)}, {"level": "None"}],
}


@dataclass
class ControlPlane:
    """A running control plane; the node and the tests use exactly these fields and methods."""

    server: str  # https://127.0.0.1:<port>
    ca_file: Path  # CA that signed the API server's serving cert (and every client cert)
    admin_kubeconfig: Path  # client-cert user in system:masters
    workdir: Path
    ca_key_file: Path  # lets other ground parts issue certs (e.g. a node's client cert)
    service_account_issuer: str = SERVICE_ACCOUNT_ISSUER
    api_audiences: tuple[str, ...] = (API_AUDIENCE,)
    service_cluster_ip_range: str = SERVICE_CLUSTER_IP_RANGE
    etcd_endpoint: str = ""
    logs: dict[str, Path] = field(default_factory=dict)  # binary name -> log file
    startup_seconds: dict[str, float] = field(default_factory=dict)  # part -> seconds it took to come up
    # One JSON line per request made by an audited group's users (AUDITED_GROUPS): what bench/operator_scale.py
    # counts to say how many requests the operator sends.
    audit_log: Path | None = None
    procs: dict[str, Proc] = field(default_factory=dict, repr=False)

    # -- kubeconfigs ---------------------------------------------------------------------------------------------

    def _kubeconfig(self, path: Path, user: dict[str, str], user_name: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "ground", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": user_name, "user": user}],
            "contexts": [{"name": "ground", "context": {"cluster": "ground", "user": user_name}}],
            "current-context": "ground",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """Write a kubeconfig that authenticates with a bearer token; returns `path`."""
        return self._kubeconfig(path, {"token": token}, "token-user")

    def client_cert_kubeconfig(self, common_name: str, path: Path, *, organizations: Sequence[str] = ()) -> Path:
        """Write a kubeconfig for a client-cert user CN=common_name, O=organizations (e.g. a node identity)."""
        ca = CertificateAuthority(cert_file=self.ca_file, key_file=self.ca_key_file)
        cert, key = ca.issue(path.with_suffix(""), common_name, organizations=organizations, client=True)
        return self._kubeconfig(path, {"client-certificate": str(cert), "client-key": str(key)}, common_name)

    def request_token(
        self,
        namespace: str,
        name: str,
        *,
        bound_pod: tuple[str, str] | None = None,
        audiences: Sequence[str] = (),
        expiration_seconds: int = 3600,
    ) -> str:
        """A service-account token from the TokenRequest API; bound to a pod when given its (name, uid)."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        if bound_pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": bound_pod[0], "uid": bound_pod[1]}
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        resp = self.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        token: str = resp["status"]["token"]
        return token

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, bound_pod: tuple[str, str] | None = None
    ) -> Path:
        """Write a kubeconfig holding a fresh TokenRequest token for ServiceAccount namespace/name."""
        return self.token_kubeconfig(self.request_token(namespace, name, bound_pod=bound_pod), path)

    # -- talking to the API server --------------------------------------------------------------------------------

    def admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        admin = self.workdir / "pki" / "admin"
        ctx.load_cert_chain(str(admin.with_suffix(".crt")), str(admin.with_suffix(".key")))
        return ctx

    def api(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One JSON request as the admin; raises GroundError with the server's message on an HTTP error."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, context=self.admin_ssl_context(), timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise GroundError(f"kube-apiserver: {method} {path} -> {exc.code}: {exc.read().decode()}") from exc

    def kubectl(
        self,
        *args: str,
        input: str | None = None,  # named as in subprocess.run
        check: bool = True,
        kubeconfig: Path | str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane (admin by default); raises KubectlError if check fails."""
        cmd = [
            str(binary("kubectl")),
            f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
            f"--cache-dir={self.workdir / 'kubectl-cache'}",
            *args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise KubectlError(result)
        return result

    def check_alive(self) -> None:
        """Raise GroundError naming the first server process that has died."""
        for proc in self.procs.values():
            proc.check_alive()


def _etcd_argv(data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        str(binary("etcd")),
        "--name=ground",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=ground={peer}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync",  # a throwaway store: durability buys nothing, speed does
        "--log-level=warn",
    ]


@contextlib.contextmanager
def start_control_plane(workdir: Path, *, timeout: float = READY_TIMEOUT) -> Iterator[ControlPlane]:
    """Start etcd, kube-apiserver and kube-controller-manager under `workdir`; stop them all on exit.

    Ready means: /readyz is ok, and the controller manager has created the `default` ServiceAccount in `default`
    (which proves it runs and can write through the API server).
    """
    workdir = Path(workdir).resolve()
    pki, logs = workdir / "pki", workdir / "logs"
    pki.mkdir(parents=True, exist_ok=True)
    binaries = {name: binary(name) for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")}

    ca = CertificateAuthority.create(pki)
    serving_cert, serving_key = ca.issue(
        pki / "apiserver",
        "kube-apiserver",
        dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local"],
        ip_addresses=["127.0.0.1", KUBERNETES_SERVICE_IP],
        server=True,
    )
    admin_cert, admin_key = ca.issue(pki / "admin", ADMIN_USER, organizations=["system:masters"], client=True)
    kcm_cert, kcm_key = ca.issue(pki / "kube-controller-manager", "system:kube-controller-manager", client=True)
    # How the API server authenticates to a kubelet (logs, exec) when a real node joins (tests/ground/node.py).
    kubelet_client_cert, kubelet_client_key = ca.issue(
        pki / "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=["system:masters"],
        client=True)
    # The aggregation layer's front-proxy CA, as kubeadm sets it up; without it every delegated authenticator
    # (the controller manager's included) logs "missing content for CA bundle" forever.
    front_proxy_ca = CertificateAuthority.create(pki / "front-proxy", "datamover-ground-front-proxy-ca")
    proxy_cert, proxy_key = front_proxy_ca.issue(pki / "front-proxy" / "client", "front-proxy-client", client=True)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(sa_key, pki / "sa.key")
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    etcd_port, etcd_peer_port, api_port, kcm_port = free_ports(4)
    server = f"https://127.0.0.1:{api_port}"
    cp = ControlPlane(
        server=server,
        ca_file=ca.cert_file,
        admin_kubeconfig=workdir / "admin.kubeconfig",
        workdir=workdir,
        ca_key_file=ca.key_file,
        etcd_endpoint=f"http://127.0.0.1:{etcd_port}",
        logs={name: logs / f"{name}.log" for name in ("etcd", "kube-apiserver", "kube-controller-manager")},
        audit_log=logs / "audit.jsonl",
    )
    audit_policy = workdir / "audit-policy.yaml"
    audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
    cp._kubeconfig(cp.admin_kubeconfig, {"client-certificate": str(admin_cert), "client-key": str(admin_key)},
                   ADMIN_USER)
    kcm_kubeconfig = cp._kubeconfig(
        workdir / "kube-controller-manager.kubeconfig",
        {"client-certificate": str(kcm_cert), "client-key": str(kcm_key)},
        "system:kube-controller-manager",
    )

    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        cp.procs["etcd"] = stack.enter_context(
            running(
                "etcd",
                _etcd_argv(workdir / "etcd", etcd_port, etcd_peer_port),
                cp.logs["etcd"],
                ready=http_check(f"{cp.etcd_endpoint}/health", expect_body='"health":"true"'),
                timeout=timeout,
            )
        )
        cp.startup_seconds["etcd"] = time.monotonic() - t0

        t0 = time.monotonic()
        cp.procs["kube-apiserver"] = stack.enter_context(
            running(
                "kube-apiserver",
                [
                    str(binaries["kube-apiserver"]),
                    f"--etcd-servers={cp.etcd_endpoint}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    f"--tls-cert-file={serving_cert}",
                    f"--tls-private-key-file={serving_key}",
                    f"--client-ca-file={ca.cert_file}",
                    "--authorization-mode=Node,RBAC",
                    "--enable-admission-plugins=NodeRestriction",
                    "--anonymous-auth=false",
                    f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--api-audiences={API_AUDIENCE}",
                    f"--requestheader-client-ca-file={front_proxy_ca.cert_file}",
                    "--requestheader-allowed-names=front-proxy-client",
                    "--requestheader-username-headers=X-Remote-User",
                    "--requestheader-group-headers=X-Remote-Group",
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                    f"--proxy-client-cert-file={proxy_cert}",
                    f"--proxy-client-key-file={proxy_key}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    f"--kubelet-client-certificate={kubelet_client_cert}",
                    f"--kubelet-client-key={kubelet_client_key}",
                    # A real node's name is not in this machine's DNS: reach kubelets at their InternalIP.
                    "--kubelet-preferred-address-types=InternalIP",
                    # Endpoints may not hold loopback addresses, so the `kubernetes` Service gets no endpoints
                    # instead of an endless reconcile error; in-cluster clients are pointed at `server` directly.
                    "--endpoint-reconciler-type=none",
                    f"--cert-dir={pki / 'apiserver-generated'}",
                    "--profiling=false",
                    f"--audit-policy-file={audit_policy}",
                    f"--audit-log-path={cp.audit_log}",
                    "--audit-log-format=json",
                    "--audit-log-maxbackup=1",
                    "--v=1",
                ],
                cp.logs["kube-apiserver"],
                ready=http_check(f"{server}/readyz", ssl_context=cp.admin_ssl_context()),
                timeout=timeout,
            )
        )
        cp.startup_seconds["kube-apiserver"] = time.monotonic() - t0

        t0 = time.monotonic()
        kcm = stack.enter_context(
            running(
                "kube-controller-manager",
                [
                    str(binaries["kube-controller-manager"]),
                    f"--kubeconfig={kcm_kubeconfig}",
                    f"--authentication-kubeconfig={kcm_kubeconfig}",
                    f"--authorization-kubeconfig={kcm_kubeconfig}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    f"--cert-dir={pki / 'kcm-generated'}",
                    "--leader-elect=false",
                    "--controllers=*",  # the defaults: job, garbagecollector, namespace, serviceaccount(-token), ...
                    "--use-service-account-credentials=true",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={ca.cert_file}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--profiling=false",
                    "--v=1",
                ],
                cp.logs["kube-controller-manager"],
                ready=http_check(f"https://127.0.0.1:{kcm_port}/healthz", ssl_context=insecure_context()),
                timeout=timeout,
            )
        )
        cp.procs["kube-controller-manager"] = kcm
        wait_ready(kcm, lambda: _default_service_account_exists(cp), timeout=timeout,
                   what="creating the default ServiceAccount")
        cp.startup_seconds["kube-controller-manager"] = time.monotonic() - t0
        yield cp


def insecure_context() -> ssl.SSLContext:
    """For health checks of self-signed local endpoints only (controller manager, scheduler)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _default_service_account_exists(cp: ControlPlane) -> bool:
    try:
        cp.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
        return True
    except (GroundError, OSError):
        return False

