"""pytest fixtures for the control-plane part of the test ground; the logic lives in tests.ground.controlplane."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Protocol

import pytest

from tests.ground.controlplane import ControlPlane, start_control_plane
from tests.ground.external import ExternalCluster, e2e_kubeconfig

_startup: dict[str, float] = {}


class Kubectl(Protocol):
    """The `kubectl` fixture: runs the real kubectl, as the admin unless another kubeconfig is given."""

    def __call__(
        self,
        *args: str,
        input: str | None = None,  # named as in subprocess.run
        check: bool = True,
        kubeconfig: Path | str | None = None,
        timeout: float = 120.0,
    ) -> CompletedProcess[str]: ...


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager for the whole session; fails (never skips) if one is missing.

    Under `make e2e` (DATAMOVER_E2E_KUBECONFIG set) it is the cluster that kubeconfig names instead.
    """
    external = e2e_kubeconfig()
    if external is not None:
        yield ExternalCluster.open(external, tmp_path_factory.mktemp("e2e"))  # type: ignore[misc]
        return
    start = time.monotonic()
    with start_control_plane(tmp_path_factory.mktemp("controlplane")) as cp:
        _startup["total"] = time.monotonic() - start
        _startup.update(cp.startup_seconds)
        yield cp


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    run: Callable[..., CompletedProcess[str]] = control_plane.kubectl
    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _startup:
        parts = ", ".join(f"{name} {secs:.1f}s" for name, secs in _startup.items() if name != "total")
        terminalreporter.write_line(f"ground: control plane up in {_startup['total']:.1f}s ({parts})")
