"""README.md's "Use" block, run exactly as printed (parsed from the file) against the ground, as a new user would.

Only the six variables the README asks the reader to fill in are set, to the two MinIO servers; everything else —
the namespace, the Secrets, the MigrationJob, `kubectl wait` — is the README's own text.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.controlplane.conftest import Kubectl
from tests.ground.s3 import rclone_check
from tests.ground.stack import OperatorRelease

README = Path(__file__).resolve().parents[2] / "README.md"


def use_block() -> str:
    text = README.read_text()
    section = text.split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "README.md's Use section has no ```sh block"
    return match.group(1)


def test_readme_use_block_runs_as_written(control_plane: Any, kubectl: Kubectl, operator: OperatorRelease,
                                          cloud_a: Any, cloud_b: Any) -> None:
    block = use_block()
    variables = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", block))
    given = {
        "CLOUD_A_ENDPOINT": cloud_a.endpoint, "CLOUD_A_ACCESS_KEY": cloud_a.access_key,
        "CLOUD_A_SECRET_KEY": cloud_a.secret_key,
        "CLOUD_B_ENDPOINT": cloud_b.endpoint, "CLOUD_B_ACCESS_KEY": cloud_b.access_key,
        "CLOUD_B_SECRET_KEY": cloud_b.secret_key,
    }
    assert variables == set(given), f"the README's block asks for {sorted(variables)}; this test fills {sorted(given)}"
    source = cloud_a.client()
    source.create_bucket(Bucket="photos")
    cloud_b.client().create_bucket(Bucket="photos-archive")
    for i in range(30):
        body = f"photo {i} ".encode() * (100 + i)
        source.put_object(Bucket="photos", Key=f"2024/{i:03d}.jpg", Body=body, ContentType="image/jpeg")
    kubectl_bin = shutil.which("kubectl")
    assert kubectl_bin, "kubectl is not on PATH"
    env = {**os.environ, **given, "KUBECONFIG": str(control_plane.admin_kubeconfig)}
    try:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=README.parent, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"README Use block failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
        assert re.search(r"^photos\s+succeeded\s+100%\s+30/30\s", run.stdout, re.M), run.stdout
        assert rclone_check(cloud_a, "photos", cloud_b, "photos-archive").returncode == 0
        copied = cloud_b.client().get_object(Bucket="photos-archive", Key="2024/007.jpg")
        assert copied["ContentType"] == "image/jpeg"
        assert hashlib.md5(copied["Body"].read()).hexdigest() == hashlib.md5(b"photo 7 " * 107).hexdigest()
    finally:
        kubectl("delete", "namespace", "migrations", "--wait=false", check=False)
