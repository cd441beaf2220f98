"""Atomic writes: every file goes to a temporary name first, then os.replace; a run builds its whole
output folder beside the target and swaps it in at the end, so a failure never loses the last result."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OTCError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def staging_path(out: Path) -> Path:
    """The hidden sibling folder a run builds in (and training stages checkpoint to, for --resume)."""
    return out.parent / f".{out.name}.partial"


@contextlib.contextmanager
def output_lock(out: Path, enabled: bool = True):
    """An exclusive lock on the output folder for the whole run: a second run into the same folder (a CI
    matrix does this) is refused with a clear message instead of sharing, and breaking, the staging folder."""
    if not enabled:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip()
            raise OTCError(f"{out}: another otcompress run is writing to this folder{f' (pid {who})' if who else ''}; "
                           "wait for it to finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def staging_dir(out: Path, force: bool, resume: bool) -> Path:
    """Refuse to overwrite without --force; build the new result in a hidden sibling folder."""
    if out.exists() and not (force or resume):
        raise OTCError(f"{out}: output folder exists; pass --force to replace it (the current one is kept until the new run succeeds)")
    stage = staging_path(out)
    if stage.exists() and not resume:
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    return stage


def commit_dir(stage: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    if old.exists():
        shutil.rmtree(old)
