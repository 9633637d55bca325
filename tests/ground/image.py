"""The datamover image that `make image` built, unpacked so tests can run it as users' runtimes would.

tools/image/build.py writes an OCI archive into the cache; this module finds it (failing with the command that
makes it), reads its config and unpacks its layers. `confined_argv` runs a command of the image the way a pod's
securityContext would: as uid/gid 65532 on a read-only root, with only an empty /tmp writable, no passwd entry.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.ground.binaries import cache_dir
from tests.ground.procs import GroundError

REPO = Path(__file__).resolve().parents[2]


def version() -> str:
    for line in (REPO / "operator" / "datamover" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise GroundError("no __version__ in operator/datamover/__init__.py")


IMAGE_NAME = f"ghcr.io/datamover/datamover:{version()}"


def archive() -> Path:
    """The OCI archive of the image; GroundError saying how to build it if it is not there."""
    path = cache_dir() / "image" / f"datamover-{version()}.oci.tar"
    if not path.is_file():
        raise GroundError(f"the datamover image is not at {path}; run `make image`")
    return path


@dataclass(frozen=True)
class UnpackedImage:
    """An image's layers unpacked in order into `root`, with its OCI config."""

    root: Path
    config: dict[str, Any]
    compressed_bytes: int

    @property
    def env(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.config["config"].get("Env", []))

    def confined_argv(self, argv: list[str], mounts: dict[str, Path] | None = None) -> list[str]:
        """argv run inside the image: private mount namespace, read-only root, a fresh tmpfs on /tmp, uid 65532.

        `mounts` maps directories of the image (which must exist in it) to host directories bound read-only there.
        Needs root, as a container runtime does.
        """
        root = shlex.quote(str(self.root))
        # Host tools by full path: the command's environment is the image's (its PATH has no sbin).
        mount, chroot, unshare = (shutil.which(tool) or tool for tool in ("mount", "chroot", "unshare"))
        steps = [f"{mount} --bind {root} {root}"]
        for target, source in (mounts or {}).items():
            steps.append(f"{mount} --bind {shlex.quote(str(source))} {root}/{shlex.quote(target.lstrip('/'))}")
        steps += [
            f"{mount} -o remount,bind,ro {root}",
            f"{mount} -t tmpfs -o size=64m,mode=1777 tmpfs {root}/tmp",
            f"exec {chroot} --userspec={self.config['config']['User']} {root} {shlex.join(argv)}",
        ]
        return [unshare, "--mount", "--propagation=private", "sh", "-c", " && ".join(steps)]


def unpack(destination: Path) -> UnpackedImage:
    """Unpack the image's layers into destination/rootfs (file owners and modes as in the image)."""
    root = destination / "rootfs"
    root.mkdir(parents=True)
    with tarfile.open(archive()) as oci:
        def blob(digest: str) -> Any:
            member = oci.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None
            return member

        index = json.load(oci.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        config = json.load(blob(manifest["config"]["digest"]))
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=blob(layer["digest"]), mode="r|gz") as tar:
                tar.extractall(root, filter="tar")
        size = sum(layer["size"] for layer in manifest["layers"])
    return UnpackedImage(root=root, config=config, compressed_bytes=size)
