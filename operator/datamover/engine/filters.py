"""Which source objects a job moves: include/exclude globs on keys (rclone's rules), size and modification-time bounds.

Patterns match the key relative to the source prefix. As in rclone, a pattern that starts with `/` is anchored at
that root, and one that does not matches at the end of the key at any level (`*.jpg` selects `2024/a.jpg`); `*` and
`?` stay within one path segment, `**` crosses segments, `{a,b}` and `[a-z]` work as in a shell. A key is selected
when it matches an include pattern (or there are none) and no exclude pattern: exclude wins. wcmatch does the
matching, so the glob dialect is a maintained library's, not ours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from wcmatch import glob

from datamover.backends.base import ObjectSummary

_FLAGS = glob.GLOBSTAR | glob.BRACE | glob.DOTGLOB


def _anchored(pattern: str) -> str:
    return pattern[1:] if pattern.startswith("/") else f"**/{pattern}"


def check_pattern(pattern: str) -> str | None:
    """Why `pattern` cannot be used (a message), or None when it can."""
    if not pattern or pattern == "/":
        return "a pattern must not be empty"
    try:
        glob.translate(_anchored(pattern), flags=_FLAGS)
    except Exception as error:  # wcmatch raises a few kinds for a malformed pattern
        return f"{pattern!r} is not a valid glob: {error}"
    return None


@dataclass(frozen=True)
class ObjectFilter:
    """What spec.filter selects; the default selects every object.

    Time bounds are absolute here: the worker anchors spec durations (`720h`) at the MigrationJob's creation, so
    every worker and every retry of one job selects the same objects.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int | None = None  # bytes, inclusive
    max_size: int | None = None  # bytes, inclusive
    modified_after: dt.datetime | None = None  # aware UTC, inclusive
    modified_before: dt.datetime | None = None  # aware UTC, exclusive

    def __post_init__(self) -> None:
        for pattern in self.include + self.exclude:
            problem = check_pattern(pattern)
            if problem:
                raise ValueError(problem)
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise ValueError("min_size is larger than max_size: no object could be selected")

    @property
    def selects_everything(self) -> bool:
        return self == ObjectFilter()

    @property
    def needs_modification_time(self) -> bool:
        return self.modified_after is not None or self.modified_before is not None

    def selects(self, summary: ObjectSummary, relative_key: str) -> bool:
        """Whether the object listed as `summary` (key relative to the source prefix: `relative_key`) moves.

        An object whose listing gave no modification time is not selected by a time bound: moving what the user
        may have meant to leave is worse than leaving what they meant to move (a re-run without the bound moves it).
        """
        if self.min_size is not None and summary.size < self.min_size:
            return False
        if self.max_size is not None and summary.size > self.max_size:
            return False
        if self.needs_modification_time:
            modified = summary.last_modified
            if modified is None:
                return False
            if self.modified_after is not None and modified < self.modified_after:
                return False
            if self.modified_before is not None and modified >= self.modified_before:
                return False
        if self.include and not any(_matches(relative_key, p) for p in self.include):
            return False
        return not any(_matches(relative_key, p) for p in self.exclude)


def _matches(key: str, pattern: str) -> bool:
    return bool(glob.globmatch(key, _anchored(pattern), flags=_FLAGS))
