"""The Kubernetes API as our glue uses it: plain-dict requests over pykube-ng, one error type, resumable watches.

pykube-ng's HTTPClient does the HTTP: it builds each URL and applies the kubeconfig's server, CA, client certificate,
token, exec plugin or auth provider to every request. What is written here by hand, each for the reason given where
it is: finding the configuration as kubectl and the kubernetes client do (KUBECONFIG's files merged, else
~/.kube/config, else the pod's service account), a service account token read again as the kubelet rotates it,
certificate data in private temporary files, a cluster's proxy-url, the error type, and the watch (pykube-ng's
misses ERROR events, so a 410 Gone went unnoticed). Our code sends and receives plain dicts, as the API server's
JSON: no generated models.

The controller, the worker, the CLI and the facade use it; nothing below them may (.importlinter).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as dt
import functools
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pykube
import pykube.http
import requests
import requests.auth
import urllib3
import yaml

from datamover.api import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

# The API server ends every request that is not a watch after 60 s (kube-apiserver --request-timeout), so a read
# that waits longer is on a dead connection: waiting that long cuts no answer short. (The kubernetes client had no
# timeout: a request on a blackholed connection waited forever.)
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
# A watch asks the API server to end it after this long (timeoutSeconds); the client gives up on a silent connection
# this much later, so that only a dead connection, never a quiet watch, ends in a read timeout.
WATCH_SECONDS = 60
WATCH_READ_MARGIN_SECONDS = 10.0
# Connections kept open to the API server: the operator's reconcilers, Job creators, event poster and notifiers all
# share one client, and a smaller pool would close (and later re-handshake) connections beyond its size.
CONNECTIONS = 32
# A failed connection is tried again at once, three times (urllib3's default, which the kubernetes client kept):
# connect errors for every request, read errors only for idempotent methods, so a create or patch is never sent twice.
RETRIES = 3
# How often a token file is read again: client-go's and the kubernetes client's period.
TOKEN_REFRESH_SECONDS = 60.0
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: its apiVersion ("v1", "batch/v1", "datamover.io/v1alpha1") and plural."""

    api_version: str
    plural: str
    namespaced: bool = True


SECRETS = Resource("v1", "secrets")
CONFIG_MAPS = Resource("v1", "configmaps")
EVENTS = Resource("v1", "events")
PODS = Resource("v1", "pods")
SERVICE_ACCOUNTS = Resource("v1", "serviceaccounts")
JOBS = Resource("batch/v1", "jobs")
ROLES = Resource("rbac.authorization.k8s.io/v1", "roles")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io/v1", "rolebindings")
TOKEN_REVIEWS = Resource("authentication.k8s.io/v1", "tokenreviews", namespaced=False)
SUBJECT_ACCESS_REVIEWS = Resource("authorization.k8s.io/v1", "subjectaccessreviews", namespaced=False)
MIGRATION_JOBS = Resource(f"{GROUP}/{VERSION}", PLURAL)


class ApiError(Exception):
    """The API server refused a request, or ended a watch with an ERROR event.

    `status` is the HTTP status code (404, 409, 410, 422, ...), `reason` the HTTP reason phrase (or the Status's
    reason, for a watch's ERROR event), `message` the Status's message (what kubectl prints), `body` the raw answer.
    """

    def __init__(self, status: int, reason: str, message: str, body: str = "") -> None:
        super().__init__(f"({status}) {reason}: {message}")
        self.status, self.reason, self.message, self.body = status, reason, message, body

    @classmethod
    def of(cls, response: requests.Response) -> ApiError:
        body = response.text
        message = body
        with contextlib.suppress(ValueError):
            status = json.loads(body)
            if isinstance(status, dict) and status.get("kind") == "Status" and status.get("message"):
                message = str(status["message"])
        return cls(response.status_code, response.reason or "", message, body)


class ConfigError(Exception):
    """Neither a kubeconfig nor the pod's service account could be used; the message says what was looked for."""


# -- configuration ----------------------------------------------------------------------------------------------

# Fields of a kubeconfig that name a file, relative to the kubeconfig that holds them.
_FILE_FIELDS = {"cluster": ("certificate-authority",), "user": ("client-certificate", "client-key", "tokenFile")}
# Fields that hold a file's content inline (base64), and the file field each becomes.
_DATA_FIELDS = {"cluster": ("certificate-authority",), "user": ("client-certificate", "client-key")}


def load_config(kubeconfig: str | None = None, context: str | None = None) -> pykube.KubeConfig:
    """The configuration kubectl would use: the `kubeconfig` file(s), else those $KUBECONFIG lists (merged as kubectl
    merges them: the first file to name a cluster, user or context, or to set current-context, wins), else
    ~/.kube/config, else the pod's service account. `context` overrides the current context of a kubeconfig.

    Written by hand because pykube-ng reads one file only and looks for a service account first. Only the chosen
    context, its cluster and its user are kept; their inline certificate data is written to private files.
    """
    if kubeconfig:
        files = _paths(kubeconfig)
        if not any(f.is_file() for f in files):
            raise ConfigError(f"kubeconfig {kubeconfig} not found")
    else:
        listed = os.environ.get("KUBECONFIG", "")
        files = _paths(listed) if listed else [Path("~/.kube/config").expanduser()]
    documents = [(f, _read_yaml(f)) for f in files if f.is_file()]
    if not documents:
        return in_cluster_config()
    doc = _merged(documents)
    name = context or doc.get("current-context")
    if not name:
        raise ConfigError(f"kubeconfig {os.pathsep.join(map(str, files))}: no current-context (choose one)")
    chosen = _named(doc, "contexts", name, "context")
    cluster = _named(doc, "clusters", chosen.get("cluster"), "cluster")
    user = _named(doc, "users", chosen["user"], "user") if chosen.get("user") else {}
    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig: cluster {chosen.get('cluster')!r} has no server")
    cluster["server"] = str(cluster["server"]).rstrip("/")
    _inline_to_files(cluster, _DATA_FIELDS["cluster"])
    _inline_to_files(user, _DATA_FIELDS["user"])
    return pykube.KubeConfig({
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": name, "context": {**chosen, "cluster": "cluster", "user": "user"}}],
        "current-context": name,
    })


def in_cluster_config(account: Path = SERVICE_ACCOUNT, env: Mapping[str, str] = os.environ) -> pykube.KubeConfig:
    """The pod's service account: the API server from KUBERNETES_SERVICE_HOST/PORT, its CA, and the token as a file
    (read again as it rotates; pykube-ng's own in-cluster configuration reads the token once)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod (KUBERNETES_SERVICE_HOST "
                          "and KUBERNETES_SERVICE_PORT are not set)")
    token, ca = account / "token", account / "ca.crt"
    for path in (token, ca):
        if not path.is_file() or not path.stat().st_size:
            raise ConfigError(f"in-cluster configuration: {path} is missing or empty")
    namespace = account / "namespace"
    context: dict[str, Any] = {"cluster": "cluster", "user": "user"}
    if namespace.is_file():
        context["namespace"] = namespace.read_text().strip()
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return pykube.KubeConfig({
        "clusters": [{"name": "cluster", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": {"tokenFile": str(token)}}],
        "contexts": [{"name": "in-cluster", "context": context}],
        "current-context": "in-cluster",
    })


def context_namespace(config: pykube.KubeConfig) -> str | None:
    """The namespace the configuration's context names, if it names one (kubectl's default namespace)."""
    return cast(str | None, config.contexts[config.current_context].get("namespace") or None)


def _paths(listed: str) -> list[Path]:
    return [Path(p).expanduser() for p in listed.split(os.pathsep) if p]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"kubeconfig {path}: {error}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: not a mapping")
    for section, fields in _FILE_FIELDS.items():
        for entry in doc.get(f"{section}s") or []:
            body = (entry or {}).get(section) or {}
            for key in fields:
                if body.get(key):  # relative to the file that names it, as kubectl reads it
                    body[key] = str(path.parent / Path(body[key]).expanduser())
    return doc


def _merged(documents: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    for _, doc in documents:
        if not merged.get("current-context") and doc.get("current-context"):
            merged["current-context"] = doc["current-context"]
        for section in ("clusters", "users", "contexts"):
            known = {entry.get("name") for entry in merged[section]}
            merged[section].extend(e for e in doc.get(section) or [] if e and e.get("name") not in known)
    return merged


def _named(doc: Mapping[str, Any], section: str, name: Any, key: str) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if entry.get("name") == name:
            return dict(entry.get(key) or {})
    raise ConfigError(f"kubeconfig: no {key} named {name!r}")


_PRIVATE_DIR: list[Path] = []


def _inline_to_files(section: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Turn `<field>-data` (base64) into `<field>`, a file only this user can read, removed at exit.

    By hand because pykube-ng writes such data to a predictable name in the shared temporary directory, readable by
    everyone and taken as it is when it already exists (a client key left readable, a planted CA trusted).
    """
    for field in fields:
        data = section.pop(f"{field}-data", None)
        if not data:
            continue
        if not _PRIVATE_DIR:
            _PRIVATE_DIR.append(Path(tempfile.mkdtemp(prefix="datamover-kube-")))  # mode 0700
            atexit.register(shutil.rmtree, _PRIVATE_DIR[0], ignore_errors=True)
        descriptor, name = tempfile.mkstemp(dir=_PRIVATE_DIR[0], suffix=f".{field}")  # mode 0600
        with os.fdopen(descriptor, "wb") as file:
            file.write(base64.b64decode(data))
        section[field] = name


class TokenFile(requests.auth.AuthBase):
    """A bearer token read from a file, and read again at most every minute: the kubelet rotates a pod's projected
    service account token before it expires, and the API server refuses an expired one. If a later read fails or
    finds the file empty, the last token read is sent."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._path, self._clock = Path(path), clock
        self._token, self._read_at = "", -math.inf
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if now - self._read_at >= TOKEN_REFRESH_SECONDS or not self._token:
                try:
                    token = self._path.read_text().strip()
                except OSError:
                    if not self._token:
                        raise
                    token = ""
                if token:
                    self._token, self._read_at = token, now
            return self._token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request


# -- requests ---------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> str:
    # As the kubernetes client serialized them: a datetime as ISO 8601 / RFC 3339 (e.g. an Event's timestamps).
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Client:
    """Plain-dict requests to one API server. One client is one connection pool; threads may share it."""

    def __init__(self, config: pykube.KubeConfig) -> None:
        self.config = config
        adapter = pykube.http.KubernetesHTTPAdapter(config, pool_maxsize=CONNECTIONS,
                                                    max_retries=urllib3.Retry(RETRIES))
        self._http = pykube.HTTPClient(config, timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
                                       http_adapter=adapter)
        self._http.session.headers["Accept"] = "application/json"
        if config.cluster.get("proxy-url"):  # pykube-ng ignores it; kubectl and the kubernetes client apply it
            proxy = str(config.cluster["proxy-url"])
            self._http.session.proxies.update({"http": proxy, "https": proxy})
        user = config.user
        if user.get("tokenFile") and not user.get("token"):
            # pykube-ng leaves a request that already has an Authorization header as it is.
            self._http.session.auth = TokenFile(str(user["tokenFile"]))

    @property
    def server(self) -> str:
        return str(self._http.url)

    def bearer_token(self) -> str | None:
        """The bearer token requests carry now: the kubeconfig's, its token file's, or an exec plugin's or auth
        provider's (pykube-ng runs those as it sends a request, so one request to /version fetches it)."""
        user = self.config.user
        if user.get("token"):
            return str(user["token"])
        if isinstance(self._http.session.auth, TokenFile):
            return self._http.session.auth.token()
        if "exec" not in user and "auth-provider" not in user:
            return None
        with contextlib.closing(self._http.get(version="", base="/version")) as response:  # its status is no matter
            scheme, _, token = str(response.request.headers.get("Authorization", "")).partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    def request(self, method: str, resource: Resource, namespace: str | None, name: str = "", *,
                subresource: str = "", params: Mapping[str, str] | None = None, body: Any = None,
                content_type: str = "application/json", stream: bool = False,
                timeout: tuple[float, float] | None = None) -> requests.Response:
        """One request; raises ApiError for an answer of 400 or more, requests' exceptions when there is none."""
        if resource.namespaced != bool(namespace):
            raise ValueError(f"{resource.plural}: namespace {namespace!r} for a "
                             f"{'namespaced' if resource.namespaced else 'cluster-scoped'} resource")
        path = "/".join(part for part in (resource.plural, name, subresource) if part)
        kwargs: dict[str, Any] = {"version": resource.api_version, "url": path, "params": dict(params or {}),
                                  "stream": stream}
        if namespace:
            kwargs["namespace"] = namespace
        if body is not None:
            kwargs["data"] = json.dumps(body, default=_json_default)
            kwargs["headers"] = {"Content-Type": content_type}
        if timeout is not None:
            kwargs["timeout"] = timeout
        response = cast(requests.Response, self._http.request(method, **kwargs))
        if response.status_code >= 400:
            with contextlib.closing(response):
                raise ApiError.of(response)
        return response

    def _json(self, method: str, resource: Resource, namespace: str | None, name: str = "",
              **kwargs: Any) -> dict[str, Any]:
        with contextlib.closing(self.request(method, resource, namespace, name, **kwargs)) as response:
            return cast(dict[str, Any], response.json())

    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        return self._json("GET", resource, namespace, name)

    def list(self, resource: Resource, namespace: str | None, *, label_selector: str | None = None,
             field_selector: str | None = None) -> dict[str, Any]:
        """The list object ({"items": [...], "metadata": {"resourceVersion"}}) of what the selectors match."""
        params = {"labelSelector": label_selector, "fieldSelector": field_selector}
        return self._json("GET", resource, namespace, params={k: v for k, v in params.items() if v})

    def create(self, resource: Resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("POST", resource, namespace, body=body)

    def patch(self, resource: Resource, namespace: str | None, name: str, body: Any, *,
              content_type: str = MERGE_PATCH, subresource: str = "") -> dict[str, Any]:
        """A merge patch by default; JSON_PATCH for a list of operations, STRATEGIC_MERGE_PATCH for built-in kinds."""
        return self._json("PATCH", resource, namespace, name, body=body, content_type=content_type,
                          subresource=subresource)

    def delete(self, resource: Resource, namespace: str | None, name: str, *, propagation_policy: str | None = None,
               grace_period_seconds: int | None = None) -> None:
        params = {}
        if propagation_policy is not None:
            params["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            params["gracePeriodSeconds"] = str(grace_period_seconds)
        self.request("DELETE", resource, namespace, name, params=params).close()

    def watch(self, resource: Resource, namespace: str | None, *, field_selector: str | None = None,
              label_selector: str | None = None, resource_version: str | None = None,
              timeout_seconds: int = WATCH_SECONDS, bookmarks: bool = False) -> Iterator[dict[str, Any]]:
        """The events ({"type", "object"}) of one watch request, until the API server ends it after `timeout_seconds`.

        Without `resource_version` the API server first sends what exists now as ADDED events. An ERROR event raises
        ApiError with its code: 410 Gone says `resource_version` is too old, and the caller reads the current state
        again and watches from there (`follow` does). With `bookmarks`, BOOKMARK events (an object with only a newer
        resourceVersion) come too. By hand: pykube-ng's watch does not recognise ERROR events.
        """
        params = {"watch": "true", "timeoutSeconds": str(timeout_seconds), "labelSelector": label_selector,
                  "fieldSelector": field_selector, "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true" if bookmarks else None}
        response = self.request("GET", resource, namespace, params={k: v for k, v in params.items() if v},
                                stream=True,
                                timeout=(CONNECT_TIMEOUT_SECONDS, timeout_seconds + WATCH_READ_MARGIN_SECONDS))
        with contextlib.closing(response):
            for line in response.iter_lines():
                if not line:
                    continue
                event = cast(dict[str, Any], json.loads(line))
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ApiError(int(status.get("code") or 500), str(status.get("reason") or ""),
                                   str(status.get("message") or ""), line.decode())
                yield event

    def follow(self, resource: Resource, namespace: str, name: str, *,
               timeout_seconds: int = WATCH_SECONDS) -> Iterator[dict[str, Any]]:
        """One object as it is now, then each new version of it, until it is deleted.

        A watch from the last version seen, started again whenever the API server ends it; when the API server no
        longer has that version (410 Gone), the object is read again and the watch goes on from there. Raises
        ApiError (404) if the object is not there at first.
        """
        body = self.get(resource, namespace, name)
        yield body
        version = body["metadata"]["resourceVersion"]
        while True:
            try:
                for event in self.watch(resource, namespace, field_selector=f"metadata.name={name}",
                                        resource_version=version, timeout_seconds=timeout_seconds):
                    if event["type"] == "DELETED":
                        return
                    body = event["object"]
                    version = body["metadata"]["resourceVersion"]
                    yield body
            except ApiError as error:
                if error.status != 410:
                    raise
                try:
                    body = self.get(resource, namespace, name)
                except ApiError as missing:
                    if missing.status == 404:
                        return
                    raise
                version = body["metadata"]["resourceVersion"]
                yield body


@functools.cache
def shared() -> Client:
    """The process's one client (one connection pool), configured by load_config() on first use."""
    return Client(load_config())
