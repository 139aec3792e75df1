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


def _json_key(key) -> str:
    """A dict key as ``json.dumps`` writes it: strings as they are, numbers, booleans and None as JSON text."""
    if isinstance(key, str):
        return json.dumps(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(json.dumps(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def json_text(obj, indent: int = 2, _level: int = 0) -> str:
    """``json.dumps(obj, indent=indent)``, except that a list of scalars is written on one line, so that
    a kept array (a network's beliefs or features on 1,000 images) costs a line per row, not per number."""
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{_json_key(k)}: {json_text(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, (list, tuple)) and obj and any(isinstance(v, (dict, list, tuple)) for v in obj):
        return "[\n" + ",\n".join(inner + json_text(v, indent, _level + 1) for v in obj) + f"\n{pad}]"
    return json.dumps(obj)


def write_json(path: Path, obj) -> None:
    _atomic(path, lambda f: f.write((json_text(obj) + "\n").encode()))


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
