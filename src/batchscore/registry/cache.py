"""The workspace's model cache, shared by every registry.

A downloaded model is kept under ``<workspace>/models/<key>/model``, where ``key`` is the
sha256 of everything that identifies the artifact: the registry (MLflow tracking URI,
SageMaker region and package ARN) and the version's source (run id and artifact URI,
``ModelDataUrl`` and the object's ETag) — never just the group and version number, which a
recreated registry or a second registry in the same workspace reuses for other models.

Beside the model, ``manifest.json`` records the sha256 of every file; the files are checked
against it before each reuse, and a cache entry that does not match (corrupted, edited) is
moved aside, logged, and downloaded again.

Concurrency: a download happens in a private staging folder and is renamed into place in one
step; an ``flock`` per key makes a second process wait for the first and then reuse its copy.
A verified entry is never deleted (another process may be reading it); a bad one is renamed
aside before it is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from batchscore.errors import ModelLoadError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL = "model"


def cache_key(parts: Mapping[str, str | None]) -> str:
    """The cache folder name for an artifact identified by ``parts``."""
    text = json.dumps({k: v for k, v in parts.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def content_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each file under ``folder``, by relative POSIX path.

    Raises:
        ValueError: the folder holds something other than files and folders (a link).
    """
    hashes: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for entry in [*dirnames, *filenames]:
            path = os.path.join(dirpath, entry)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            relative = Path(path).relative_to(folder).as_posix()
            if not stat.S_ISREG(mode):
                raise ValueError(f"{relative!r} is not a regular file")
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(1024 * 1024):
                    digest.update(chunk)
            hashes[relative] = digest.hexdigest()
    return dict(sorted(hashes.items()))


def _total_hash(hashes: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for relative, file_hash in sorted(hashes.items()):
        digest.update(f"{relative}\0{file_hash}\n".encode())
    return digest.hexdigest()


class ModelCache:
    """Downloaded models, keyed by artifact identity and verified before reuse."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fetch(
        self,
        key_parts: Mapping[str, str | None],
        download: Callable[[Path], Path],
        *,
        label: str,
    ) -> Path:
        """The model folder for ``key_parts``: a verified cached copy, else a fresh download.

        Args:
            key_parts: what identifies the artifact (registry and version source).
            download: called with an empty staging folder; puts the model in it and returns
                the model's folder (inside the staging folder). May raise ModelLoadError.
            label: the model, for messages (``"model 'churn' v3"``).

        Returns:
            The cached model folder; it stays valid while other processes use the cache.

        Raises:
            ModelLoadError: the download failed (whatever ``download`` raised).
        """
        key = cache_key(key_parts)
        entry = self.root / key
        if self._verify(entry, label, warn=False):
            return entry / MODEL
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            # Another process may have finished the download while we waited.
            if entry.exists():
                if self._verify(entry, label, warn=True):
                    return entry / MODEL
                self._discard(entry)
            self._download_into(entry, key_parts, download, label)
        return entry / MODEL

    def _download_into(
        self,
        entry: Path,
        key_parts: Mapping[str, str | None],
        download: Callable[[Path], Path],
        label: str,
    ) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{entry.name[:8]}-", dir=self.root))
        try:
            work = staging / "download"
            work.mkdir()
            folder = Path(download(work))
            if not folder.resolve().is_relative_to(work.resolve()):
                raise ModelLoadError(f"{label}: the download landed outside its staging folder.")
            os.rename(folder, staging / MODEL)
            shutil.rmtree(work, ignore_errors=True)
            try:
                hashes = content_hashes(staging / MODEL)
            except ValueError as exc:
                raise ModelLoadError(f"{label}: the downloaded model is refused: {exc}.") from exc
            manifest = {
                "key": dict(key_parts),
                "content_sha256": _total_hash(hashes),
                "files": hashes,
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
            try:
                os.rename(staging, entry)  # atomic: the entry is complete or absent
            except OSError as exc:
                # Another writer (without our lock, e.g. on a filesystem without flock) won.
                if not self._verify(entry, label, warn=True):
                    raise ModelLoadError(
                        f"{label}: cannot place the download in the model cache at {entry}: {exc}."
                    ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _verify(self, entry: Path, label: str, *, warn: bool) -> bool:
        """True when the entry's files match its manifest exactly."""
        manifest_path = entry / MANIFEST
        if not manifest_path.exists():
            if warn and entry.exists():
                log.warning("cached %s at %s has no manifest; downloading it again", label, entry)
            return False
        problem: str | None = None
        try:
            manifest = json.loads(manifest_path.read_text())
            expected = manifest["files"]
            if _total_hash(expected) != manifest["content_sha256"]:
                problem = "its manifest does not add up"
            else:
                found = content_hashes(entry / MODEL)
                changed = sorted(
                    p for p in set(expected) | set(found) if expected.get(p) != found.get(p)
                )
                if changed:
                    problem = f"{len(changed)} file(s) differ from the manifest: {changed[0]!r}"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"it cannot be checked ({type(exc).__name__}: {exc})"
        if problem is None:
            return True
        if warn:
            log.warning(
                "cached %s at %s is corrupt or was changed (%s); downloading it again",
                label,
                entry,
                problem,
            )
        return False

    def _discard(self, entry: Path) -> None:
        """Rename a bad entry aside (a reader keeps its open files), then remove it."""
        aside = self.root / f".discarded-{entry.name}-{uuid.uuid4().hex[:8]}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(entry, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def _lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """One downloader per key across processes."""
        return key_lock(self.root, key)


@contextlib.contextmanager
def key_lock(root: Path, key: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``root/.locks/<key>.lock``: one writer of a cache entry across
    processes, released by the OS if the holder dies."""
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
