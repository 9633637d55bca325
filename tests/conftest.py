"""Session fixtures for every test tier; each part of the ground lives in its own plugin module."""

import pytest

pytest_plugins = [
    "tests.ground.plugin_controlplane",
    "tests.ground.plugin_s3",
    "tests.ground.plugin_clouds",
    "tests.ground.plugin_matrix",
]


# tryfirst: xdist turns the marks into work units in its own collection hook, which must see them already.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (make test): the control-plane tier is one group, so one worker runs it
    against one control plane and one real node (the host has room for one), while the other workers take the unit
    and integration modules, one module per group so that module fixtures are built once."""
    for item in items:
        group = "controlplane" if item.nodeid.startswith("tests/controlplane/") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
