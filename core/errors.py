"""The project's error type for a user's mistake, the file readers that name the file, and the atomic JSON writer.

A :class:`UsageError` is raised where the mistake is detected, with a message that names the
file, key or field and says what to do; ``refinery`` prints it as one line and exits 2. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class UsageError(ValueError):
    """Bad input (a flag, a path, a file's content): one line naming the file/key/field and the reason."""


class ConfigError(UsageError):
    """A config mistake: ``"FILE: KEY: reason"`` (``source`` may also be e.g. "strategy 'masked'")."""

    def __init__(self, source: str, key: str, reason: str):
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")

    def __reduce__(self):  # keeps the three parts when the error crosses a process boundary
        return type(self), (self.source, self.key, self.reason)


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` (the bytes of ``path``) as text; a non-UTF-8 file raises a UsageError naming it and the offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UsageError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}, line {line}); "
                         "save it as UTF-8") from None


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file; a file in another encoding raises a UsageError naming the file."""
    return decode_utf8(Path(path).read_bytes(), path)


def write_json_atomic(path: str | Path, data, indent: int = 1) -> None:
    """Write ``data`` as JSON to ``path`` through ``PATH.tmp`` and a rename: a reader (or a killed writer) sees the
    old file or the whole new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    os.replace(tmp, path)
