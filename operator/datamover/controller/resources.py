"""The Kubernetes objects the operator creates for one MigrationJob, as plain manifests built by pure functions.

Per job: a ServiceAccount, a Role that lets the workers read this one MigrationJob and patch its status (nothing
else: credentials reach the pods as Secret-backed environment variables, so the workers never read Secrets), its
RoleBinding, and an Indexed batch/v1 Job whose pod i migrates shard i. All are owned by the MigrationJob, so deleting it
garbage-collects them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from datamover.api import (
    API_VERSION,
    ENV_MEMORY_LIMIT,
    ENV_NAME,
    ENV_NAMESPACE,
    ENV_POD,
    EXIT_PERMANENT_FAILURE,
    GROUP,
    KIND,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGER,
    PLURAL,
    Location,
    MigrationSpec,
    WorkerIdentitySpec,
    credential_env,
)

RETRIES_PER_WORKER = 2


@dataclass(frozen=True)
class WorkerSettings:
    """How worker pods are run: set by the operator's deployment (Helm values), not by MigrationJobs."""

    image: str = "ghcr.io/datamover/datamover:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WorkerSettings:
        return cls(
            image=env.get("DATAMOVER_WORKER_IMAGE", cls.image),
            image_pull_policy=env.get("DATAMOVER_WORKER_IMAGE_PULL_POLICY", cls.image_pull_policy),
            resources=json.loads(env.get("DATAMOVER_WORKER_RESOURCES", "{}")),
        )


def child_name(job_name: str) -> str:
    """Name shared by the Job, ServiceAccount, Role and RoleBinding of a MigrationJob; stays a valid label value."""
    name = f"datamover-{job_name}"
    if len(name) <= 52:
        return name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:8]
    return f"{name[:43]}-{digest}"


def labels(job_name: str) -> dict[str, str]:
    return {LABEL_JOB: job_name, LABEL_MANAGED_BY: MANAGER}


def _metadata(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "name": child_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": labels(meta["name"]),
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def service_account(owner: Mapping[str, Any]) -> dict[str, Any]:
    metadata = _metadata(owner)
    # The annotations that bind a cloud identity to it (IRSA, Workload Identity); the spec was parsed before any
    # child is made, so a bad one never gets here.
    identity = WorkerIdentitySpec.from_spec((owner.get("spec") or {}).get("workerIdentity") or {})
    if identity.service_account_annotations:
        metadata["annotations"] = dict(identity.service_account_annotations)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        "automountServiceAccountToken": True,
    }


def role(owner: Mapping[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner),
        "rules": [
            # Read its own MigrationJob (watch: to see spec.abort within a second).
            {"apiGroups": [GROUP], "resources": [PLURAL], "resourceNames": [name], "verbs": ["get", "list", "watch"]},
            # Report progress into status.workers[i].
            {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "resourceNames": [name], "verbs": ["patch"]},
        ],
    }


def role_binding(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = _metadata(owner)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
        "subjects": [{"kind": "ServiceAccount", "name": meta["name"], "namespace": meta["namespace"]}],
    }


def _credential_env(side: str, location: Location) -> list[dict[str, Any]]:
    if location.secret_name is None:
        return []
    wanted = location.secret_keys
    # Only the required keys must exist for the pod to start; the operator checks "one of" before creating it.
    keys = [(k, False) for k in wanted.required] + [(k, True) for k in wanted.one_of + wanted.optional]
    return [
        {
            "name": credential_env(side, key),
            "valueFrom": {"secretKeyRef": {"name": location.secret_name, "key": key, "optional": optional}},
        }
        for key, optional in keys
    ]


RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def job(owner: Mapping[str, Any], spec: MigrationSpec, settings: WorkerSettings) -> dict[str, Any]:
    meta = _metadata(owner)
    container: dict[str, Any] = {
        "name": "worker",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["datamover-worker"],
        "env": [
            {"name": ENV_NAME, "value": owner["metadata"]["name"]},
            {"name": ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": ENV_POD, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            # The worker sizes its buffer budget from it (engine.budget), so its memory stays under the limit.
            {"name": ENV_MEMORY_LIMIT,
             "valueFrom": {"resourceFieldRef": {"containerName": "worker", "resource": "limits.memory"}}},
            *(env for side, _, location in spec.credentialed_locations() for env in _credential_env(side, location)),
        ],
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        # The root filesystem is read-only; Python's tempfile (and the libraries using it) need a writable /tmp.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if settings.resources:
        container["resources"] = dict(settings.resources)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.parallelism,
            "parallelism": spec.parallelism,
            "backoffLimitPerIndex": RETRIES_PER_WORKER,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "worker",
                            "operator": "In",
                            "values": [EXIT_PERMANENT_FAILURE],
                        },
                    }
                ]
            },
            "template": {
                # The user's labels (Azure Workload Identity's webhook selects pods by one), ours last: they win.
                "metadata": {"labels": {**spec.worker_identity.pod_labels, **labels(owner["metadata"]["name"])}},
                "spec": {
                    "serviceAccountName": meta["name"],
                    "restartPolicy": "Never",
                    # The kubelet's SIGKILL after this is the hard stop of an abort.
                    "terminationGracePeriodSeconds": spec.abort_grace_period_seconds,
                    "securityContext": RESTRICTED_POD_SECURITY,
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }
