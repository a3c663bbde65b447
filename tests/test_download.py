"""Tests for jaxviz.download against a real HTTP server on loopback.

The server runs in a thread of this process, serves an in-memory payload,
supports (or, per mode, refuses or breaks) Range requests, and records every
request, so the tests can assert exactly what went over the wire.
"""

from __future__ import annotations

import hashlib
import os
import http.server
import random
import re
import socket
import threading
import time

import pytest

from jaxviz import download as dl
from jaxviz.errors import ChecksumError, DownloadError, InputError, JaxvizError

PAYLOAD = random.Random(0).randbytes(3 * 1024 * 1024)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
HALF = len(PAYLOAD) // 2
CORRUPT = PAYLOAD[:12345] + bytes([PAYLOAD[12345] ^ 0xFF]) + PAYLOAD[12346:]
CORRUPT_DIGEST = hashlib.sha256(CORRUPT).hexdigest()
NAME = "vgg19-dcbb9e9d.pth"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``/<mode>/<file name>``; the mode picks the behaviour.

    Modes:
        normal: 200, or 206 for a valid ``Range: bytes=N-``; 416 past the end.
        break: like normal, but the first transfer sends the full
            Content-Length, writes half the bytes and closes the connection.
        breakalways: every transfer breaks after writing half of what it owes.
        norange: ignores Range, always 200 with the whole payload.
        corrupt: like normal, with one byte of the payload flipped.
        fail500once: the first request gets 500, later ones are normal.
        slow: waits (up to 5 s) before answering, to provoke a timeout.
        held: sends the headers, then waits for ``server.release`` (up to 60 s) before the body.
        anything else: 404.
    """

    protocol_version = "HTTP/1.0"  # one request per connection

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            index = len(server.log)
            server.log.append({"path": self.path, "headers": dict(self.headers)})
        mode = self.path.strip("/").split("/")[0]
        body = CORRUPT if mode == "corrupt" else PAYLOAD
        if mode == "slow":
            server.release.wait(5.0)
            return
        if mode == "fail500once" and index == 0:
            return self._send(500, b"boom")
        if mode not in ("normal", "break", "breakalways", "norange", "corrupt", "fail500once", "held"):
            return self._send(404, b"not found")

        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "norange":
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, f"unexpected Range header {rng!r}"
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        chunk = body[start:]
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "none" if mode == "norange" else "bytes")
        self.end_headers()
        if mode == "held":
            self.wfile.flush()
            server.release.wait(60.0)
        broken = mode == "breakalways" or (mode == "break" and index == 0)
        if broken:
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(chunk)

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("JAXVIZ_OFFLINE", raising=False)
    monkeypatch.setenv("no_proxy", "*")  # never route loopback through a proxy
    monkeypatch.setattr(dl, "_BACKOFF_S", 0.0)  # retries without sleeping
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.log = []
    srv.release = threading.Event()
    srv.url = lambda mode, name=NAME: f"http://127.0.0.1:{srv.server_address[1]}/{mode}/{name}"
    srv.ranges = lambda: [r["headers"].get("Range") for r in srv.log]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _part(dest):
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------
# happy paths


def test_downloads_and_verifies_full_digest(server, tmp_path):
    dest = tmp_path / "sub" / "dir" / NAME  # parent directories are created
    out = dl.download(server.url("normal"), dest, sha256=DIGEST, progress=False)
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert server.ranges() == [None]
    assert server.log[0]["headers"]["Accept-Encoding"] == "identity"
    assert server.log[0]["headers"]["User-Agent"].startswith("jaxviz/")


@pytest.mark.parametrize("sha", [DIGEST[:8], DIGEST[:8].upper(), DIGEST.upper(), f"  {DIGEST[:20]}  "])
def test_prefix_and_case_insensitive_digest(server, tmp_path, sha):
    dest = dl.download(server.url("normal"), str(tmp_path / NAME), sha256=sha, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_no_checksum_and_small_chunks(server, tmp_path):
    dest = dl.download(server.url("normal"), tmp_path / NAME, progress=False, chunk_size=100_000)
    assert dest.read_bytes() == PAYLOAD


def test_existing_valid_dest_makes_no_request(server, tmp_path):
    dest = tmp_path / NAME
    dest.write_bytes(PAYLOAD)
    assert dl.download(server.url("normal"), dest, sha256=DIGEST[:8], progress=False) == dest
    assert dl.download(server.url("normal"), dest, progress=False) == dest  # no checksum: trusted
    assert server.log == []


def test_existing_mismatching_dest_is_replaced(server, tmp_path):
    dest = tmp_path / NAME
    dest.write_bytes(b"stale weights")
    dl.download(server.url("normal"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.log) == 1


def test_progress_bar_on_stderr_names_file(server, tmp_path, capsys):
    dl.download(server.url("normal"), tmp_path / NAME, sha256=DIGEST, progress=True)
    captured = capsys.readouterr()
    assert NAME in captured.err
    assert "100%" in captured.err
    assert "3.00M/3.00M" in captured.err  # unit_scale, total from Content-Length
    assert captured.out == ""


def test_no_progress_bar_when_disabled(server, tmp_path, capsys):
    dl.download(server.url("normal"), tmp_path / NAME, progress=False)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------
# resuming


def test_broken_transfer_resumes_at_exact_offset(server, tmp_path):
    dest = tmp_path / NAME
    out = dl.download(server.url("break"), dest, sha256=DIGEST, progress=False, retries=1)
    assert out.read_bytes() == PAYLOAD
    assert server.ranges() == [None, f"bytes={HALF}-"]
    assert not _part(dest).exists()


def test_broken_transfer_gives_up_after_retries_and_keeps_part(server, tmp_path):
    dest = tmp_path / NAME
    url = server.url("breakalways")
    with pytest.raises(DownloadError, match=r"after 3 attempt\(s\)") as info:
        dl.download(url, dest, sha256=DIGEST, progress=False, retries=2)
    assert url in str(info.value)
    # Each attempt resumed where the previous one stopped, writing half of the rest.
    assert server.ranges() == [None, f"bytes={HALF}-", f"bytes={HALF + (len(PAYLOAD) - HALF) // 2}-"]
    part = _part(dest)
    assert not dest.exists()
    expected_size = HALF + (len(PAYLOAD) - HALF) // 2
    expected_size += (len(PAYLOAD) - expected_size) // 2
    assert part.read_bytes() == PAYLOAD[:expected_size]

    # A later call resumes the kept .part from the normal endpoint.
    server.log.clear()
    dl.download(server.url("normal"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [f"bytes={expected_size}-"]
    assert not part.exists()


def test_leftover_part_from_previous_run_is_resumed(server, tmp_path):
    dest = tmp_path / NAME
    _part(dest).write_bytes(PAYLOAD[:1_000_000])
    dl.download(server.url("normal"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == ["bytes=1000000-"]


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    dest = tmp_path / NAME
    _part(dest).write_bytes(b"x" * 500_000)  # garbage: must not survive
    dl.download(server.url("norange"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == ["bytes=500000-"]  # asked to resume, got 200, restarted
    assert len(server.log) == 1


def test_part_longer_than_file_gets_416_and_restarts(server, tmp_path):
    dest = tmp_path / NAME
    _part(dest).write_bytes(PAYLOAD + b"junk")
    dl.download(server.url("normal"), dest, sha256=DIGEST, progress=False, retries=0)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [f"bytes={len(PAYLOAD) + 4}-", None]


def test_complete_part_is_finished_without_downloading_again(server, tmp_path):
    dest = tmp_path / NAME
    _part(dest).write_bytes(PAYLOAD)  # previous run died between download and rename
    dl.download(server.url("normal"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [f"bytes={len(PAYLOAD)}-"]  # answered 416 bytes */N


def test_server_error_is_retried(server, tmp_path):
    dest = dl.download(server.url("fail500once"), tmp_path / NAME, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.log) == 2


# --------------------------------------------------------------------------
# failures


def test_corrupted_payload_raises_checksum_error_and_cleans_up(server, tmp_path):
    dest = tmp_path / NAME
    with pytest.raises(ChecksumError) as info:
        dl.download(server.url("corrupt"), dest, sha256=DIGEST, progress=False)
    msg = str(info.value)
    assert NAME in msg
    assert DIGEST in msg and CORRUPT_DIGEST in msg
    assert "corrupted" in msg and "replaced" in msg
    assert not dest.exists()
    assert not _part(dest).exists()
    assert len(server.log) == 1  # a checksum mismatch is not retried


def test_checksum_error_reports_the_prefix_given(server, tmp_path):
    with pytest.raises(ChecksumError, match=f"expected {DIGEST[:8]}, got {CORRUPT_DIGEST}"):
        dl.download(server.url("corrupt"), tmp_path / NAME, sha256=DIGEST[:8].upper(), progress=False)


def test_404_raises_without_retry(server, tmp_path):
    dest = tmp_path / NAME
    url = server.url("missing")
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        dl.download(url, dest, progress=False, retries=3)
    assert url in str(info.value)
    assert isinstance(info.value, OSError) and isinstance(info.value, JaxvizError)
    assert len(server.log) == 1
    assert not dest.exists()


def test_connection_refused(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXVIZ_OFFLINE", raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(dl, "_BACKOFF_S", 0.0)
    with socket.socket() as s:  # find a port, then close it so nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/normal/{NAME}"
    with pytest.raises(DownloadError, match="refused") as info:
        dl.download(url, tmp_path / NAME, progress=False, retries=1)
    assert url in str(info.value)
    assert "after 2 attempt(s)" in str(info.value)
    assert not (tmp_path / NAME).exists()


@pytest.mark.parametrize("errno, retried", [(socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)])
def test_unknown_host_is_not_retried(monkeypatch, tmp_path, errno, retried):
    """A host name that does not resolve (no network) fails at once; a temporary resolver failure is retried."""
    monkeypatch.delenv("JAXVIZ_OFFLINE", raising=False)
    monkeypatch.setenv("no_proxy", "*")  # the lookup is of the host itself, not of a proxy
    monkeypatch.setattr(dl, "_BACKOFF_S", 0.0)
    lookups = []

    def getaddrinfo(host, *a, **k):
        lookups.append(host)
        raise socket.gaierror(errno, "Name or service not known" if errno == socket.EAI_NONAME else "Try again")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    url = f"http://weights.example/{NAME}"
    with pytest.raises(DownloadError) as info:
        dl.download(url, tmp_path / NAME, progress=False, retries=2)
    if retried:
        assert lookups == ["weights.example"] * 3 and "after 3 attempt(s)" in str(info.value)
    else:
        assert lookups == ["weights.example"]
        assert str(info.value) == (f"cannot download {url}: host 'weights.example' not found (Name or service not "
                                   "known); offline? Set JAXVIZ_OFFLINE=1 to fail at once")


def test_timeout(server, tmp_path):
    with pytest.raises(DownloadError, match="timed out") as info:
        dl.download(server.url("slow"), tmp_path / NAME, progress=False, timeout=0.2, retries=0)
    assert server.url("slow") in str(info.value)
    assert len(server.log) == 1


# --------------------------------------------------------------------------
# offline mode


@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("YES", True), (" True ", True),
    ("0", False), ("", False), ("no", False), ("false", False), (None, False),
])
def test_is_offline(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("JAXVIZ_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("JAXVIZ_OFFLINE", value)
    assert dl.is_offline() is expected


def test_offline_raises_without_request(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVIZ_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"offline \(JAXVIZ_OFFLINE=1\)"):
        dl.download(server.url("normal"), tmp_path / NAME, sha256=DIGEST, progress=False)
    assert server.log == []
    assert not (tmp_path / NAME).exists() and not _part(tmp_path / NAME).exists()


def test_offline_still_returns_cached_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVIZ_OFFLINE", "1")
    dest = tmp_path / NAME
    dest.write_bytes(PAYLOAD)
    assert dl.download(server.url("normal"), dest, sha256=DIGEST[:8], progress=False) == dest
    assert server.log == []


# --------------------------------------------------------------------------
# argument checks, sha256_file and verify


@pytest.mark.parametrize("bad", ["abc", DIGEST[:7], "zzzzzzzz", DIGEST + "0", "", "sha256:" + DIGEST, 123])
def test_bad_sha256_is_input_error(server, tmp_path, bad):
    with pytest.raises(InputError, match="^sha256: "):
        dl.download(server.url("normal"), tmp_path / NAME, sha256=bad, progress=False)
    with pytest.raises(InputError, match="^sha256: "):
        dl.verify(tmp_path / NAME, bad)
    assert server.log == []


@pytest.mark.parametrize("kwargs, name", [
    ({"retries": -1}, "retries"),
    ({"retries": 1.5}, "retries"),
    ({"timeout": 0}, "timeout"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_options_are_input_errors(server, tmp_path, kwargs, name):
    with pytest.raises(InputError, match=f"^{name}: "):
        dl.download(server.url("normal"), tmp_path / NAME, progress=False, **kwargs)
    assert server.log == []


def test_bad_url_and_dest(server, tmp_path):
    with pytest.raises(InputError, match="^url: "):
        dl.download("ftp://example.com/x", tmp_path / NAME, progress=False)
    with pytest.raises(InputError, match="^dest: .*directory"):
        dl.download(server.url("normal"), tmp_path, progress=False)
    assert server.log == []


def test_sha256_file_and_verify(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    assert dl.sha256_file(path) == DIGEST
    assert dl.sha256_file(str(path), chunk_size=7777) == DIGEST
    dl.verify(path, DIGEST)
    dl.verify(path, DIGEST[:8].upper())
    wrong = ("0" if DIGEST[0] != "0" else "1") + DIGEST[1:]
    with pytest.raises(ChecksumError) as info:
        dl.verify(path, wrong)
    assert str(path) in str(info.value)
    assert wrong in str(info.value) and DIGEST in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match=r"No such file or directory: '.*nope'"):
        dl.verify(tmp_path / "nope", DIGEST)


def test_public_api():
    assert sorted(dl.__all__) == ["download", "is_offline", "sha256_file", "verify"]


def test_two_processes_downloading_one_file_share_it(server, tmp_path):
    """The second process waits on the destination's lock while the first downloads, then finds the verified
    file: one transfer, no clash over the .part, both exit 0."""
    import subprocess
    import sys

    dest = tmp_path / "cache" / NAME
    code = ("import sys; from jaxviz import download as dl; "
            f"dl.download({server.url('held')!r}, {str(dest)!r}, sha256={DIGEST!r}, progress=True); print('ok')")
    env = dict(os.environ, no_proxy="*", JAXVIZ_OFFLINE="0")
    first = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    while not server.log and first.poll() is None:  # until the first holds the lock and is receiving
        time.sleep(0.05)
    assert server.log, f"the first download never reached the server: {first.communicate()}"
    second = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    waiting = second.stderr.readline()  # blocks until the second says it waits (or exits)
    assert "another process is downloading it; waiting for it to finish" in waiting
    server.release.set()
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert out1.strip().endswith("ok") and out2.strip().endswith("ok")
    assert len(server.log) == 1  # one transfer
    assert dest.read_bytes() == PAYLOAD and not _part(dest).exists()
