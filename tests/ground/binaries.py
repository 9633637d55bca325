"""Find the ground's pinned binaries (built by `make binaries`), failing with a message that says how to get them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.ground.procs import GroundError

# Binaries the ground takes from the machine rather than from tools/build.sh.
SYSTEM_BINARIES = frozenset({"kubectl"})


def cache_dir() -> Path:
    """$DATAMOVER_CACHE, defaulting to ~/.cache/datamover, as in the Makefile and tools/build.sh."""
    return Path(os.environ.get("DATAMOVER_CACHE") or Path.home() / ".cache" / "datamover")


def bin_dir() -> Path:
    return cache_dir() / "bin"


def binary(name: str) -> Path:
    """The path of an executable the ground runs, e.g. binary("kube-apiserver").

    Built binaries come from $DATAMOVER_CACHE/bin; kubectl may also come from PATH.
    Raises GroundError if it is not there.
    """
    path = bin_dir() / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if name in SYSTEM_BINARIES:
        found = shutil.which(name)
        if found:
            return Path(found)
        raise GroundError(f"{name} not found in {bin_dir()} nor on PATH; install it (the ground expects v1.32+)")
    raise GroundError(f"{name} not found at {path}; run `make binaries`")
