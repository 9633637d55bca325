"""pytest fixtures for the nodeagent part of the test ground.

`node_agent` runs one agent for the whole session (it plays the kubelet and the scheduler for every pod). When a test
fails, the logs of the pods the agent took on during that test are added to its report, so a failure in a worker pod
can be read where the test failed instead of in a work directory.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.ground.controlplane import ControlPlane
from tests.ground.external import e2e_kubeconfig
from tests.ground.nodeagent import NodeAgent, start_node_agent

_AGENT = pytest.StashKey[NodeAgent]()
_FIRST_RECORD = pytest.StashKey[int]()  # index into NodeAgent.started_pods() when the test began
LOG_TAIL_LINES = 200  # enough to see a traceback, little enough to keep the report readable


@pytest.fixture(scope="session")
def node_agent(control_plane: ControlPlane, pytestconfig: pytest.Config) -> Iterator[NodeAgent | None]:
    """The session's node agent: pods created through the API run as local processes with the venv's python.

    None under `make e2e`: the external cluster's kubelets run the pods.
    """
    if e2e_kubeconfig() is not None:
        yield None
        return
    # Beside the control plane's own logs, so one directory holds everything a failed run left behind.
    workdir = control_plane.workdir / "node-agent"
    with start_node_agent(control_plane, workdir, python_bin_dir=Path(sys.executable).parent) as agent:
        pytestconfig.stash[_AGENT] = agent
        try:
            yield agent
        finally:
            del pytestconfig.stash[_AGENT]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    agent = item.config.stash.get(_AGENT, None)
    # No agent yet: it may start inside this test's setup, and then every pod it takes on belongs to this test.
    item.stash[_FIRST_RECORD] = len(agent.started_pods()) if agent is not None else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                             pytest.TestReport]:
    report = yield
    agent = item.config.stash.get(_AGENT, None)
    if report.failed and agent is not None:
        for record in agent.started_pods()[item.stash.get(_FIRST_RECORD, 0):]:
            lines = agent.pod_log(record.namespace, record.name).splitlines()
            shown = lines[-LOG_TAIL_LINES:]
            cut = f"(last {len(shown)} of {len(lines)} lines)\n" if len(lines) > len(shown) else ""
            title = f"pod {record.namespace}/{record.name} [{record.summary}] {record.log_path}"
            report.sections.append((title, cut + ("\n".join(shown) or "(no output)")))
    return report
