"""The objects the operator creates per MigrationJob: owned, least-privilege, restricted-pod-security workers."""

from __future__ import annotations

from typing import Any

import pytest

from datamover.api import EXIT_PERMANENT_FAILURE, MigrationSpec, SpecError
from datamover.controller import resources

OWNER: dict[str, Any] = {"metadata": {"name": "copy-photos", "namespace": "team-a", "uid": "u-1"}}
SPEC = MigrationSpec.from_spec({
    "source": {"bucket": "a", "credentialsSecretRef": {"name": "src"}},
    "destination": {"bucket": "b", "credentialsSecretRef": {"name": "dst"}},
    "parallelism": 3,
    "abortGracePeriodSeconds": 7,
})


def test_everything_is_owned_by_the_migrationjob() -> None:
    for manifest in (resources.service_account(OWNER), resources.role(OWNER), resources.role_binding(OWNER),
                     resources.job(OWNER, SPEC, resources.WorkerSettings())):
        (ref,) = manifest["metadata"]["ownerReferences"]
        assert ref["uid"] == "u-1" and ref["controller"] is True and ref["kind"] == "MigrationJob"


def test_worker_role_reaches_only_its_own_migrationjob() -> None:
    rules = resources.role(OWNER)["rules"]
    assert all(rule["resourceNames"] == ["copy-photos"] for rule in rules)
    assert {r for rule in rules for r in rule["resources"]} == {"migrationjobs", "migrationjobs/status"}
    assert {v for rule in rules for v in rule["verbs"]} == {"get", "list", "watch", "patch"}


def test_job_is_indexed_with_one_pod_per_shard_and_secrets_as_env() -> None:
    job = resources.job(OWNER, SPEC, resources.WorkerSettings(image="example/dm:1"))
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [EXIT_PERMANENT_FAILURE]
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 7 and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"src", "dst"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_workers_get_a_writable_tmp_on_their_read_only_root() -> None:
    pod = resources.job(OWNER, SPEC, resources.WorkerSettings())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    (volume,) = (v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_child_names_stay_valid_label_values() -> None:
    name = resources.child_name("x" * 250)
    assert len(name) <= 52 and name.startswith("datamover-")
    assert resources.child_name("x" * 250) != resources.child_name("x" * 249)


def test_the_report_and_keys_from_stores_get_their_own_credentials() -> None:
    spec = MigrationSpec.from_spec({
        "source": {"bucket": "a", "credentialsSecretRef": {"name": "src"}},
        "destination": {"bucket": "b", "credentialsSecretRef": {"name": "dst"}},
        "report": {"location": {"bucket": "audit", "credentialsSecretRef": {"name": "audit"}}},
        "keysFrom": {"location": {"bucket": "inv", "credentialsSecretRef": {"name": "inv"}}, "format": "lines",
                     "key": "keys.txt"},
    })
    (container,) = resources.job(OWNER, spec, resources.WorkerSettings())["spec"]["template"]["spec"]["containers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs["DATAMOVER_REPORT_ACCESS_KEY_ID"] == "audit"
    assert refs["DATAMOVER_KEYSFROM_SECRET_ACCESS_KEY"] == "inv"
    assert refs["DATAMOVER_DESTINATION_ACCESS_KEY_ID"] == "dst"


def test_a_missing_report_secret_is_named_before_any_worker_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from datamover.controller import handlers
    from tests.fakekube import Answer, Request, client_of, serve, status

    def respond(request: Request) -> Answer:
        if request.path == "/api/v1/namespaces/team-a/secrets/audit":
            return status(404, "NotFound", 'secrets "audit" not found')
        return Answer(body={"kind": "Secret", "data": {"accessKeyId": "aw==", "secretAccessKey": "cw=="}})

    spec = MigrationSpec.from_spec({
        "source": {"bucket": "a", "credentialsSecretRef": {"name": "src"}}, "destination": {"bucket": "b"},
        "report": {"location": {"bucket": "audit", "credentialsSecretRef": {"name": "audit"}}},
    })
    with serve(respond) as fake:
        client = client_of(fake)
        monkeypatch.setattr(handlers, "_api", lambda: client)
        problem = handlers._reference_error("team-a", spec)
    assert problem is not None and problem.reason == "SecretNotFound"
    assert "spec.report.location.credentialsSecretRef: Secret team-a/audit not found" in problem.message
    assert [r.path for r in fake.requests] == ["/api/v1/namespaces/team-a/secrets/src",
                                               "/api/v1/namespaces/team-a/secrets/audit"]


def test_worker_identity_annotates_the_service_account_and_labels_the_pods_without_touching_ours() -> None:
    raw = {"source": {"bucket": "a"}, "destination": {"bucket": "b"},
           "workerIdentity": {"serviceAccountAnnotations": {"azure.workload.identity/client-id": "c-1"},
                              "podLabels": {"azure.workload.identity/use": "true", "team": "data"}}}
    owner = {**OWNER, "spec": raw}
    account = resources.service_account(owner)
    assert account["metadata"]["annotations"] == {"azure.workload.identity/client-id": "c-1"}
    assert account["metadata"]["name"] == resources.job(owner, SPEC, resources.WorkerSettings())["spec"][
        "template"]["spec"]["serviceAccountName"]
    labels = resources.job(owner, MigrationSpec.from_spec(raw), resources.WorkerSettings())["spec"]["template"][
        "metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true" and labels["team"] == "data"
    assert labels[resources.LABEL_JOB] == "copy-photos"
    assert "annotations" not in resources.service_account(OWNER)["metadata"]  # none asked for, none written


def test_the_operators_own_pod_labels_cannot_be_taken() -> None:
    with pytest.raises(SpecError, match=r"datamover\.io/migrationjob are the operator's own labels"):
        MigrationSpec.from_spec({"source": {"bucket": "a"}, "destination": {"bucket": "b"},
                                 "workerIdentity": {"podLabels": {"datamover.io/migrationjob": "other"}}})
