"""Session fixtures for every test tier; each part of the ground lives in its own plugin module."""

pytest_plugins = [
    "tests.ground.plugin_controlplane",
    "tests.ground.plugin_s3",
    "tests.ground.plugin_matrix",
]
