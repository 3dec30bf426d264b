"""All-or-nothing file writes: the one helper every artifact writer uses.

A writer fills a scratch file in the destination's own folder (so the final `os.replace` is a
rename on one filesystem, atomic on POSIX and Windows), fsyncs it, renames it over the
destination and fsyncs the folder. A crash or a full disk therefore leaves either the previous
file or the new one, never a mix. Scratch files are named `.<dest name>.tmp<pid>-<token>[suffix]`:
hidden, tied to the process that made them, so `clean_stale_scratch` can remove the leftovers of
a killed process at the next start without touching a concurrent writer's file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
from pathlib import Path
from typing import IO, Any, Iterator

from skyloc.core.errors import SkylocError

# .<name>.tmp<pid>[-<8 hex>][.<ext>]: the un-tokened form is what writers before this module left.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, quota, file-size limit
_SCRATCH_RE = re.compile(r"^\..+\.tmp(\d+)(?:-[0-9a-f]{8})?(?:\.[A-Za-z0-9]+)?$")


def scratch_path(dest: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh scratch name beside `dest`. `suffix` keeps an extension a writer insists on
    (np.savez appends `.npz` to a name without it)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.tmp{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform / filesystem allows it.
    with contextlib.suppress(OSError):
        _fsync_path(folder)


def _commit(tmp: Path, dest: Path) -> None:
    _fsync_path(tmp)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def no_space_error(dest: Path, exc: OSError) -> SkylocError | None:
    """The SkylocError for a full disk / quota / size limit while writing `dest`; None for other errors."""
    return _no_space(dest, exc) if exc.errno in _NO_SPACE else None


def _no_space(dest: Path, exc: OSError) -> SkylocError:
    return SkylocError(f"cannot write {dest} ({exc.strerror or exc}); the previous file, if any, is "
                       f"unchanged: free space on {dest.parent} (or choose another --out) and retry")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a scratch path for writers that need a file name (np.savez, onnx.save, torch.save,
    faiss.write_index); on a clean exit it replaces `dest`, on any exception it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(dest, suffix)
    try:
        yield tmp
        if not tmp.is_file():
            raise SkylocError(f"writing {dest}: the writer produced no file at {tmp}")
        _commit(tmp, dest)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _no_space(dest, exc) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """`open(scratch, mode)` whose content replaces `dest` when the block ends without error."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not a write mode")
    with atomic_path(dest) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(dest, "wb") as f:
        f.write(data)
    return Path(dest)


def write_text_atomic(dest: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes_atomic(dest, text.encode(encoding))


def write_json_atomic(dest: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False) -> Path:
    """JSON (strict: NaN / Infinity are refused, since they are not JSON and most readers fail on
    them) written atomically with a trailing newline."""
    try:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False)
    except ValueError as exc:
        raise SkylocError(f"refusing to write {dest}: it would hold a non-finite number ({exc}); "
                          f"the values that produced it are invalid (NaN/Inf)") from None
    return write_text_atomic(dest, text + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def clean_stale_scratch(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove scratch files (and scratch folders) in `folder` left by processes that no longer run
    (killed mid-write).

    `name`: only those of that destination file name. Files of live processes (a concurrent
    writer, or this process) are kept. Returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    prefix = f".{name}.tmp" if name else "."
    for p in folder.iterdir():
        m = _SCRATCH_RE.match(p.name)
        if not m or not p.name.startswith(prefix) or p.is_symlink():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        if p.is_dir():  # a folder built before being renamed into place (packed imagery)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def exit_on_signals(*signums: int) -> Iterator[None]:
    """Turn SIGTERM / SIGHUP (default) into SystemExit(128 + signum) in the main thread, so the
    `finally` blocks that remove scratch files run when a job is stopped. No-op off the main thread."""
    import threading

    sigs = signums or tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
