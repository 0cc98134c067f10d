"""Unpacking a model archive (SageMaker's ``model.tar.gz``) without trusting it.

``tarfile.extractall(filter="data")`` can be bypassed on the Python versions batchscore
supports (CVE-2025-4517 family), so members are never handed to tarfile's extraction: each is
checked here and only regular files and directories are written, file contents copied by us
with a running byte count. Refused: links, devices, FIFOs, absolute paths, drive letters,
``..``, anything that would land outside the target, duplicate members, more than
``max_members`` members, more than ``max_bytes`` bytes unpacked (declared or actually written).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zlib
from pathlib import Path

from batchscore.errors import ModelLoadError

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_MEMBERS = 10_000
_CHUNK = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def format_bytes(size: int) -> str:
    """``2147483648`` → ``'2 GiB'``, ``2000`` → ``'2,000 bytes'`` (limits in messages)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale and size % scale == 0:
            return f"{size // scale:,} {unit}"
    return f"{size:,} bytes"


def extract_archive(
    archive: Path,
    target: Path,
    *,
    name: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Unpack the tar archive ``archive`` (any compression tarfile reads) into ``target``.

    Args:
        archive: the archive file.
        target: a folder that does not exist yet; it is created, and removed again on failure.
        name: what the archive holds, for messages (``"model 'churn' v3"``).
        max_bytes: the most bytes all files together may unpack to.
        max_members: the most members the archive may hold.

    Raises:
        ModelLoadError: a member is refused (the message names it and why), a limit is
            exceeded, or the archive is unreadable. Nothing is left in ``target``.
    """
    target.mkdir(parents=True)
    try:
        _extract(archive, target, name, max_bytes, max_members)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _extract(archive: Path, target: Path, name: str, max_bytes: int, max_members: int) -> None:
    root = os.path.realpath(target)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    seen: set[tuple[str, ...]] = set()
    written = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for count, member in enumerate(_members(tar), start=1):
                if count > max_members:
                    raise ModelLoadError(
                        f"{name}: the archive holds more than {max_members:,} members; "
                        "refusing to unpack it."
                    )
                parts = _safe_parts(member.name, name)
                if not parts:
                    continue  # the archive's own root ("./")
                if parts in seen:
                    raise ModelLoadError(
                        f"{name}: member {member.name!r} appears twice in the archive."
                    )
                seen.add(parts)
                kind = _refused_kind(member)
                if kind:
                    raise ModelLoadError(f"{name}: member {member.name!r} {kind}; refused.")
                if not member.isdir() and member.size > max_bytes - written:
                    raise ModelLoadError(_too_big(name, member.name, max_bytes))
                parent_fd = _open_parent(root_fd, root, parts, member.name, name)
                try:
                    if member.isdir():
                        _make_dir(parent_fd, parts[-1], member.name, name)
                    else:
                        written = _write_file(
                            tar, member, parent_fd, parts[-1], written, max_bytes, name
                        )
                finally:
                    os.close(parent_fd)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ModelLoadError(f"{name}: the archive is not a readable tar file ({exc}).") from exc
    except OSError as exc:
        raise ModelLoadError(f"{name}: unpacking the archive failed ({exc}).") from exc
    finally:
        os.close(root_fd)


def _members(tar: tarfile.TarFile):
    """Members one by one (not ``getmembers()``, which reads the whole archive first)."""
    while True:
        member = tar.next()
        if member is None:
            return
        yield member


def _safe_parts(member_name: str, name: str) -> tuple[str, ...]:
    """The member's path as parts relative to the target; refuses anything that could leave it."""
    if member_name.startswith(("/", "\\")) or _DRIVE.match(member_name):
        raise ModelLoadError(
            f"{name}: member {member_name!r} has an absolute path; archive members must be "
            "relative to the model folder."
        )
    if "\x00" in member_name:
        raise ModelLoadError(f"{name}: member {member_name!r} has a NUL byte in its name.")
    # Backslashes count as separators too, so a path meant for Windows cannot hide a '..'.
    parts = tuple(p for p in re.split(r"[/\\]", member_name) if p not in ("", "."))
    if ".." in parts:
        raise ModelLoadError(
            f"{name}: member {member_name!r} would be written outside the model folder."
        )
    return parts


def _refused_kind(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"is a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"is a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "is a device file"
    if member.isfifo():
        return "is a FIFO"
    if not (member.isfile() or member.isdir()):
        return f"is of an unsupported type ({member.type!r})"
    return None


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _open_parent(root_fd: int, root: str, parts: tuple[str, ...], member_name: str, name: str):
    """Create the member's parent folders and open the last one, one level at a time relative
    to the folder opened before and never following a link, so no folder (made earlier, or
    swapped meanwhile) can redirect the member. Returns the parent's descriptor."""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            _make_dir(fd, part, member_name, name)
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                _make_dir(fd, part, member_name, name)  # a link or a file: say which
                raise
            os.close(fd)
            fd = next_fd
        # Checked at write time, on the folder actually opened.
        real = _real_path(fd)
        if real is not None and not _inside(root, real):
            raise ModelLoadError(
                f"{name}: member {member_name!r} would be written outside the model folder."
            )
        return fd
    except BaseException:
        os.close(fd)
        raise


def _real_path(fd: int) -> str | None:
    try:
        return os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # no /proc (not Linux): the no-follow opens above still hold
        return None


def _make_dir(parent_fd: int, part: str, member_name: str, name: str) -> None:
    """Make folder ``part`` in the folder ``parent_fd``; an existing one must be a folder."""
    try:
        os.mkdir(part, 0o755, dir_fd=parent_fd)
        return
    except FileExistsError:
        pass
    mode = os.lstat(part, dir_fd=parent_fd).st_mode
    if stat.S_ISLNK(mode):
        raise ModelLoadError(
            f"{name}: member {member_name!r} would be written outside the model folder "
            f"({part!r} is a link)."
        )
    if not stat.S_ISDIR(mode):
        raise ModelLoadError(
            f"{name}: member {member_name!r} needs {part!r} to be a folder, but the archive "
            "made it a file."
        )


def _write_file(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parent_fd: int,
    file_name: str,
    written: int,
    max_bytes: int,
    name: str,
) -> int:
    """Copy the member's bytes to a new file ``file_name`` in the folder ``parent_fd`` (never
    an existing file, never through a link),
    counting what is actually written; returns the new running total."""
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - regular members always have a file object
        raise ModelLoadError(f"{name}: member {member.name!r} has no contents.")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(file_name, flags, 0o644, dir_fd=parent_fd)
    except FileExistsError:
        raise ModelLoadError(
            f"{name}: member {member.name!r} clashes with another member of the same name."
        ) from None
    with source, os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise ModelLoadError(_too_big(name, member.name, max_bytes))
            out.write(chunk)
    return written


def _too_big(name: str, member_name: str, max_bytes: int) -> str:
    return (
        f"{name}: member {member_name!r} exceeds the {format_bytes(max_bytes)} limit on what "
        "the archive may unpack to (registry.max_archive_bytes)."
    )
