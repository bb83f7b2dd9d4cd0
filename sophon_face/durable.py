"""Durable file-system steps shared by the store, its migration and the offline tools."""

from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def fsync_dir(path: PathLike) -> None:
    """Make the renames and new files in the folder ``path`` durable (POSIX: a rename is on
    disk only once its directory is synced)."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_if_present(path: PathLike) -> None:
    """Delete a file; one that is already gone is fine."""
    try:
        os.remove(os.fspath(path))
    except FileNotFoundError:
        pass
