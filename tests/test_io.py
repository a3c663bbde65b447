"""_io.atomic_open: all or nothing."""

import os

import pytest

from jaxviz import _io


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    _io.atomic_write_text(p, "one")
    _io.atomic_write_text(p, "two")
    assert p.read_text() == "two" and os.listdir(p.parent) == ["f.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    _io.atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError):
        with _io.atomic_open(p) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.skipif(os.name != "posix", reason="the sweep needs POSIX process checks")
def test_temp_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    import signal
    import subprocess
    import sys

    # a writer killed outright (SIGKILL) mid-write leaves its temporary file behind
    code = ("import sys, time; from jaxviz import _io\n"
            "with _io.atomic_open(sys.argv[1]) as f:\n"
            "    f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "big.bin")], stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".big.bin.") and f"-{child.pid}-" in left[0]
    host = _io._HOST
    alive = tmp_path / f".other.txt.{host}-{os.getppid()}-{'a' * 12}.tmp"  # a live process's (our parent's)
    mine = tmp_path / f".mine.txt.{host}-{os.getpid()}-{'b' * 12}.tmp"  # this process's own
    elsewhere = tmp_path / f".x.txt.{'0' * 8 if host != '0' * 8 else '1' * 8}-{_dead_pid()}-{'c' * 12}.tmp"
    dead = tmp_path / f".y.txt.{host}-{_dead_pid()}-{'d' * 12}.tmp"
    user = tmp_path / ".notes.tmp"  # not one of ours
    for p in (alive, mine, elsewhere, dead, user):
        p.write_bytes(b"x")
    _io._swept.discard(os.path.abspath(tmp_path))
    _io.atomic_write_text(tmp_path / "out.txt", "new")
    # the killed writer's file and the dead process's are gone; big.bin was never written
    assert sorted(os.listdir(tmp_path)) == sorted(["out.txt", alive.name, mine.name, elsewhere.name, user.name])
    # once per directory and process: files left later are for the next process's sweep
    dead.write_bytes(b"x")
    _io.atomic_write_text(tmp_path / "out.txt", "newer")
    assert dead.exists()
    assert _io.sweep_stale_temps(tmp_path) == [dead] and not dead.exists()
