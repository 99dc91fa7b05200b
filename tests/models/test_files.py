"""``hpcm_models.files``: bounded reads, checked outputs, the atomic writer and its temporaries."""

from __future__ import annotations

import os
import stat
import time

import pytest
from helpers import drain_fifo, feed_fifo

from hpcm_models.errors import FileAccessError, LimitExceededError
from hpcm_models.files import (
    STALE_TEMP_SECONDS,
    TEMP_SUFFIX,
    check_output,
    read_file,
    same_file,
    sweep_temporaries,
    write_atomic,
)


def test_read_file_counts_the_bytes_it_reads(tmp_path) -> None:
    (tmp_path / "small").write_bytes(b"x" * 10)
    assert read_file(tmp_path / "small", 10) == b"x" * 10
    with pytest.raises(LimitExceededError, match="has 10 bytes; the limit is 9"):
        read_file(tmp_path / "small", 9)
    # /dev/zero and pipes report a size of 0: the limit holds on what is read.
    with pytest.raises(LimitExceededError, match="more than 4096 bytes"):
        read_file("/dev/zero", 4096)
    os.mkfifo(tmp_path / "fifo")
    thread = feed_fifo(tmp_path / "fifo", b"", b"\0" * 65536)
    with pytest.raises(LimitExceededError, match="more than 100000 bytes"):
        read_file(tmp_path / "fifo", 100_000)
    thread.join(timeout=10)
    thread = feed_fifo(tmp_path / "fifo", b"abc")
    assert read_file(tmp_path / "fifo", 3) == b"abc"
    thread.join(timeout=10)
    with pytest.raises(FileAccessError, match="it is a directory"):
        read_file(tmp_path, 10)
    with pytest.raises(FileAccessError, match="no such file"):
        read_file(tmp_path / "missing", 10)


@pytest.mark.parametrize("kind", ["fifo", "char device", "symlink", "dangling", "dir", "socket"])
def test_outputs_that_are_not_regular_files_are_refused(tmp_path, kind) -> None:
    out = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "char device":
        out = tmp_path / "null"
        out.symlink_to("/dev/null")
        out = out.resolve()  # /dev/null itself
    elif kind == "symlink":
        (tmp_path / "real").write_bytes(b"old")
        out.symlink_to(tmp_path / "real")
    elif kind == "dangling":
        out.symlink_to(tmp_path / "nowhere")
    elif kind == "dir":
        out.mkdir()
    else:
        import socket

        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(out))
    before = sorted(p.name for p in tmp_path.iterdir())
    message = {
        "fifo": "it is a FIFO (named pipe), not a regular file; pass --force",
        "char device": "it is a character device, not a regular file; pass --force",
        "symlink": "it is a symbolic link (to",
        "dangling": "it is a symbolic link (to",
        "dir": "it is a directory, not a regular file",
        "socket": "it is a socket, not a regular file",
    }[kind]
    with pytest.raises(FileAccessError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_atomic(out, lambda f: f.write(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if kind == "symlink":
        assert (tmp_path / "real").read_bytes() == b"old"
    if kind in ("dir", "socket", "dangling"):  # refused even when asked to write through
        with pytest.raises(FileAccessError, match="refusing to write"):
            write_atomic(out, lambda f: f.write(b"new"), write_through=True)


def test_write_through_a_symlink_replaces_the_file_it_names(tmp_path) -> None:
    real = tmp_path / "sub" / "real.bin"
    real.parent.mkdir()
    real.write_bytes(b"old")
    real.chmod(0o640)
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    write_atomic(link, lambda f: f.write(b"new"), write_through=True)
    assert link.is_symlink()
    assert link.resolve() == real
    assert real.read_bytes() == b"new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["real.bin"]


def test_write_through_into_a_fifo_and_a_device(tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo")
    thread, received = drain_fifo(tmp_path / "fifo")
    write_atomic(tmp_path / "fifo", lambda f: f.write(b"streamed"), write_through=True)
    thread.join(timeout=10)
    assert received == [b"streamed"]
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)  # still a FIFO
    write_atomic("/dev/null", lambda f: f.write(b"gone"), write_through=True)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_protected_files_are_refused_through_links(tmp_path) -> None:
    ckpt = tmp_path / "ck.pt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "hard").hardlink_to(ckpt)
    (tmp_path / "soft").symlink_to(ckpt)
    for out in (ckpt, tmp_path / "hard", tmp_path / "soft"):
        for through in (False, True):
            with pytest.raises(FileAccessError, match="refusing to overwrite the checkpoint"):
                write_atomic(
                    out,
                    lambda f: f.write(b"x"),
                    protect={"checkpoint": ckpt},
                    write_through=through,
                )
    assert ckpt.read_bytes() == b"weights"
    assert same_file(tmp_path / "hard", ckpt)
    assert not same_file(tmp_path / "missing", ckpt)
    check_output(tmp_path / "other", protect={"checkpoint": ckpt, "input": None})


def test_replaced_files_keep_their_mode_and_new_ones_follow_the_umask(tmp_path) -> None:
    out = tmp_path / "secret.hpcm"
    out.write_bytes(b"old")
    out.chmod(0o600)
    write_atomic(out, lambda f: f.write(b"new"))
    assert out.read_bytes() == b"new"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    out.chmod(0o444)  # read-only: replaced like `gzip -f` would, and still read-only
    write_atomic(out, lambda f: f.write(b"newer"))
    assert stat.S_IMODE(out.stat().st_mode) == 0o444
    umask = os.umask(0o027)
    try:
        write_atomic(tmp_path / "fresh", lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) == 0o640


def test_errors_leave_no_temporary_and_stale_ones_are_swept(tmp_path) -> None:
    def failing(f) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt  # what SIGINT raises

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "out", failing)
    assert list(tmp_path.iterdir()) == []

    # What SIGKILL leaves: a temporary named after the output and its (dead) process.
    dead = _dead_pid()
    stale = tmp_path / f".out.{dead}.0123abcd{TEMP_SUFFIX}"
    fresh = tmp_path / f".other.{dead}.89abcdef{TEMP_SUFFIX}"
    alive = tmp_path / f".out.{os.getppid()}.deadbeef{TEMP_SUFFIX}"
    unrelated = tmp_path / f".out.{dead}.0123abcd.tmp"
    for path in (stale, fresh, alive, unrelated):
        path.write_bytes(b"leftover")
    old = time.time() - STALE_TEMP_SECONDS - 10
    for path in (stale, alive, unrelated):
        os.utime(path, (old, old))
    write_atomic(tmp_path / "out", lambda f: f.write(b"done"))
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"out", fresh.name, alive.name, unrelated.name}
    assert sweep_temporaries(tmp_path) == []


def _dead_pid() -> int:
    """A process id that no process has now."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid
