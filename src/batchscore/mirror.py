"""An ``s3://`` workspace: every run folder kept in S3, worked on in a local copy.

With ``workspace: s3://bucket/prefix``, a run works in the local copy (``local_workspace``)
and its folder — ``run.json``, the DataSource snapshot, the predictions, the evaluation and
the logs — is uploaded to ``s3://bucket/prefix/runs/<run_id>/`` after every step, on failure
and at the end. ``resume`` and ``step`` fetch a run folder they do not have locally, so each
step can run on a different machine (a SageMaker Processing job, an Airflow worker): the
record's paths are rebased onto the new copy. Files go through pyarrow's S3 filesystem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from batchscore.errors import StorageError
from batchscore.records import PipelineHooks, RunRecord

if TYPE_CHECKING:
    from batchscore.config import Settings

log = logging.getLogger("batchscore")

SKIPPED = ("tmp",)  # DuckDB's spill folder: never worth keeping


class RunMirror(PipelineHooks):
    """Uploads run folders to the S3 workspace and fetches them back."""

    def __init__(self, settings: Settings) -> None:
        from batchscore.aws import s3_filesystem

        assert settings.remote_workspace is not None
        self.settings = settings
        self.fs = s3_filesystem(settings)
        self.base = settings.remote_workspace.removeprefix("s3://").rstrip("/")
        self._sent: dict[str, tuple[int, float]] = {}

    def remote(self, run_id: str) -> str:
        return f"{self.base}/runs/{run_id}"

    # Upload -----------------------------------------------------------------------------

    def upload(self, record: RunRecord) -> None:
        """Copy the run folder's new and changed files to S3 (run.json last)."""
        local = Path(record.run_dir)
        files = [
            p
            for p in sorted(local.rglob("*"))
            if p.is_file() and p.relative_to(local).parts[0] not in SKIPPED and p.name != "run.json"
        ]
        for path in [*files, local / "run.json"]:
            stat = path.stat()
            key = str(path)
            if path.name != "run.json" and self._sent.get(key) == (stat.st_size, stat.st_mtime):
                continue
            target = f"{self.remote(record.run_id)}/{path.relative_to(local).as_posix()}"
            with open(path, "rb") as source, self.fs.open_output_stream(target) as out:
                while chunk := source.read(8 << 20):
                    out.write(chunk)
            self._sent[key] = (stat.st_size, stat.st_mtime)

    def _upload(self, record: RunRecord) -> None:
        try:
            self.upload(record)
        except Exception as exc:
            log.error(
                "could not upload run %s to %s: %s", record.run_id, self.remote(record.run_id), exc
            )
            raise

    def after_step(self, record: RunRecord, step: str) -> None:
        self._upload(record)

    def on_pipeline_error(self, record: RunRecord, step: str, error: BaseException) -> None:
        self._upload(record)

    def after_pipeline_run(self, record: RunRecord) -> None:
        self._upload(record)

    # Fetch ------------------------------------------------------------------------------

    def fetch(self, run_id: str, runs_path: Path) -> bool:
        """Download ``run_id``'s folder when this machine has none; False if S3 has none."""
        from pyarrow import fs as pafs

        local = runs_path / run_id
        if (local / "run.json").exists():
            return True
        remote = self.remote(run_id)
        if self.fs.get_file_info(f"{remote}/run.json").type == pafs.FileType.NotFound:
            return False
        try:
            local.mkdir(parents=True, exist_ok=True)
            selector = pafs.FileSelector(remote, recursive=True)
            for info in self.fs.get_file_info(selector):
                if info.type != pafs.FileType.File:
                    continue
                target = local / info.path[len(remote) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(info.path) as source, open(target, "wb") as out:
                    while chunk := source.read(8 << 20):
                        out.write(chunk)
        except OSError as exc:
            raise StorageError(f"cannot fetch run {run_id} from s3://{remote}: {exc}") from exc
        rebase(local)
        log.info("fetched run %s from s3://%s", run_id, remote)
        return True


def rebase(run_dir: Path) -> None:
    """Point a fetched run record's paths at this machine's copy of its folder."""
    import json

    record = json.loads((run_dir / "run.json").read_text())
    old = record["run_dir"]
    if old == str(run_dir):
        return
    text = (run_dir / "run.json").read_text()
    (run_dir / "run.json").write_text(text.replace(json.dumps(old)[1:-1], str(run_dir)))
