"""Files in and out, safely: bounded reads, checked outputs and the one atomic writer.

- :func:`read_file` reads at most ``limit`` bytes whatever the file claims to be: ``stat`` reports
  a size of 0 for pipes, FIFOs, ``/dev/zero`` and ``/proc`` files, so the limit is enforced on the
  bytes actually read (:func:`read_bounded`).
- :func:`check_output` decides how an output path may be written: a new file or a regular file is
  replaced atomically; anything else (a symbolic link, FIFO, device, directory, socket) is refused
  unless the caller asks to write through it (``hpcm ... --force``, like ``gzip -f`` and ``cp``:
  through a link to the regular file it names, or into a FIFO or character device); block
  devices, directories and sockets are refused always. It also refuses to write over the
  protected files (the input, the checkpoint), compared by inode, so symbolic and hard links to
  them are caught.
- :func:`write_atomic` is what every file this package writes goes through (``.hpcm`` files,
  images, checkpoints): a temporary file in the target's directory, renamed over the target only
  when complete, with the permission bits of the file it replaces. An error or a signal the
  process handles (the CLI turns SIGINT, SIGTERM and SIGHUP into exceptions) removes the
  temporary. A process killed outright (SIGKILL) leaves it behind under a recognisable name,
  ``.NAME.PID.XXXXXXXX.hpcm-tmp``; the next write into the same directory removes such files
  whose process is gone (:func:`sweep_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import FileAccessError, LimitExceededError

__all__ = [
    "OutputPlan",
    "cannot_read",
    "check_output",
    "file_kind",
    "open_input",
    "read_bounded",
    "read_file",
    "read_upto",
    "same_file",
    "sweep_temporaries",
    "write_atomic",
]

#: Suffix of the temporary files of :func:`write_atomic`: ``.NAME.PID.XXXXXXXX.hpcm-tmp``.
TEMP_SUFFIX = ".hpcm-tmp"
#: A temporary whose process is gone is removed once it is this old (seconds): a writer on another
#: machine sharing the directory (NFS) touches its file while it writes.
STALE_TEMP_SECONDS = 60.0
_CHUNK = 1 << 20
_HEX8 = re.compile(r"[0-9a-f]{8}")

_READ_ERRORS: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "no such file"),
    (IsADirectoryError, "it is a directory"),
    (PermissionError, "permission denied"),
)


def file_kind(mode: int) -> str:
    """``"a regular file"``, ``"a directory"``, ``"a FIFO (named pipe)"``, … for a ``st_mode``."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


# ---------------------------------------------------------------------------- reading


def cannot_read(path: str | os.PathLike[str], err: OSError) -> FileAccessError:
    for kind, reason in _READ_ERRORS:
        if isinstance(err, kind):
            return FileAccessError(f"cannot read {str(path)!r}: {reason}")
    return FileAccessError(f"cannot read {str(path)!r}: {err.strerror or err}")


@contextlib.contextmanager
def open_input(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for reading (links followed; a FIFO waits for its writer), with OS errors as
    :class:`FileAccessError` that say what is wrong (missing, a directory, forbidden)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; errors of open() are translated
    except OSError as err:
        raise cannot_read(path, err) from None
    with f:
        if stat.S_ISDIR(os.fstat(f.fileno()).st_mode):  # pragma: no cover - open() refuses first
            raise FileAccessError(f"cannot read {str(path)!r}: it is a directory")
        yield f


def read_upto(f: BinaryIO, count: int, name: str) -> bytes:
    """Up to ``count`` bytes of ``f`` (fewer only at its end), read in chunks: nothing is
    allocated for bytes the file does not have."""
    chunks, total = [], 0
    while total < count:
        try:
            chunk = f.read(min(_CHUNK, count - total))
        except OSError as err:
            raise cannot_read(name, err) from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_bounded(f: BinaryIO, limit: int, name: str) -> bytes:
    """Read ``f`` to its end, refusing more than ``limit`` bytes: at most ``limit + 1`` bytes are
    read and held, whatever the file is (a pipe, ``/dev/zero``).

    Raises:
        LimitExceededError: the file has more than ``limit`` bytes.
    """
    data = read_upto(f, limit + 1, name)
    if len(data) > limit:
        raise LimitExceededError(f"{name!r} has more than {limit} bytes (the limit)")
    return data


def read_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of ``path``, refused if there are more than ``limit`` (counted as they are read,
    so pipes and devices are bounded too).

    Raises:
        FileAccessError: missing, a directory, or not readable.
        LimitExceededError: larger than ``limit``.
    """
    with open_input(path) as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise LimitExceededError(
                f"{str(path)!r} has {st.st_size} bytes; the limit is {limit} bytes"
            )
        return read_bounded(f, limit, str(path))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` both exist and are the same file (same inode: links included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutputPlan:
    """How :func:`write_atomic` writes an output (see :func:`check_output`).

    Attributes:
        path: the file that gets the bytes: the output path, or the regular file a symbolic link
            resolves to when writing through it.
        mode: permission bits of the regular file to replace (kept), or None for a new file.
        owner: ``(uid, gid)`` of the file to replace (kept where the process may), or None.
        stream: write into ``path`` in place (a FIFO or character device): not atomic.
    """

    path: Path
    mode: int | None = None
    owner: tuple[int, int] | None = None
    stream: bool = False


def _refuse(path: Path, what: str, hint: str = "") -> FileAccessError:
    return FileAccessError(f"refusing to write {str(path)!r}: it is {what}{hint}")


def check_output(
    path: str | os.PathLike[str],
    *,
    protect: Mapping[str, str | os.PathLike[str] | None] | None = None,
    write_through: bool = False,
) -> OutputPlan:
    """Check that ``path`` may be written, and say how (:class:`OutputPlan`).

    * missing: created (its directory must exist); a regular file: replaced atomically, keeping
      its permission bits;
    * a symbolic link: refused, or with ``write_through`` followed to the regular file, FIFO or
      character device it names (a dangling link is refused);
    * a FIFO or character device: refused, or with ``write_through`` written into in place;
    * a directory, block device or socket: refused always;
    * any file in ``protect`` (``{"input": path, "checkpoint": path}``), also through symbolic or
      hard links: refused always.

    Raises:
        FileAccessError: the output may not or cannot be written (the message says why).
    """
    path = Path(path)
    for role, other in (protect or {}).items():
        if other is not None and same_file(other, path):
            raise FileAccessError(
                f"refusing to overwrite the {role} {str(other)!r} (the output {str(path)!r} is "
                "the same file)"
            )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise FileAccessError(
                f"cannot write {str(path)!r}: directory missing ({str(path.parent)!r})"
            ) from None
        return OutputPlan(path)
    except OSError as err:
        raise FileAccessError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    force = "; pass --force to write through it"
    if stat.S_ISREG(st.st_mode):
        return OutputPlan(path, stat.S_IMODE(st.st_mode) & 0o777, (st.st_uid, st.st_gid))
    if stat.S_ISLNK(st.st_mode):
        if not write_through:
            raise _refuse(path, f"a symbolic link (to {os.readlink(path)!r})", force)
        try:
            st = os.stat(path)
        except OSError:
            raise _refuse(path, "a dangling symbolic link") from None
        if stat.S_ISREG(st.st_mode):
            return check_output(Path(os.path.realpath(path)), protect=protect)
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        if write_through:
            return OutputPlan(path, stream=True)
        raise _refuse(path, f"{file_kind(st.st_mode)}, not a regular file", force)
    raise _refuse(path, f"{file_kind(st.st_mode)}, not a regular file")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, and belongs to someone else
        return True
    return True


def sweep_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of :func:`write_atomic` in ``directory`` that a killed process left:
    named ``.NAME.PID.XXXXXXXX.hpcm-tmp``, PID not running here, not modified for
    :data:`STALE_TEMP_SECONDS`. Returns what was removed; errors are ignored (best effort)."""
    removed = []
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            parts = entry.name.removesuffix(TEMP_SUFFIX).rsplit(".", 2)
            if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                continue
            if len(parts) != 3 or not parts[1].isdigit() or not _HEX8.fullmatch(parts[2]):
                continue
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS
                if stale and entry.is_file(follow_symlinks=False) and not _alive(int(parts[1])):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except (OSError, ValueError):
                continue
    return removed


def _create_temporary(target: Path, mode: int) -> tuple[int, Path]:
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), tmp
        except FileExistsError:
            continue
        except OSError as err:
            raise FileAccessError(f"cannot write {str(target)!r}: {err.strerror}") from None
    raise FileAccessError(f"cannot create a temporary file next to {str(target)!r}")


def _keep_owner_and_mode(fd: int, plan: OutputPlan) -> None:
    if plan.owner is not None and plan.owner != (os.geteuid(), os.getegid()):
        with contextlib.suppress(OSError):  # only root may give files away
            os.fchown(fd, *plan.owner)
    if plan.mode is not None:
        os.fchmod(fd, plan.mode)


def _write_into(plan: OutputPlan, write: Callable[[BinaryIO], None]) -> None:
    try:
        fd = os.open(plan.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise FileAccessError(f"cannot write {str(plan.path)!r}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
    except OSError as err:
        if isinstance(err, FileAccessError):
            raise
        raise FileAccessError(f"cannot write {str(plan.path)!r}: {err.strerror or err}") from None


def write_atomic(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], None],
    *,
    protect: Mapping[str, str | os.PathLike[str] | None] | None = None,
    write_through: bool = False,
) -> None:
    """Call ``write(f)`` on a temporary file in the target's directory, then rename it over the
    target: an error leaves neither a partial file nor the temporary behind, and a replaced file
    keeps its permission bits (and owner, where the process may set it).

    ``protect`` and ``write_through`` are those of :func:`check_output`, which is applied before
    writing and again just before the rename. With ``write_through``, a FIFO or character device
    is written into directly (not atomic: that is what writing into it means).

    Raises:
        FileAccessError: refused (see :func:`check_output`), or the directory is missing or not
            writable, or writing fails.
    """
    plan = check_output(path, protect=protect, write_through=write_through)
    if plan.stream:
        _write_into(plan, write)
        return
    target = plan.path
    sweep_temporaries(target.parent)
    # A file being replaced is written privately and gets its own mode at the end; a new one is
    # created as open() would (0o666 less the umask).
    fd, tmp = _create_temporary(target, 0o600 if plan.mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            _keep_owner_and_mode(f.fileno(), plan)
            os.fsync(f.fileno())
        if check_output(path, protect=protect, write_through=write_through).path != target:
            raise FileAccessError(f"cannot write {str(path)!r}: it changed while being written")
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileAccessError):
            raise FileAccessError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
        raise
