"""The image `make image` builds runs the way users run it, also outside the chart.

The chart sets POD_ID and gives the pod a /tmp; `kubectl run`, a plain Deployment or `docker run` do neither. These
tests run the operator from the unpacked image as its user 65532 (no passwd entry), on a read-only root, against the
ground's API server, holding only the token of the chart's ServiceAccount.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ground.controlplane import ControlPlane
from tests.ground.image import UnpackedImage, unpack
from tests.ground.procs import free_port
from tests.ground.stack import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, OperatorRelease

READY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> UnpackedImage:
    return unpack(tmp_path_factory.mktemp("image"))


def test_image_runs_as_65532_with_both_entrypoints_and_no_passwd_entry(image: UnpackedImage) -> None:
    config = image.config["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["datamover-operator"]
    for entrypoint in ("datamover-operator", "datamover-worker"):
        assert (image.root / "usr/local/bin" / entrypoint).stat().st_mode & 0o111
    passwd = image.root / "etc/passwd"
    assert not passwd.exists() or ":65532:" not in passwd.read_text()
    print(f"image: {image.compressed_bytes / 1e6:.0f} MB compressed")


@pytest.fixture
def operator_from_image(control_plane: ControlPlane, operator: OperatorRelease, image: UnpackedImage,
                        tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """datamover-operator from the image, confined, with no POD_ID, watching a fresh empty namespace.

    The chart's release (`operator`) provides the CRD, the ServiceAccount and its RBAC.
    """
    namespace = f"image-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", namespace)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.crt").write_bytes(control_plane.ca_file.read_bytes())
    kubeconfig = control_plane.service_account_kubeconfig(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, conf / "kubeconfig")
    kubeconfig.write_text(kubeconfig.read_text().replace(str(control_plane.ca_file), "/run/ca.crt"))
    for path in conf.iterdir():
        path.chmod(0o644)  # readable by uid 65532; the directory is a throwaway of this test
    port = free_port()
    env = {**image.env, "KUBECONFIG": "/run/kubeconfig",
           "DATAMOVER_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz"}
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(image.confined_argv(["datamover-operator", "--namespace", namespace],
                                                    mounts={"/run": conf}),
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, port, log
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_operator_from_the_image_starts_without_the_chart(
        operator_from_image: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    proc, port, log = operator_from_image
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        assert proc.poll() is None, f"the operator exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                assert response.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, f"operator not healthy after {READY_TIMEOUT:.0f}s:\n{log.read_text()}"
            time.sleep(0.2)
    assert "Traceback" not in log.read_text(), log.read_text()
