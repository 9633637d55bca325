"""Defaults are decided once, in the CRD's schema (the API server applies them); the code's and the chart's copies
must say the same, or a job behaves differently depending on whether it passed the API server."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from datamover.api import FilterSpec, Location, MigrationSpec, parse_quantity
from datamover.controller import handlers

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "datamover.io_migrationjobs.yaml"


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("t_l_s", "tls")


def _schema_defaults(properties: dict[str, Any]) -> dict[str, Any]:
    return {_snake(name): prop["default"] for name, prop in properties.items() if "default" in prop}


def _code_defaults(cls: type) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    factories = {f.name: f.default_factory() for f in dataclasses.fields(cls)
                 if f.default_factory is not dataclasses.MISSING}
    return {**defaults, **factories}


def test_the_spec_model_defaults_are_the_schema_defaults() -> None:
    schema = _schema_defaults(_spec_schema())
    code = _code_defaults(MigrationSpec)
    assert schema, "the CRD declares no defaults: is this the right schema?"
    schema["part_size"] = parse_quantity(schema["part_size"], "partSize")
    schema["filter"] = FilterSpec.from_spec(schema["filter"])  # {}: the filter that selects everything
    assert {k: code.get(k, "<no default in MigrationSpec>") for k in schema} == schema
    # ... and a spec with nothing optional set gets exactly those values.
    minimal = MigrationSpec.from_spec({"source": {"bucket": "a"}, "destination": {"bucket": "b"}})
    assert {k: getattr(minimal, k) for k in schema} == schema


@pytest.mark.parametrize("side", ["source", "destination"])
def test_the_location_model_defaults_are_the_schema_defaults(side: str) -> None:
    schema = _schema_defaults(_spec_schema()[side]["properties"])
    assert schema == {k: _code_defaults(Location).get(k) for k in schema}
    minimal = Location.from_spec({"bucket": "b"}, side)
    assert {k: getattr(minimal, k) for k in schema} == schema


def test_the_chart_and_the_operator_default_to_the_same_concurrency_limit() -> None:
    values = yaml.safe_load((REPO / "charts" / "datamover" / "values.yaml").read_text())
    assert values["maxConcurrentJobs"] == handlers.DEFAULT_MAX_CONCURRENT_JOBS

