"""pytest options of the failure matrix: `--matrix-seed=N` (or DATAMOVER_MATRIX_SEED) replays a run exactly,
`--matrix-trials=N` scales the crash matrix. The seed is chosen once per session and printed in the header."""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest

DEFAULT_TRIALS = 20


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("failure matrix")
    group.addoption("--matrix-seed", type=int, default=None,
                    help="seed of the failure matrix (default: $DATAMOVER_MATRIX_SEED, else random, printed)")
    group.addoption("--matrix-trials", type=int, default=None,
                    help=f"crash-matrix trials (default: $DATAMOVER_MATRIX_TRIALS, else {DEFAULT_TRIALS})")


def seed_of(config: pytest.Config) -> int:
    seed = getattr(config, "_datamover_matrix_seed", None)
    if seed is None and hasattr(config, "workerinput"):  # an xdist worker takes the seed its controller printed
        seed = config.workerinput.get("datamover_matrix_seed")
    if seed is None:
        given = config.getoption("--matrix-seed")
        if given is None and os.environ.get("DATAMOVER_MATRIX_SEED"):
            given = int(os.environ["DATAMOVER_MATRIX_SEED"])
        seed = given if given is not None else secrets.randbelow(10**9)
        config._datamover_matrix_seed = seed  # type: ignore[attr-defined]
    return int(seed)


def matrix_trials(config: pytest.Config) -> int:
    given = config.getoption("--matrix-trials")
    if given is None:
        given = int(os.environ.get("DATAMOVER_MATRIX_TRIALS", DEFAULT_TRIALS))
    return int(given)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker runs the matrix with the one seed the header shows."""
    node.workerinput["datamover_matrix_seed"] = seed_of(node.config)


def pytest_report_header(config: pytest.Config) -> str:
    seed = seed_of(config)
    return f"failure matrix: seed {seed} (replay with --matrix-seed={seed}), {matrix_trials(config)} crash trials"


@pytest.fixture(scope="session")
def matrix_seed(request: pytest.FixtureRequest) -> int:
    """The session's failure-matrix seed."""
    return seed_of(request.config)
