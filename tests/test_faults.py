"""Faults a real folder or run meets, driven through the CLI (subprocesses where the fault needs a process):
odd file names, two runs on one folder, damaged outputs, a garbage summary.csv, entries that are no files,
a SIGTERM whose exception Python swallowed. Each asserts the outcome: rows, bytes, exit code, one line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jaxviz import cli

BASE = ["--model", "small-cnn", "--weights", "random", "--size", "32", "--no-progress", "--batch-size", "4"]


def _pictures(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        img = (rng.uniform(size=(32, 32, 3)) * 255).astype(np.uint8)
        path = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else os.fsencode(name))
        Image.fromarray(img).save(open(path, "wb"), format="PNG")


def _rows(out):
    with open(out / "summary.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    o, e = capsys.readouterr()
    return code, o, e


def _cli(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "jaxviz.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="backslashreplace", **kw)


def test_file_names_that_are_not_utf8_go_through_keys_rows_and_outputs(tmp_path, capsys):
    """Linux allows any bytes in a name: the folder completes, the row keeps the name's bytes, the map is written
    under them, and a rerun finds everything done."""
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _pictures(imgs, ["plain.png", b"caf\xe9.png", "espa\u00f1a.png"])
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *BASE)
    assert code == 0, e
    rows = _rows(out)
    assert sorted(os.fsencode(r["file"]) for r in rows) == sorted([b"caf\xe9.png", "espa\u00f1a.png".encode(),
                                                                    b"plain.png"])
    assert b"caf\xe9.png.npy" in os.listdir(os.fsencode(out)) and b"caf\xe9.png.png" in os.listdir(os.fsencode(out))
    assert np.load(os.path.join(os.fsencode(out), b"caf\xe9.png.npy")).shape == (32, 32, 3)
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *BASE)
    assert code == 0 and "all 3 images already done" in o
    assert len(_rows(out)) == 3


def test_damaged_maps_and_pictures_are_done_again(tmp_path, capsys):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _pictures(imgs, [f"{i}.png" for i in range(5)])
    assert _run(capsys, "attribute", imgs, "--out", out, *BASE)[0] == 0
    good = np.load(out / "1.png.npy")
    with open(out / "1.png.npy", "r+b") as f:  # a partial copy
        f.truncate(os.path.getsize(out / "1.png.npy") - 100)
    png = (out / "3.png.png").read_bytes()
    (out / "3.png.png").write_bytes(png[: len(png) // 2])  # a picture cut short
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *BASE)
    assert code == 0, e
    assert "saliency on 2 images (3 already done)" in e
    np.testing.assert_array_equal(np.load(out / "1.png.npy"), good)
    assert (out / "3.png.png").read_bytes() == png
    rows = _rows(out)
    assert sorted(r["file"] for r in rows) == [f"{i}.png" for i in range(5)]  # each once


def test_a_garbage_summary_csv_is_set_aside_and_rebuilt(tmp_path, capsys):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _pictures(imgs, [f"{i}.png" for i in range(3)])
    assert _run(capsys, "attribute", imgs, "--out", out, *BASE)[0] == 0
    (out / "summary.csv").write_bytes(b"\x80\x00 not a csv \xff\n\x00\x00")
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *BASE)
    assert code == 0, e
    assert f"jaxviz attribute: {out / 'summary.csv'} is unreadable (" in e
    assert "moved it to summary.csv.unreadable and doing its images again" in e
    assert sorted(r["file"] for r in _rows(out)) == ["0.png", "1.png", "2.png"]
    assert (out / "summary.csv.unreadable").read_bytes().startswith(b"\x80\x00")


def test_entries_that_are_no_files_are_reported_as_skipped(tmp_path, capsys):
    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _pictures(imgs, ["ok.png"])
    (imgs / "folder.jpg").mkdir()
    (imgs / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *BASE)
    assert code == 0, e
    assert f"jaxviz attribute: skipped {imgs / 'folder.jpg'}: {imgs / 'folder.jpg'}: is a directory, not an image" in e
    assert (f"jaxviz attribute: skipped {imgs / 'gone.png'}: {imgs / 'gone.png'}: a symbolic link to a missing file "
            f"({tmp_path / 'nowhere.png'})") in e
    assert "skipped 2 unreadable files" in o
    assert [r["file"] for r in _rows(out)] == ["ok.png"]


def test_two_runs_on_one_folder_never_do_the_work_twice(tmp_path):
    """The second run waits while the first owns OUT_DIR (frozen there with SIGSTOP, so the two overlap for sure),
    then finds every image done: each row once."""
    from filelock import FileLock, Timeout

    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _pictures(imgs, [f"{i}.png" for i in range(6)])
    first = _cli("attribute", imgs, "--out", out, *BASE)
    lock = FileLock(str(out / ".jaxviz.lock"))
    while first.poll() is None:  # until the first run is inside (it ends by itself if never seen there)
        if (out / ".jaxviz.lock").exists():
            try:
                lock.acquire(timeout=0)
                lock.release()  # not held yet
            except Timeout:
                break  # the first run is inside
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()
    first.send_signal(signal.SIGSTOP)
    try:
        second = _cli("attribute", imgs, "--out", out, *BASE)
        line = ""
        while "waiting" not in line:
            line = second.stderr.readline()
            assert line, second.communicate()
        assert line.strip() == f"jaxviz: {out} is in use by another jaxviz run; waiting for it to finish"
    finally:
        first.send_signal(signal.SIGCONT)
    o1, e1 = first.communicate(timeout=300)
    o2, e2 = second.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 0), e1 + e2
    assert "wrote 6 attributions" in o1 and "all 6 images already done" in o2
    assert sorted(r["file"] for r in _rows(out)) == [f"{i}.png" for i in range(6)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_swallowed_in_a_finaliser_still_ends_the_run_as_terminated(capsys, monkeypatch):
    """Python cannot pass on an exception raised inside a finaliser ("Exception ignored"): the handler's flag
    makes the command end as terminated (143) all the same, never 0."""
    import gc

    from jaxviz.commands import core

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs here; its exception is swallowed

    def info(args):
        Finalised()
        gc.collect()
        return 0

    monkeypatch.setattr(core, "info", info)
    code, o, e = _run(capsys, "info")
    assert code == 143 and e.strip().endswith("jaxviz: terminated")


def test_a_full_disk_is_one_line_naming_the_file_and_a_rerun_completes(tmp_path, capsys, monkeypatch):
    import errno

    imgs, out = tmp_path / "imgs", tmp_path / "out"
    _pictures(imgs, [f"{i}.png" for i in range(6)])
    real = os.fsync
    calls = []

    def full_after_a_while(fd):
        calls.append(fd)
        if len(calls) > 9:  # the first batch (4 maps, 4 pictures, the settings) fits; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", full_after_a_while)
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *BASE)
    assert code == 1
    line = e.strip().splitlines()[-1]
    assert line.startswith(f"jaxviz attribute: error: cannot write {out}/") and line.endswith(
        ": the disk is full (or the quota reached); free some space and run again: finished files are kept")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    monkeypatch.setattr(os, "fsync", real)
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *BASE)
    assert code == 0, e
    assert sorted(r["file"] for r in _rows(out)) == [f"{i}.png" for i in range(6)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_runs_resume_to_the_bytes_of_an_uninterrupted_run(tmp_path, capsys, sig):
    """Killed between batches (SIGKILL: no clean-up at all; SIGTERM: exit 143 after cleaning up), a rerun ends
    with the same files, byte for byte, and the same rows, each once, as a run that was never stopped."""
    imgs = tmp_path / "imgs"
    _pictures(imgs, [f"{i}.png" for i in range(10)])
    args = ["--model", "small-cnn", "--weights", "random", "--size", "32", "--no-progress", "--batch-size", "1"]
    clean = tmp_path / "clean"
    assert _run(capsys, "attribute", imgs, "--out", clean, *args)[0] == 0
    out = tmp_path / "out"
    proc = _cli("attribute", imgs, "--out", out, *args)
    while proc.poll() is None:  # until a few rows are written (or the run ends by itself)
        if (out / "summary.csv").exists() and len((out / "summary.csv").read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.fail("the run finished before it could be stopped; the test needs it in flight")
    assert proc.returncode == (-9 if sig == signal.SIGKILL else 143)
    if sig == signal.SIGTERM:
        assert err.strip().endswith("jaxviz: terminated; run the same command again to resume")
    code, o, e = _run(capsys, "attribute", imgs, "--out", out, *args)
    assert code == 0, e
    for i in range(10):
        for suffix in (".npy", ".png"):
            assert (out / f"{i}.png{suffix}").read_bytes() == (clean / f"{i}.png{suffix}").read_bytes()
    assert sorted(map(tuple, (r.values() for r in _rows(out)))) == sorted(map(tuple, (r.values() for r in _rows(clean))))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_the_shapes_model_on_photos_says_so_once(tmp_path, capsys):
    photos, shapes = tmp_path / "photos", tmp_path / "shapes"
    rng = np.random.default_rng(1)
    photos.mkdir()
    for i in range(2):
        Image.fromarray((rng.uniform(size=(60, 80, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.jpg")
    _pictures(shapes, ["a.png", "b.png"])  # 32x32, the model's own kind of picture
    note = "note: small-cnn is jaxviz's 32 px shapes classifier (circle, square, triangle, cross); it knows nothing"
    code, o, e = _run(capsys, "attribute", photos, "--out", tmp_path / "o1", *BASE)
    assert code == 0 and e.count(note) == 1
    code, o, e = _run(capsys, "attribute", shapes, "--out", tmp_path / "o2", *BASE)
    assert code == 0 and note not in e
