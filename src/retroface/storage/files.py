"""Durable file writes (a crash leaves the old file or the new one, never a torn one) and
reads confined to a folder."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path

#: Who writes a temp file, in its name (".tmp-PID@HOST~random.part"): cleaning up after a crash
#: then removes what a dead process of this host left, and spares writes in flight elsewhere.
_WRITER = f"{os.getpid()}@{socket.gethostname()[:40].replace('~', '_')}"


def writer_gone(tmp: Path) -> bool:
    """True if temp file ``tmp`` (from :func:`atomic_write`) was left by a process of this host
    that no longer runs; False if its writer may still be writing (or is elsewhere, or unknown).
    """
    name = tmp.name
    if not name.startswith(".tmp-") or "~" not in name:
        return False
    pid_text, _, host = name[len(".tmp-") :].split("~", 1)[0].partition("@")
    if not pid_text.isdigit() or host != _WRITER.partition("@")[2]:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another account's
        return False
    return False


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync it, rename over ``path``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{_WRITER}~", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` (mode 0600, folder 0700) unless it exists; False if another won the race.

    Written to a temp file and hard-linked into place: no reader ever sees a half-written key,
    and when two processes race, the first one's file wins and the other's is discarded.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def require_private(path: Path) -> None:
    """Refuse a secret file that group or others can read."""
    from retroface.core.errors import RetrofaceError

    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise RetrofaceError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")


class OutsideFolderError(OSError):
    """A file that, once links are followed, is not inside the folder it must come from."""


def is_within(path: Path | str, root: Path | str) -> bool:
    """Whether ``path`` lies inside ``root`` once every link in either is followed (realpath)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _opened_path(fd: int) -> str | None:
    """The path of the file ``fd`` has open, as the kernel resolved it (Linux), else None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def read_confined(path: Path, root: Path | None) -> bytes:
    """The bytes of ``path``, which must really lie inside ``root`` (None: anywhere).

    Checked twice: the real path before opening, so a link to outside is never opened (``/etc/
    passwd`` is not read), and the opened file itself afterwards, so a link swapped in between
    the check and the open is caught too. Only regular files are read (``O_NONBLOCK`` keeps a
    FIFO planted in the folder from stalling the reader).
    """
    if root is None:
        return path.read_bytes()
    if not is_within(path, root):
        raise OutsideFolderError(f"{path}: outside the import folder once links are followed")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        opened = _opened_path(fd)
        if opened is not None:
            inside = is_within(opened, root)
        else:  # no /proc: the opened file must be the one the checked real path names
            real = os.stat(os.path.realpath(path))
            inside = (st.st_dev, st.st_ino) == (real.st_dev, real.st_ino)
        if not inside:
            raise OutsideFolderError(f"{path}: outside the import folder once links are followed")
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=True) as fh:
            fd = -1
            return fh.read()
    finally:
        if fd >= 0:
            os.close(fd)
