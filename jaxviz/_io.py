"""Atomic file writes, shared by every module that writes outputs.

A reader (or a rerun after Ctrl-C) sees either the old file or the complete
new one, never half a file: the data goes to a hidden temporary file in the
same directory, is fsynced, then renamed over the target with ``os.replace``.

A process killed outright (SIGKILL, the kernel's out-of-memory killer) cannot
remove its temporary file. Each one's name therefore carries its writer's
machine and process id (``.NAME.<host>-<pid>-<random>.tmp``), and the first
write of a process into a directory removes the ones there whose writer is no
longer running on this machine (POSIX only; files of other machines sharing
the directory and of live processes are left alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import threading
import zipfile
from pathlib import Path
from typing import IO, Iterator

from .errors import WriteError

__all__ = ["atomic_open", "holding", "sweep_stale_temps", "atomic_write_bytes", "atomic_write_text", "write_npz", "read_npz", "read_checkpoint",
           "fingerprint", "model_key"]


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


_HOST = _host()
_TEMP = re.compile(r"^\..+\.([0-9a-f]{8})-(\d+)-[0-9a-f]{12}\.tmp$")
_swept: set[str] = set()
_swept_lock = threading.Lock()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def sweep_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporary files of :func:`atomic_open` in ``directory`` that a killed process left behind
    (written on this machine by a process that is no longer running); returns their paths."""
    removed: list[Path] = []
    if os.name != "posix":  # os.kill(pid, 0) is no existence check elsewhere
        return removed
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP.match(e.name)
        if m and m.group(1) == _HOST and int(m.group(2)) != os.getpid() and not _running(int(m.group(2))):
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def _sweep_once(directory: Path) -> None:
    key = os.path.abspath(directory)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    sweep_stale_temps(directory)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file beside ``path``; on a clean exit it replaces ``path``.

    The temporary file gets the usual umask-derived permissions (``tempfile``
    would create it 0o600). On an exception it is removed and ``path`` is
    left as it was. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from e
        raise


@contextlib.contextmanager
def holding(lock_path: str | os.PathLike, busy: str):
    """Holds an OS file lock on ``lock_path`` (the ``filelock`` package) for the block; when another process
    holds it, prints ``busy`` to stderr once and waits for it. The lock goes with the process, however it ends."""
    import sys

    import filelock

    lock = filelock.FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(busy, file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def write_error(path: str | os.PathLike, e: OSError) -> OSError:
    """``e`` (raised while writing ``path``) as a :class:`~jaxviz.errors.WriteError` naming the file and what to
    do; a full disk or quota says so, whatever the OS or NumPy worded ("49152 requested and 24544 written")."""
    import errno

    full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or "requested and" in str(e)
    if full:
        why = "the disk is full (or the quota reached); free some space and run again: finished files are kept"
    else:
        why = f"{e.strerror or e}; nothing was left half-written"
    return WriteError(e.errno or errno.EIO, f"cannot write {path}: {why}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """``np.savez`` to ``path``, atomically (checkpoints: an interrupt never leaves a torn file)."""
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


# what reading a damaged .npz raises: a truncated zip (BadZipFile), an entry cut short (EOFError), an object
# array (ValueError: pickles are refused), a file that vanished or cannot be read (OSError)
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def read_npz(path: str | os.PathLike) -> dict:
    """Every array of an ``.npz`` file (no pickles)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def read_checkpoint(path: Path, what: str) -> dict:
    """:func:`read_npz` of a ``checkpoint`` argument; CheckpointError (reason "unreadable") naming it for a
    directory or an unreadable file."""
    from .errors import CheckpointError

    if path.is_dir():
        raise CheckpointError(f"checkpoint: expected a file path, got the directory {path}", "unreadable")
    try:
        return read_npz(path)
    except UNREADABLE as e:
        raise CheckpointError(f"checkpoint: {path} is not a readable jaxviz {what} checkpoint ({e}); delete it",
                              "unreadable") from e


def model_key(net) -> tuple:
    """What of a model, besides its params, decides its activations (for :func:`fingerprint`): its class, its
    taps, and the fields of the module (or of the module an adapter wraps), functions by name."""
    import dataclasses

    import numpy as np

    def stable(v):
        if isinstance(v, (type, np.dtype)):  # jnp.float32, np.dtype("bfloat16") ...
            try:
                return np.dtype(v).name
            except TypeError:
                return v.__qualname__
        if dataclasses.is_dataclass(v):
            return (type(v).__qualname__, tuple((f.name, stable(getattr(v, f.name))) for f in dataclasses.fields(v)
                                                if f.name not in ("parent", "name")))
        if callable(v):
            return getattr(v, "__qualname__", type(v).__qualname__)
        return repr(v)

    return (type(net).__qualname__, tuple(getattr(net, "layers", ())), stable(net))


def fingerprint(head, arrays) -> str:
    """sha256 of ``repr(head)`` and of each array's shape, dtype and bytes: what a checkpoint was made from."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    h.update(repr(head).encode())
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.shape, a.dtype)).encode())
        h.update(a.tobytes())
    return h.hexdigest()
