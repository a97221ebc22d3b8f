"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never half of one.

Every writer of the project (checkpoints, pictures, synthetic samples, the reader cache,
JSON state files, the saved config) goes through `atomic_path`: the data is written to a
hidden temporary file in the destination's own folder (so the final `os.replace` is a rename
on one filesystem, atomic on POSIX), flushed to disk, and moved into place. An exception
removes the temporary file; a process killed with SIGKILL cannot clean up, so the temporary
names share one pattern (`TEMP_GLOB`) and `remove_stale_temps` clears them when the owner of
the folder starts again.

Imports only the standard library: `analysis/` and `study/` use it without torch or Ray.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
# ".<final name>.<random>.tmp": hidden, and never matched by a reader's own glob
# (e.g. "ckpt_*.pt" or "*.png").
TEMP_GLOB = f".*{TEMP_SUFFIX}"
# What the writers before this module left (".tmp_<random>" and ".tmp_<random>.pt").
_LEGACY_TEMP_GLOB = ".tmp_*"


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it replaces `path`.

    The caller writes the temporary file by name (torch.save, PIL, np.save all take one).
    Parent folders are created. On an exception the temporary file is removed and `path`
    is left as it was. `durable=False` skips the fsync, for files that are cheap to rebuild
    (caches, generated data with its own completion marker) and written by the thousand.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # fsync before the rename: after a power loss the new name must not point at
        # blocks that never reached the disk.
        if durable:
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, durable: bool = True) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"), durable)


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """Write `data` as JSON atomically (non-JSON values such as paths become strings)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str))


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed writers left in `folder`; returns them.

    Call it only where no other process is writing into `folder` at the same time (e.g. a
    run's own checkpoint folder when the run starts): a live writer's temporary file would
    be removed under it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for stale in [*folder.glob(TEMP_GLOB), *folder.glob(_LEGACY_TEMP_GLOB)]:
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return sorted(removed)
