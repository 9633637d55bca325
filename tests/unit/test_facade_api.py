"""The facade's requests to the API server, against a stand-in one on loopback: a TokenReview and a SubjectAccessReview
per call as the API server expects them, then the CRs; the API server's refusals reach the Gelato client as JSON."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from datamover.facade import server
from tests.fakekube import Answer, Request, client_of, serve, status

JOBS = "/apis/datamover.io/v1alpha1/namespaces/tenant-a/migrationjobs"
PLANS = "/apis/datamover.io/v1alpha1/namespaces/tenant-a/migrationplans"
USER = {"username": "alice", "uid": "u-1", "groups": ["gelato", "system:authenticated"], "extra": {"team": ["data"]}}


def api_server(objects: Callable[[Request], Answer], *, token_ok: bool = True,
               allowed: Callable[[dict[str, Any]], bool] = lambda _: True) -> Callable[[Request], Answer]:
    """Reviews answered as a real API server answers them; everything else by `objects`."""

    def respond(request: Request) -> Answer:
        if request.path == "/apis/authentication.k8s.io/v1/tokenreviews":
            user = USER if token_ok else {}
            return Answer(201, {**request.body, "status": {"authenticated": token_ok, "user": user}})
        if request.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            attributes = request.body["spec"]["resourceAttributes"]
            return Answer(201, {**request.body, "status": {"allowed": allowed(attributes)}})
        return objects(request)

    return respond


def call(respond: Callable[[Request], Answer], monkeypatch: pytest.MonkeyPatch, method: str,
         path: str) -> tuple[int, Any, list[Request]]:
    with serve(respond) as fake:
        client = client_of(fake)
        monkeypatch.setattr(server, "_api", lambda: client)

        async def go() -> tuple[int, Any]:
            async with TestClient(TestServer(server.application(server.Settings()))) as http:
                answer = await http.request(method, path, headers={"Authorization": "Bearer tok-1"})
                return answer.status, await answer.json()

        code, body = asyncio.run(go())
    return code, body, fake.requests


def test_a_call_is_reviewed_as_its_caller_then_answered_from_the_crs(monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"metadata": {"name": "run-1", "namespace": "tenant-a", "labels": {"datamover.io/plan": "p-1"},
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"source": {"bucket": "a"}, "destination": {"bucket": "b"}}, "status": {"phase": "running"}}
    plan = {"metadata": {"name": "p-1", "annotations": {}}, "spec": {}}

    def objects(request: Request) -> Answer:
        return Answer(body={"items": [job] if request.path == JOBS else [plan]})

    code, body, requests = call(api_server(objects), monkeypatch, "GET", "/v1/tenant-a/jobs")
    assert code == 200 and [j["id"] for j in body["jobs"]] == ["run-1"]
    review = requests[0]
    assert review.body == {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                           "spec": {"token": "tok-1"}}
    access = [r.body["spec"] for r in requests if r.path.endswith("/subjectaccessreviews")]
    assert access[0] == {"user": "alice", "uid": "u-1", "groups": ["gelato", "system:authenticated"],
                         "extra": {"team": ["data"]},
                         "resourceAttributes": {"namespace": "tenant-a", "verb": "list", "group": "datamover.io",
                                                "resource": "migrationjobs"}}
    assert [r.path for r in requests if r.method == "GET"] == [JOBS, PLANS]


def test_a_refused_token_is_401_and_nothing_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    code, body, requests = call(api_server(lambda _: Answer(), token_ok=False), monkeypatch, "GET", "/v1/tenant-a/jobs")
    assert code == 401 and "not accepted" in body["message"]
    assert len(requests) == 1


def test_a_caller_rbac_refuses_gets_403(monkeypatch: pytest.MonkeyPatch) -> None:
    code, body, _ = call(api_server(lambda _: Answer(), allowed=lambda _: False), monkeypatch, "GET",
                         "/v1/tenant-a/jobs")
    assert code == 403 and body["message"] == "user 'alice' may not list migrationjobs in namespace 'tenant-a'"


def test_a_missing_job_is_404_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    respond = api_server(lambda _: status(404, "NotFound", 'migrationjobs "gone" not found'))
    code, body, _ = call(respond, monkeypatch, "GET", "/v1/tenant-a/jobs/gone")
    assert (code, body) == (404, {"code": 404, "message": "job 'gone' not found"})


@pytest.mark.parametrize(("refusal", "answered"), [(403, 403), (409, 409), (500, 502)])
def test_an_api_server_refusal_reaches_the_client_with_its_message(
        refusal: int, answered: int, monkeypatch: pytest.MonkeyPatch) -> None:
    respond = api_server(lambda _: status(refusal, "Refused", "the API server's own words"))
    code, body, _ = call(respond, monkeypatch, "GET", "/v1/tenant-a/plans")
    assert (code, body) == (answered, {"code": answered, "message": "the API server's own words"})


def test_policies_are_listed_by_their_label(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = {"metadata": {"name": "nightly", "labels": {"datamover.io/gelato-policy": "policy"},
                           "creationTimestamp": "2026-01-01T00:00:00Z"},
              "data": {"name": "nightly", "type": "cron", "tiggerProperties": "0 0 2 * * *"}}
    code, body, requests = call(api_server(lambda _: Answer(body={"items": [policy]})), monkeypatch, "GET",
                                "/v1/tenant-a/policies")
    assert code == 200 and [p["id"] for p in body["policies"]] == ["nightly"]
    (listed,) = [r for r in requests if r.method == "GET"]
    assert listed.path == "/api/v1/namespaces/tenant-a/configmaps"
    assert listed.query == {"labelSelector": "datamover.io/gelato-policy=policy"}
