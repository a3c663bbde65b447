"""Robust, resumable, checksum-verified file downloads.

Pretrained weights are large (VGG19 from torchvision is ~550 MB), so the
downloader is built to survive the ways such transfers fail in practice:

* it streams into ``dest + ".part"`` and only moves the file onto ``dest``
  (atomically, with :func:`os.replace`) once it is complete and verified, so
  ``dest`` is never a half-written file;
* a transfer that breaks part-way (short read, connection reset, timeout,
  HTTP 5xx) is retried, resuming with an HTTP ``Range`` request from the bytes
  already on disk, and a ``.part`` left by an interrupted earlier run is
  resumed the same way;
* servers without range support (``200`` instead of ``206``), a mismatched
  ``Content-Range`` or ``416 Range Not Satisfiable`` make it restart from
  zero rather than splice wrong bytes together;
* the sha256 of the whole file is checked before it is published; a mismatch
  deletes the ``.part`` and raises :class:`~jaxviz.errors.ChecksumError`;
* one process at a time downloads a file: ``dest + ".lock"`` (an OS lock, the
  ``filelock`` package) makes a second process (two CLI runs, several hosts
  sharing a cache) wait, then find the verified file.

Only the standard library's :mod:`urllib` is used for the network, so a
custom opener installed with :func:`urllib.request.install_opener` (proxies,
authentication) is honoured. Set ``JAXVIZ_OFFLINE=1`` to forbid network
access altogether (files already on disk are still returned).

Example::

    from jaxviz.download import download
    path = download(
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "~/.cache/jaxviz/vgg19-dcbb9e9d.pth",
        sha256="dcbb9e9d",
    )
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pathlib
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Union

from tqdm import tqdm

from ._io import holding
from .errors import ChecksumError, DownloadError, InputError

__all__ = ["download", "sha256_file", "verify", "is_offline"]

_log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable that, when truthy, forbids network access.
OFFLINE_ENV = "JAXVIZ_OFFLINE"
_TRUTHY = frozenset({"1", "true", "yes"})

#: Minimum length of a sha256 hex prefix (torchvision file names carry 8).
MIN_PREFIX = 8

# Seconds to wait before retry ``k`` (1-based): ``_BACKOFF_S * 2 ** (k - 1)``,
# capped at ``_BACKOFF_MAX_S``. Module-level so tests can set it to zero.
_BACKOFF_S = 1.0
_BACKOFF_MAX_S = 30.0

_HEX = re.compile(r"[0-9a-f]+")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)
_SCHEMES = ("http", "https", "file")


class _Retryable(Exception):
    """A failure worth another attempt (the ``.part`` keeps what arrived)."""


class _Restart(Exception):
    """The ``.part`` cannot be resumed; it was removed, start from zero."""


def is_offline() -> bool:
    """Returns whether network access is disabled by the environment.

    Returns:
        True when the environment variable ``JAXVIZ_OFFLINE`` is set to ``1``,
        ``true`` or ``yes`` (case-insensitive, surrounding spaces ignored).

    Example:
        >>> import os
        >>> os.environ["JAXVIZ_OFFLINE"] = "1"
        >>> is_offline()
        True
        >>> del os.environ["JAXVIZ_OFFLINE"]
    """
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUTHY


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Returns the sha256 hex digest (lower case) of a file's contents.

    Args:
        path: the file to hash.
        chunk_size: bytes read at a time; a positive int.

    Returns:
        The 64-character lower-case hex digest.

    Raises:
        InputError: ``chunk_size`` is not a positive int.
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "empty"
        >>> _ = p.write_bytes(b"")
        >>> sha256_file(p)[:16]
        'e3b0c44298fc1c14'
    """
    chunk_size = _positive_int(chunk_size, "chunk_size")
    h = hashlib.sha256()
    _hash_into(h, pathlib.Path(path), chunk_size)
    return h.hexdigest()


def verify(path: PathLike, sha256: str) -> None:
    """Checks that a file's sha256 matches an expected digest or prefix.

    Args:
        path: the file to check.
        sha256: the expected digest: 64 hex characters, or a prefix of at
            least 8 (as in torchvision file names such as
            ``vgg19-dcbb9e9d.pth``). Compared case-insensitively.

    Raises:
        InputError: ``sha256`` is not a hex string of 8 to 64 characters.
        ChecksumError: the file's digest does not start with ``sha256``.
        FileNotFoundError: ``path`` does not exist.

    Example::

        verify("vgg19-dcbb9e9d.pth", "dcbb9e9d")
    """
    expected = _normalise_sha256(sha256, allow_none=False)
    path = pathlib.Path(path)
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise ChecksumError(
            f"{path}: sha256 mismatch: expected {expected}, got {actual}; the file is "
            "corrupted or was replaced. Delete it and download it again."
        )


def download(
    url: str,
    dest: PathLike,
    *,
    sha256: Optional[str] = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
    chunk_size: int = 1 << 20,
) -> pathlib.Path:
    """Downloads ``url`` to ``dest``, resuming broken transfers and verifying sha256.

    If ``dest`` already exists and matches ``sha256`` (or no ``sha256`` is
    given) it is returned at once, without network access; a ``dest`` that
    does not match is downloaded again and replaced only once the new copy
    is verified.

    Otherwise the body is streamed into ``dest + ".part"`` (the directory is
    created if needed) and hashed as it arrives. An existing ``.part`` is
    resumed with ``Range: bytes=N-``: a ``206`` whose ``Content-Range``
    starts at ``N`` is appended; a ``200`` (no range support), a ``206``
    for other bytes, or a ``416`` make it start again from zero (a ``416``
    saying the file has exactly ``N`` bytes means the ``.part`` is already
    complete). A transfer that ends early, a connection reset, a timeout or
    an HTTP 5xx is retried up to ``retries`` times with exponential backoff,
    resuming each time. HTTP 4xx errors and a host name that does not
    resolve (``EAI_NONAME``: typically no network) are not retried.

    When the body is complete its sha256 is checked; on success the file is
    fsynced and moved onto ``dest`` with :func:`os.replace` (atomic on the
    same file system).

    Args:
        url: an ``http``, ``https`` or ``file`` URL.
        dest: where the file should end up.
        sha256: expected sha256, either 64 hex characters or a prefix of at
            least 8 (torchvision file names carry the first 8), compared
            case-insensitively; ``None`` skips verification.
        progress: show a tqdm progress bar (bytes, named after ``dest``) on
            stderr.
        timeout: seconds to wait for the connection and for each read; a
            positive number.
        retries: how many times a failed transfer is retried; an int >= 0.
        chunk_size: bytes read and written at a time; a positive int.

    Returns:
        ``dest`` as a :class:`pathlib.Path`.

    Raises:
        InputError: an argument is malformed (for instance ``sha256`` that is
            not hex, or shorter than 8 characters).
        DownloadError: ``JAXVIZ_OFFLINE`` is set, the server answered with
            an HTTP error, or the network failed on every attempt. A partial
            ``.part`` is kept so that the next call resumes it.
        ChecksumError: the complete download does not match ``sha256``; the
            ``.part`` is deleted.

    Example::

        path = download(
            "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            "weights/vgg19-dcbb9e9d.pth",
            sha256="dcbb9e9d",
        )
    """
    expected = _normalise_sha256(sha256, allow_none=True)
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() not in _SCHEMES:
        raise InputError(f"url: expected an http, https or file URL, got {url!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout > 0
    ):
        raise InputError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries: expected an int >= 0, got {retries!r}")
    chunk_size = _positive_int(chunk_size, "chunk_size")
    dest = pathlib.Path(dest).expanduser()
    if dest.is_dir():
        raise InputError(f"dest: expected a file path, got the directory {str(dest)!r}")

    if dest.is_file():
        if expected is None:
            return dest
        actual = sha256_file(dest, chunk_size)
        if actual.startswith(expected):
            return dest
        _log.warning(
            "%s: sha256 %s does not match expected %s; downloading it again", dest, actual, expected
        )

    if is_offline():
        raise DownloadError(
            f"cannot download {url}: offline ({OFFLINE_ENV}={os.environ.get(OFFLINE_ENV)}); "
            f"unset {OFFLINE_ENV} or place the file at {dest} yourself"
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    # one process at a time downloads into the .part; another (a second CLI run, a host sharing the cache) waits,
    # then finds the verified file
    busy = f"{dest.name}: another process is downloading it; waiting for it to finish"
    with holding(dest.with_name(dest.name + ".lock"), busy):
        if dest.is_file() and (expected is None or sha256_file(dest, chunk_size).startswith(expected)):
            return dest  # another process downloaded and verified it while this one waited
        return _download_locked(url, dest, expected, progress=progress, timeout=timeout, retries=retries,
                                chunk_size=chunk_size)


def _download_locked(url: str, dest: pathlib.Path, expected: str | None, *, progress: bool, timeout: float,
                     retries: int, chunk_size: int) -> pathlib.Path:
    part = dest.with_name(dest.name + ".part")
    state = _HashState()
    failures = 0
    while True:
        try:
            _transfer(url, part, state, name=dest.name, progress=progress,
                      timeout=timeout, chunk_size=chunk_size)
            break
        except _Restart:
            # The .part is gone, so the next request carries no Range header
            # and cannot end up here again; no attempt is spent.
            continue
        except _Retryable as e:
            failures += 1
            if failures > retries:
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"download of {url} failed after {failures} attempt(s): {e}; "
                    f"{kept} bytes kept in {part}, call again to resume"
                ) from e.__cause__
            delay = min(_BACKOFF_S * 2 ** (failures - 1), _BACKOFF_MAX_S)
            _log.info("download of %s: %s; retry %d/%d in %.1fs", url, e, failures, retries, delay)
            if delay > 0:
                time.sleep(delay)

    actual = state.hexdigest(part, chunk_size)
    if expected is not None and not actual.startswith(expected):
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest}: sha256 mismatch after downloading {url}: expected {expected}, got {actual}; "
            "the download was corrupted or the file on the server was replaced. "
            "The partial file was deleted."
        )
    with open(part, "ab") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return dest


# --------------------------------------------------------------------------
# internals


class _HashState:
    """A running sha256 of the ``.part`` file, kept across attempts.

    Bytes are hashed as they are written; if the ``.part`` on disk no longer
    has exactly the hashed length (a fresh call resuming an old ``.part``, or
    a restart), the file is hashed again from disk.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.hasher = hashlib.sha256()
        self.count = 0

    def sync(self, part: pathlib.Path, size: int, chunk_size: int) -> None:
        if self.count != size:
            self.reset()
            if size:
                self.count = _hash_into(self.hasher, part, chunk_size)

    def update(self, data: bytes) -> None:
        self.hasher.update(data)
        self.count += len(data)

    def hexdigest(self, part: pathlib.Path, chunk_size: int) -> str:
        self.sync(part, part.stat().st_size, chunk_size)
        return self.hasher.hexdigest()


def _transfer(
    url: str,
    part: pathlib.Path,
    state: _HashState,
    *,
    name: str,
    progress: bool,
    timeout: float,
    chunk_size: int,
) -> None:
    """Makes one request and appends its body to ``part``.

    Returns normally when the body is complete; raises ``_Retryable`` for
    transient failures, ``_Restart`` when the ``.part`` was discarded, and
    ``DownloadError`` for failures that retrying cannot fix.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity", "User-Agent": _user_agent()}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        try:
            if e.code == 416 and offset:
                m = _UNSATISFIED_RANGE.fullmatch((e.headers.get("Content-Range") or "").strip())
                if m and int(m.group(1)) == offset:
                    _log.info("%s: already complete (%d bytes)", part, offset)
                    return
                _log.info("%s: range not satisfiable, restarting from zero", part)
                _discard(part, state)
                raise _Restart()
            cause = f"HTTP {e.code} {e.reason}"
            if 500 <= e.code < 600:
                raise _Retryable(cause) from e
            raise DownloadError(f"download of {url} failed: {cause}") from e
        finally:
            e.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, socket.gaierror) and reason.errno == socket.EAI_NONAME:
            # the name does not resolve (no network, or a wrong host): retrying only waits (EAI_AGAIN, a
            # temporary failure of the resolver, is retried)
            host = urllib.parse.urlsplit(url).hostname
            raise DownloadError(f"cannot download {url}: host {host!r} not found ({reason.strerror}); "
                                f"offline? Set {OFFLINE_ENV}=1 to fail at once") from e
        raise _Retryable(_describe(e)) from e

    with response:
        status = getattr(response, "status", None) or 200  # file: URLs have none
        length = _int_header(response.headers.get("Content-Length"))
        if status == 206:
            content_range = (response.headers.get("Content-Range") or "").strip()
            m = _CONTENT_RANGE.fullmatch(content_range)
            if not m or int(m.group(1)) != offset:
                _log.info("%s: got Content-Range %r for offset %d, restarting from zero",
                          part, content_range, offset)
                _discard(part, state)
                if not offset:
                    raise DownloadError(
                        f"download of {url} failed: unrequested partial content "
                        f"(Content-Range {content_range!r})"
                    )
                raise _Restart()
            start, end, total = int(m.group(1)), int(m.group(2)), m.group(3)
            if length is None:
                length = end - start + 1
            total = int(total) if total != "*" else offset + length
            mode = "ab"
            state.sync(part, offset, chunk_size)
        else:
            # A full body; after a Range request this means no range support.
            if offset:
                _log.info("%s: server ignored the Range request, restarting from zero", part)
            offset = 0
            total = length
            mode = "wb"
            state.reset()

        received = 0
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        data = response.read(chunk_size)
                    except (http.client.HTTPException, OSError) as e:
                        raise _Retryable(
                            f"transfer broke after {offset + received} bytes: {_describe(e)}"
                        ) from e
                    if not data:
                        break
                    f.write(data)
                    state.update(data)
                    received += len(data)
                    bar.update(len(data))
        finally:
            bar.close()
        if length is not None and received < length:
            raise _Retryable(
                f"transfer ended early: got {offset + received} of {offset + length} bytes"
            )


def _discard(part: pathlib.Path, state: _HashState) -> None:
    part.unlink(missing_ok=True)
    state.reset()


def _hash_into(hasher, path: pathlib.Path, chunk_size: int) -> int:
    n = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                return n
            hasher.update(block)
            n += len(block)


def _normalise_sha256(sha256, *, allow_none: bool) -> Optional[str]:
    if sha256 is None and allow_none:
        return None
    if not isinstance(sha256, str):
        raise InputError(f"sha256: expected a hex string of {MIN_PREFIX} to 64 characters, got {sha256!r}")
    s = sha256.strip().lower()
    if not _HEX.fullmatch(s) or not MIN_PREFIX <= len(s) <= 64:
        raise InputError(
            f"sha256: expected a hex digest or a hex prefix of at least {MIN_PREFIX} characters "
            f"(at most 64), got {sha256!r}"
        )
    return s


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{name}: expected a positive int, got {value!r}")
    return value


def _int_header(value: Optional[str]) -> Optional[int]:
    try:
        n = int(value) if value is not None else None
    except ValueError:
        return None
    return n if n is not None and n >= 0 else None


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        reason = e.reason
        if isinstance(reason, BaseException):
            return _describe(reason)
        return str(reason)
    if isinstance(e, TimeoutError):  # socket.timeout is an alias since 3.10
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _user_agent() -> str:
    try:
        from . import __version__ as version
    except ImportError:  # pragma: no cover - partial checkouts
        version = "0"
    return f"jaxviz/{version} (+urllib)"


def _fsync_dir(directory: pathlib.Path) -> None:
    """Makes the rename durable; best effort (not possible on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
