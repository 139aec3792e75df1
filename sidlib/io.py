"""Atomic writes: a result or checkpoint file is either the old one or the complete new one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_torch(path: Path, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def check_writable(path: Path) -> str | None:
    """None if a file can be written at ``path``, else the reason. Probes with a temporary file
    that is removed at once, so nothing is left behind."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        return f"{path} is a directory"
    if not parent.is_dir():
        return f"{parent} is not an existing directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return f"cannot write in {parent} ({error.strerror})"
    return None
