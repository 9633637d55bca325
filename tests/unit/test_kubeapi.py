"""datamover.kubeapi against a stand-in API server on loopback: configuration, errors by status, watches that resume."""

from __future__ import annotations

import base64
import datetime as dt
import os
import ssl
import stat
from pathlib import Path
from typing import Any

import pykube
import pytest
import requests
import yaml

from datamover import kubeapi
from tests.fakekube import Answer, Request, kubeconfig, serve, status
from tests.ground.controlplane import CertificateAuthority

JOB = kubeapi.MIGRATION_JOBS
JOB_PATH = "/apis/datamover.io/v1alpha1/namespaces/team-a/migrationjobs"


def job(version: str) -> dict[str, Any]:
    return {"metadata": {"name": "copy", "namespace": "team-a", "resourceVersion": version}}


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No kubeconfig or service account of the machine running the tests may leak in."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


# -- configuration ----------------------------------------------------------------------------------------------


def test_a_kubeconfig_with_embedded_certificates_reaches_a_server_that_requires_a_client_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    server_cert, server_key = ca.issue(tmp_path / "server", "apiserver", ip_addresses=["127.0.0.1"], server=True)
    client_cert, client_key = ca.issue(tmp_path / "client", "ci-admin", client=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert_file))
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    with serve(lambda _: Answer(body={"kind": "Secret", "data": {}}), context) as fake:
        doc = kubeconfig(fake.url, **{"client-certificate-data": b64(client_cert), "client-key-data": b64(client_key)})
        doc["clusters"][0]["cluster"]["certificate-authority-data"] = b64(ca.cert_file)
        monkeypatch.setenv("KUBECONFIG", str(write(tmp_path / "kube" / "config", doc)))
        config = kubeapi.load_config()
        assert kubeapi.context_namespace(config) == "team-a"
        kubeapi.Client(config).get(kubeapi.SECRETS, "team-a", "cloud-a")
    assert fake.requests[0].client_subject == "ci-admin"
    assert fake.requests[0].path == "/api/v1/namespaces/team-a/secrets/cloud-a"
    # The inline key went to a file only this user can read, in a directory only this user can enter.
    key_file = Path(config.user["client-key"].filename())
    assert key_file.read_bytes() == client_key.read_bytes()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700


def test_kubeconfig_files_merge_as_kubectl_merges_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "ca.crt").parent.mkdir(parents=True)
    (tmp_path / "a" / "ca.crt").write_text("not checked until used")
    first = {"current-context": "one",
             "clusters": [{"name": "c", "cluster": {"server": "https://first:6443/",
                                                    "certificate-authority": "ca.crt"}}],
             "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u"}}]}
    second = {"current-context": "two",
              "clusters": [{"name": "c", "cluster": {"server": "https://second:6443"}}],
              "users": [{"name": "u", "user": {"token": "t-2"}}],
              "contexts": [{"name": "two", "context": {"cluster": "c", "user": "u", "namespace": "ns-2"}}]}
    paths = [write(tmp_path / "a" / "config", first), tmp_path / "missing", write(tmp_path / "b" / "config", second)]
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(map(str, paths)))

    config = kubeapi.load_config()  # the first file's current-context and cluster; the user only the second has
    assert config.current_context == "one" and kubeapi.context_namespace(config) is None
    assert kubeapi.Client(config).server == "https://first:6443"
    assert config.cluster["certificate-authority"].filename() == str(tmp_path / "a" / "ca.crt")  # beside its file
    assert config.user["token"] == "t-2"

    chosen = kubeapi.load_config(context="two")
    assert kubeapi.context_namespace(chosen) == "ns-2"
    with pytest.raises(kubeapi.ConfigError, match="no context named 'three'"):
        kubeapi.load_config(context="three")
    with pytest.raises(kubeapi.ConfigError, match="kubeconfig /nowhere not found"):
        kubeapi.load_config("/nowhere")


def test_in_cluster_the_token_is_read_again_as_the_kubelet_rotates_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("token-1")
    (account / "namespace").write_text("datamover-system")
    (account / "ca.crt").write_text("unused over plain HTTP")
    with serve(lambda _: Answer(body={})) as fake:
        host, port = fake.url.removeprefix("http://").split(":")
        config = kubeapi.in_cluster_config(account, {"KUBERNETES_SERVICE_HOST": host,
                                                     "KUBERNETES_SERVICE_PORT": port})
        assert config.cluster["server"] == f"https://{host}:{port}"
        assert kubeapi.context_namespace(config) == "datamover-system"
        config.doc["clusters"][0]["cluster"] = {"server": fake.url}  # the stand-in speaks plain HTTP
        config.reload()
        client = kubeapi.Client(config)
        client.get(kubeapi.SECRETS, "datamover-system", "s")
        (account / "token").write_text("token-2")
        client.get(kubeapi.SECRETS, "datamover-system", "s")  # within the minute: the token read before
        monkeypatch.setattr(kubeapi, "TOKEN_REFRESH_SECONDS", 0.0)
        client.get(kubeapi.SECRETS, "datamover-system", "s")
        (account / "token").unlink()
        client.get(kubeapi.SECRETS, "datamover-system", "s")  # a failed read keeps the last token
    assert [r.headers["authorization"] for r in fake.requests] == [
        "Bearer token-1", "Bearer token-1", "Bearer token-2", "Bearer token-2"]


def test_in_cluster_addresses_and_what_is_missing_are_said() -> None:
    account = Path("/nonexistent-serviceaccount")
    with pytest.raises(kubeapi.ConfigError, match="KUBERNETES_SERVICE_HOST"):
        kubeapi.load_config()  # no KUBECONFIG, no ~/.kube/config, not in a pod
    with pytest.raises(kubeapi.ConfigError, match="nonexistent-serviceaccount/token is missing"):
        kubeapi.in_cluster_config(account, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})


def test_an_ipv6_service_address_is_bracketed(tmp_path: Path) -> None:
    for name in ("token", "ca.crt"):
        (tmp_path / name).write_text("x")
    config = kubeapi.in_cluster_config(tmp_path, {"KUBERNETES_SERVICE_HOST": "fd00::1",
                                                  "KUBERNETES_SERVICE_PORT": "443"})
    assert config.cluster["server"] == "https://[fd00::1]:443"
    assert kubeapi.context_namespace(config) is None


# -- requests and errors ----------------------------------------------------------------------------------------


def client_for(url: str) -> kubeapi.Client:
    return kubeapi.Client(pykube.KubeConfig(kubeconfig(url, token="t")))


@pytest.mark.parametrize(("code", "reason"), [(404, "NotFound"), (409, "AlreadyExists"), (422, "Invalid")])
def test_a_refusal_carries_its_status_and_the_api_servers_message(code: int, reason: str) -> None:
    with serve(lambda _: status(code, reason, f"the server says {code}")) as fake, \
            pytest.raises(kubeapi.ApiError) as raised:
        client_for(fake.url).create(kubeapi.JOBS, "team-a", {"kind": "Job"})
    assert raised.value.status == code and raised.value.message == f"the server says {code}"
    assert f'"code": {code}' in raised.value.body


def test_an_unreachable_server_is_a_connection_error_not_an_api_error() -> None:
    with serve(lambda _: Answer()) as fake:
        url = fake.url
    with pytest.raises(requests.ConnectionError):
        client_for(url).get(kubeapi.SECRETS, "team-a", "s")


def test_a_kubeconfigs_proxy_url_carries_the_requests() -> None:
    with serve(lambda _: Answer(body={"items": []})) as proxy:
        doc = kubeconfig("http://api.invalid:6443", token="t")
        doc["clusters"][0]["cluster"]["proxy-url"] = proxy.url
        kubeapi.Client(pykube.KubeConfig(doc)).list(kubeapi.PODS, "team-a")
    assert [(r.path, r.headers["host"]) for r in proxy.requests] == [("/api/v1/namespaces/team-a/pods",
                                                                      "api.invalid:6443")]


def test_patches_say_their_kind_and_reach_the_status_subresource() -> None:
    with serve(lambda r: Answer(body=r.body if isinstance(r.body, dict) else {})) as fake:
        client = client_for(fake.url)
        client.patch(JOB, "team-a", "copy", {"status": {"phase": "running"}}, subresource="status")
        client.patch(JOB, "team-a", "copy", [{"op": "test", "path": "/x", "value": 1}],
                     content_type=kubeapi.JSON_PATCH)
        client.patch(kubeapi.JOBS, "team-a", "j", {"spec": {"suspend": True}},
                     content_type=kubeapi.STRATEGIC_MERGE_PATCH)
        client.delete(kubeapi.PODS, "team-a", "p", grace_period_seconds=0)
        client.delete(kubeapi.JOBS, "team-a", "j", propagation_policy="Background")
        now = dt.datetime(2025, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
        client.create(kubeapi.EVENTS, "team-a", {"firstTimestamp": now})
        client.create(kubeapi.TOKEN_REVIEWS, None, {"spec": {"token": "x"}})
        with pytest.raises(ValueError, match="cluster-scoped"):
            client.create(kubeapi.TOKEN_REVIEWS, "team-a", {})
    seen = [(r.method, r.path, r.headers.get("content-type"), r.query) for r in fake.requests]
    assert seen == [
        ("PATCH", f"{JOB_PATH}/copy/status", kubeapi.MERGE_PATCH, {}),
        ("PATCH", f"{JOB_PATH}/copy", kubeapi.JSON_PATCH, {}),
        ("PATCH", "/apis/batch/v1/namespaces/team-a/jobs/j", kubeapi.STRATEGIC_MERGE_PATCH, {}),
        ("DELETE", "/api/v1/namespaces/team-a/pods/p", None, {"gracePeriodSeconds": "0"}),
        ("DELETE", "/apis/batch/v1/namespaces/team-a/jobs/j", None, {"propagationPolicy": "Background"}),
        ("POST", "/api/v1/namespaces/team-a/events", "application/json", {}),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", "application/json", {}),
    ]
    assert fake.requests[5].body == {"firstTimestamp": "2025-05-06T07:08:09+00:00"}  # RFC 3339, as before


# -- watches ----------------------------------------------------------------------------------------------------


def test_a_watch_asks_the_server_to_end_it_and_waits_a_little_longer_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(lambda _: Answer(events=[{"type": "ADDED", "object": job("5")}])) as fake:
        client = client_for(fake.url)
        sent: list[Any] = []
        original = client._http.session.request

        def spy(*args: Any, **kwargs: Any) -> Any:
            sent.append(kwargs["timeout"])
            return original(*args, **kwargs)

        monkeypatch.setattr(client._http.session, "request", spy)
        events = list(client.watch(JOB, "team-a", field_selector="metadata.name=copy"))
    assert [e["object"]["metadata"]["resourceVersion"] for e in events] == ["5"]
    assert fake.requests[0].query == {"watch": "true", "timeoutSeconds": "60", "fieldSelector": "metadata.name=copy"}
    assert sent == [(kubeapi.CONNECT_TIMEOUT_SECONDS, 60 + kubeapi.WATCH_READ_MARGIN_SECONDS)]


def test_a_gone_watch_raises_410() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                        "message": "too old resource version: 5 (9)"}}
    with serve(lambda _: Answer(events=[gone])) as fake, pytest.raises(kubeapi.ApiError) as raised:
        list(client_for(fake.url).watch(JOB, "team-a", resource_version="5"))
    assert raised.value.status == 410 and "too old" in raised.value.message


def test_follow_resumes_from_the_last_version_and_reads_again_after_410_gone() -> None:
    versions = iter(["5", "9"])  # what a GET finds: at first, and after the watch's version expired

    def respond(request: Request) -> Answer:
        if request.path == f"{JOB_PATH}/copy":
            return Answer(body=job(next(versions)))
        since = request.query.get("resourceVersion")
        if since == "5":  # a change, then the server ends the watch (its timeoutSeconds)
            return Answer(events=[{"type": "MODIFIED", "object": job("6")}])
        if since == "6":
            return Answer(events=[{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                               "message": "too old resource version"}}])
        return Answer(events=[{"type": "MODIFIED", "object": job("10")}, {"type": "DELETED", "object": job("11")}])

    with serve(respond) as fake:
        seen = [body["metadata"]["resourceVersion"] for body in client_for(fake.url).follow(JOB, "team-a", "copy")]
    assert seen == ["5", "6", "9", "10"]
    watched = [r.query.get("resourceVersion") for r in fake.requests if r.query.get("watch")]
    assert watched == ["5", "6", "9"]
    assert all(r.query["fieldSelector"] == "metadata.name=copy" for r in fake.requests if r.query.get("watch"))


def test_follow_of_an_object_deleted_while_its_watch_was_gone_ends() -> None:
    answers = iter([Answer(body=job("5")), status(404, "NotFound", "gone")])

    def respond(request: Request) -> Answer:
        if request.query.get("watch"):
            return Answer(events=[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}])
        return next(answers)

    with serve(respond) as fake:
        assert [b["metadata"]["resourceVersion"] for b in client_for(fake.url).follow(JOB, "team-a", "copy")] == ["5"]


# -- kopf's own connection --------------------------------------------------------------------------------------


def test_kopf_logs_in_with_the_configuration_of_our_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from datamover.controller import main

    (tmp_path / "token").write_text("rotated-1")
    doc = kubeconfig("https://api.example:6443/", tokenFile="token")
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(b"CA PEM").decode()
    monkeypatch.setenv("KUBECONFIG", str(write(tmp_path / "config", doc)))
    kubeapi.shared.cache_clear()
    try:
        info = main.login(settings=kopf.OperatorSettings())
    finally:
        kubeapi.shared.cache_clear()
    assert (info.server, info.token, info.default_namespace) == ("https://api.example:6443", "rotated-1", "team-a")
    assert info.ca_path is not None and Path(str(info.ca_path)).read_bytes() == b"CA PEM"
    assert info.certificate_path is None and info.private_key_path is None
