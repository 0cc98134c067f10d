"""Hostile model archives, built by hand with tarfile, are refused and write nothing outside.

Each archive is unpacked into ``<tmp>/sentinel/model``; after a refusal ``sentinel`` must be
empty (the model folder removed) and nothing may have appeared anywhere else under ``tmp``.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import boto3
import pytest

from batchscore.errors import ModelLoadError
from batchscore.registry import archive as archive_module
from batchscore.registry import open_registry
from batchscore.registry.archive import extract_archive
from tests.aws_fixtures import BUCKET, REGION, seed_settings
from tests.reliability import record

NAME = "model 'churn' v3"
GIB = 1024**3


def build(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A gzipped tar of exactly these members (headers as given, contents as given)."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture
def place(tmp_path: Path):
    """(archive path, target) with a sentinel folder around the target."""
    (tmp_path / "sentinel").mkdir()
    return tmp_path / "archive.tar.gz", tmp_path / "sentinel" / "model"


def assert_nothing_written(tmp_path: Path) -> None:
    assert list((tmp_path / "sentinel").iterdir()) == []  # the model folder is gone too
    assert files_under(tmp_path) == {"archive.tar.gz", "sentinel"}


HOSTILE = {
    "dot-dot path": ([file("../escaped.txt")], r"'../escaped.txt' would be written outside"),
    "dot-dot deeper": (
        [file("model/../../escaped.txt")],
        r"'model/../../escaped.txt' would be written outside",
    ),
    "backslash dot-dot": ([file("..\\escaped.txt")], "would be written outside"),
    "drive letter": ([file("C:/escaped.txt")], "has an absolute path"),
    "symlink then a file through it": (
        [special("link", tarfile.SYMTYPE, ".."), file("link/escaped.txt")],
        r"'link' is a symbolic link \(to '\.\.'\)",
    ),
    "hard link": (
        [file("a.txt"), special("b.txt", tarfile.LNKTYPE, "../escaped.txt")],
        "'b.txt' is a hard link",
    ),
    "character device": ([special("dev", tarfile.CHRTYPE)], "'dev' is a device file"),
    "block device": ([special("blk", tarfile.BLKTYPE)], "'blk' is a device file"),
    "fifo": ([special("pipe", tarfile.FIFOTYPE)], "'pipe' is a FIFO"),
    "duplicate member": ([file("MLmodel", b"a"), file("MLmodel", b"b")], "appears twice"),
    "file where a folder is needed": (
        [file("model", b"a"), file("model/MLmodel")],
        "needs 'model' to be a folder",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_member_is_refused(case: str, place, tmp_path: Path) -> None:
    members, message = HOSTILE[case]
    archive, target = place
    build(archive, members)
    with pytest.raises(ModelLoadError, match=message) as caught:
        extract_archive(archive, target, name=NAME)
    assert str(caught.value).startswith(NAME)
    assert_nothing_written(tmp_path)
    record("security", f"model archive: {case}", outcome="ModelLoadError naming the member")


def test_absolute_path_is_refused(place, tmp_path: Path) -> None:
    archive, target = place
    build(archive, [file(str(tmp_path / "escaped.txt"))])
    with pytest.raises(ModelLoadError, match="has an absolute path"):
        extract_archive(archive, target, name=NAME)
    assert_nothing_written(tmp_path)
    record("security", "model archive: absolute path", outcome="ModelLoadError naming the member")


def test_a_folder_turned_into_a_link_cannot_redirect_a_later_member(
    place, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something swaps a folder made earlier for a link to outside (a race, say): the next
    member written through it is refused, because folders are opened without following links
    and the real path of the folder actually opened is checked at write time."""
    archive, target = place
    build(archive, [file("sub/first.txt"), file("sub/escaped.txt")])
    outside = tmp_path / "outside"
    outside.mkdir()
    real_open = os.open
    swapped = []

    def open_then_swap(path, flags, mode=0o777, *, dir_fd=None):
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        if path == "first.txt":
            sub = target / "sub"
            os.rename(sub, tmp_path / "moved")
            os.symlink(outside, sub)
            swapped.append(True)
        return fd

    monkeypatch.setattr(archive_module.os, "open", open_then_swap)
    with pytest.raises(ModelLoadError, match=r"'sub/escaped\.txt' would be written outside"):
        extract_archive(archive, target, name=NAME)
    assert swapped and list(outside.iterdir()) == []


def lying_header_archive(path: Path, size: int) -> Path:
    """A member whose header declares ``size`` bytes, followed by almost nothing: cheap to
    build, and a reader that trusted the header would try to write all of it."""
    info = tarfile.TarInfo("model.skops")
    info.size = size
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + bytes(4096)
    path.write_bytes(gzip.compress(raw))
    return path


def test_a_member_declaring_10_gb_is_refused_before_anything_is_written(
    place, tmp_path: Path
) -> None:
    archive, target = place
    lying_header_archive(archive, 10 * 10**9)
    with pytest.raises(ModelLoadError, match=r"'model.skops' exceeds the 2 GiB limit"):
        extract_archive(archive, target, name=NAME)
    assert_nothing_written(tmp_path)
    record("security", "model archive: a member declaring 10 GB", outcome="refused: 2 GiB limit")


class Zeros(io.RawIOBase):
    """``size`` zero bytes, never all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_gzip_bomb_stops_at_the_limit(place, tmp_path: Path) -> None:
    """64 MiB of zeros (about 64 KiB compressed) against a 4 MiB limit: the copy stops at the
    limit and the partial file is removed with the model folder."""
    archive, target = place
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(file("ok.bin")[0], io.BytesIO(b"x"))
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 * 1024**2
        tar.addfile(info, Zeros(info.size))
    assert archive.stat().st_size < 1024**2
    with pytest.raises(ModelLoadError, match=r"'zeros.bin' exceeds the 4 MiB limit"):
        extract_archive(archive, target, name=NAME, max_bytes=4 * 1024**2)
    assert_nothing_written(tmp_path)
    record("security", "model archive: gzip bomb", outcome="refused at the byte limit")


def test_many_small_members_add_up_to_the_limit(place, tmp_path: Path) -> None:
    archive, target = place
    build(archive, [file(f"part-{i}.bin", bytes(600)) for i in range(4)])
    with pytest.raises(ModelLoadError, match=r"'part-3.bin' exceeds the 2,000 bytes limit"):
        extract_archive(archive, target, name=NAME, max_bytes=2000)
    assert_nothing_written(tmp_path)


def test_too_many_members(place, tmp_path: Path) -> None:
    archive, target = place
    build(archive, [file(f"f{i}") for i in range(6)])
    with pytest.raises(ModelLoadError, match="more than 5 members"):
        extract_archive(archive, target, name=NAME, max_members=5)
    assert_nothing_written(tmp_path)
    record("security", "model archive: too many members", outcome="refused at the member limit")


def test_not_a_tar_file(place, tmp_path: Path) -> None:
    archive, target = place
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ModelLoadError, match="not a readable tar file"):
        extract_archive(archive, target, name=NAME)
    assert_nothing_written(tmp_path)


def test_a_normal_mlflow_archive_unpacks(place) -> None:
    archive, target = place
    root = tarfile.TarInfo("./")
    root.type = tarfile.DIRTYPE
    folder = tarfile.TarInfo("model")
    folder.type = tarfile.DIRTYPE
    build(
        archive,
        [
            (root, None),
            (folder, None),
            file("model/MLmodel", b"flavors: {}\n"),
            file("model/extra_files/training_profile.json", b"{}"),
            file("./model/model.skops", b"PK..."),
            (tarfile.TarInfo("model/empty"), b""),
        ],
    )
    extract_archive(archive, target, name=NAME, max_bytes=100, max_members=6)
    assert files_under(target) == {
        "model",
        "model/MLmodel",
        "model/extra_files",
        "model/extra_files/training_profile.json",
        "model/model.skops",
        "model/empty",
    }
    assert (target / "model" / "MLmodel").read_bytes() == b"flavors: {}\n"
    assert (target / "model" / "model.skops").read_bytes() == b"PK..."


# End to end: a SageMaker package whose model.tar.gz is hostile --------------------------------


def approved_package(tmp_path: Path, archive: Path, group: str) -> None:
    boto3.client("s3", region_name=REGION).upload_file(str(archive), BUCKET, "hostile/model.tar.gz")
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    sagemaker.create_model_package_group(ModelPackageGroupName=group)
    sagemaker.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [
                {"Image": "sklearn:1", "ModelDataUrl": f"s3://{BUCKET}/hostile/model.tar.gz"}
            ],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("dot-dot path", "'../../../../../escaped.txt' would be written outside the model folder"),
        ("symlink", "'link' is a symbolic link"),
        ("10 GB member", "'model.skops' exceeds the 2 GiB limit"),
    ],
    ids=["dot-dot", "symlink", "10GB-member"],
)
def test_sagemaker_load_refuses_a_hostile_model_tar_gz(
    aws: str,
    tmp_path: Path,
    case: str,
    message: str,
) -> None:
    archive = tmp_path / "upload" / "model.tar.gz"
    archive.parent.mkdir()
    if case == "dot-dot path":
        # From <ws>/models/<staging>/download/model, five levels up is tmp_path.
        build(archive, [file("MLmodel"), file("../../../../../escaped.txt")])
    elif case == "symlink":
        build(archive, [special("link", tarfile.SYMTYPE, str(tmp_path)), file("link/escaped.txt")])
    else:
        lying_header_archive(archive, 10 * 10**9)
    settings = seed_settings(tmp_path)
    group = settings.model_package_group
    approved_package(tmp_path, archive, group)
    registry = open_registry(settings)
    version = registry.resolve(group)
    with pytest.raises(ModelLoadError, match=message) as caught:
        registry.load(version)
    assert f"model '{group}' v1" in str(caught.value)
    cache = settings.workspace_path / "models"
    # Nothing of the archive is kept in the cache (lock files aside).
    assert [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"] == []
    assert not list(tmp_path.rglob("escaped.txt"))
    record("security", f"SageMaker model.tar.gz: {case}", outcome="ModelLoadError; nothing kept")
