"""Offline JSON schemas for kubeconform: its default schemas are downloaded from the internet, which we cannot reach.

Two sources, both converted by this module (no third-party converter):
- a CustomResourceDefinition's `openAPIV3Schema` (e.g. crds/datamover.io_migrationjobs.yaml), for unit tests;
- a real API server's `/openapi/v3/<group-version>` documents, for built-in kinds (and CRDs the server serves).

Strict conversion adds `additionalProperties: false` to every object schema that lists its properties and does not
preserve unknown fields, so `kubeconform -strict` also rejects misspelt or misplaced fields (kubeconform's -strict
itself only rejects duplicate keys; the strictness must be in the schema). Schemas are written as
`<dir>/<group>/<kind>_<version>.json`, matching SCHEMA_LOCATION; kubeconform calls the core group `v1`.

    python tools/kubeconform/schemas.py --crd crds/datamover.io_migrationjobs.yaml --out /tmp/schemas
    python tools/kubeconform/schemas.py --from-cluster --out /tmp/schemas   # kubectl and $KUBECONFIG
    kubeconform -strict manifests/install.yaml \
        -schema-location "/tmp/schemas/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

SCHEMA_LOCATION = "{dir}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json"
GVK = tuple[str, str, str]  # group ("" for core), version, kind
_REF_PREFIX = "#/components/schemas/"


def schema_location(directory: Path) -> str:
    """The -schema-location template for schemas written by write()."""
    return SCHEMA_LOCATION.format(dir=directory)


def schema_path(directory: Path, group: str, version: str, kind: str) -> Path:
    # kubeconform splits apiVersion on "/": for the core group "v1" its {{ .Group }} is "v1".
    return directory / (group or version) / f"{kind.lower()}_{version}.json"


def strictify(schema: Any) -> Any:
    """A copy where every object schema with listed properties forbids fields it does not list."""
    if isinstance(schema, list):
        return [strictify(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strictify(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _nullable(schema: Any) -> Any:
    """OpenAPI's `nullable: true` in JSON Schema terms: null is an allowed type."""
    if isinstance(schema, list):
        return [_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _nullable(value) for key, value in schema.items()}
    # Only the keyword, a boolean: in a `properties` map, "nullable" is the name of a field (as in a CRD's own
    # schema, JSONSchemaProps), whose value is a schema that must stay.
    if isinstance(out.get("nullable"), bool) and out.pop("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _rewrite_refs(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_rewrite_refs(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _rewrite_refs(value) for key, value in schema.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
        out["$ref"] = "#/definitions/" + ref[len(_REF_PREFIX):]
    return out


def _refs(schema: Any) -> Iterable[str]:
    if isinstance(schema, list):
        for item in schema:
            yield from _refs(item)
    elif isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            yield ref[len(_REF_PREFIX):]
        for value in schema.values():
            yield from _refs(value)


def _reachable(components: Mapping[str, Any], root: str) -> list[str]:
    seen: list[str] = []
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or name not in components:
            continue
        seen.append(name)
        todo.extend(_refs(components[name]))
    return sorted(seen)


def from_openapi_v3(document: Mapping[str, Any], *, strict: bool = True) -> dict[GVK, dict[str, Any]]:
    """One self-contained schema per kind in an API server's /openapi/v3/<group-version> document."""
    components: Mapping[str, Any] = document.get("components", {}).get("schemas", {})
    result: dict[GVK, dict[str, Any]] = {}
    for name, schema in components.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            key = (gvk.get("group", ""), gvk["version"], gvk["kind"])
            definitions = {dep: _nullable(_rewrite_refs(components[dep])) for dep in _reachable(components, name)}
            if strict:
                definitions = strictify(definitions)
            result[key] = {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "$ref": f"#/definitions/{name}",
                "definitions": definitions,
            }
    return result


def from_crd(crd: Mapping[str, Any], *, strict: bool = True) -> dict[GVK, dict[str, Any]]:
    """One schema per served version of a CustomResourceDefinition, with apiVersion/kind pinned to it."""
    spec = crd["spec"]
    result: dict[GVK, dict[str, Any]] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
        # The API server checks metadata itself; the CRD schema may only say `type: object`.
        props["metadata"] = {"type": "object"}
        schema = _nullable(schema)
        if strict:
            schema = strictify(schema)
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        result[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return result


def from_cluster(get_raw: Callable[[str], str], *, strict: bool = True) -> dict[GVK, dict[str, Any]]:
    """Every kind the API server publishes, fetched with get_raw(path) (e.g. `kubectl get --raw PATH`)."""
    index = json.loads(get_raw("/openapi/v3"))
    result: dict[GVK, dict[str, Any]] = {}
    for path in sorted(index.get("paths", {})):
        if path == "api" or path == "apis" or path.count("/") < 1:
            continue  # discovery-only documents (no kinds)
        result.update(from_openapi_v3(json.loads(get_raw(f"/openapi/v3/{path}")), strict=strict))
    return result


def write(schemas: Mapping[GVK, Mapping[str, Any]], directory: Path) -> list[Path]:
    written = []
    for (group, version, kind), schema in sorted(schemas.items()):
        path = schema_path(directory, group, version, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True))
        written.append(path)
    return written


def crds_in(paths: Iterable[Path]) -> list[dict[str, Any]]:
    found = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                found.append(doc)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write the schemas into")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="YAML file with CRDs (repeatable)")
    parser.add_argument("--from-cluster", action="store_true", help="every kind served by kubectl's current cluster")
    parser.add_argument("--no-strict", action="store_true", help="do not forbid unlisted fields")
    args = parser.parse_args(argv)
    schemas: dict[GVK, dict[str, Any]] = {}
    if args.from_cluster:
        def get_raw(path: str) -> str:
            return subprocess.run(["kubectl", "get", "--raw", path], capture_output=True, text=True,
                                  check=True).stdout
        schemas.update(from_cluster(get_raw, strict=not args.no_strict))
    for crd in crds_in(args.crd):
        schemas.update(from_crd(crd, strict=not args.no_strict))
    written = write(schemas, args.out)
    print(f"wrote {len(written)} schemas; use: kubeconform -strict -schema-location '{schema_location(args.out)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
