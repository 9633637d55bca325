"""The listing ledger (engine.shards) in a file, shared by worker stand-ins in separate processes.

It stands in for status.listing as crash_runner's record stands in for status.workers: a compare-and-swap under an
exclusive flock, written to a temporary file, fsynced and renamed, so what it says survives a SIGKILL of any writer.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any


class FileLedgerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_suffix(".lock")

    def _locked(self) -> int:
        fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        if not self.path.exists():
            return None, None
        stored = json.loads(self.path.read_text())
        return stored["ledger"], str(stored["version"])

    def load(self) -> tuple[dict[str, Any] | None, str | None]:
        fd = self._locked()
        try:
            return self._read()
        finally:
            os.close(fd)

    def swap(self, document: dict[str, Any], version: str | None) -> str | None:
        fd = self._locked()
        try:
            _, current = self._read()
            if current != version:
                return None
            written = 1 if version is None else int(version) + 1
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as file:
                json.dump({"ledger": document, "version": written}, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
            return str(written)
        finally:
            os.close(fd)
