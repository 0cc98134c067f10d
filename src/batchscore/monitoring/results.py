"""What a check concludes, and the monitoring table's columns (a leaf module: pyarrow only).

One :class:`CheckResult` per check × feature (``feature`` is None for a run-level check such as
volume or freshness). Validate writes them to ``runs/<run_id>/checks.json`` and to the
monitoring table ``<athena_database>.<athena_output_table>_monitoring``, one row each, so a
trend is one SQL query away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

# pass: within the threshold; warn / block: beyond it, with the check's action;
# skipped: no reference to compare with (the detail says which and how to get one);
# info: a figure recorded without a threshold (late-label metrics, rows quarantined).
Status = Literal["pass", "warn", "block", "skipped", "info"]
STATUSES: tuple[str, ...] = ("pass", "warn", "block", "skipped", "info")


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict on one feature (or on the run).

    Attributes:
        check: The check's name, as under ``checks:`` in the config (``psi``, ``null_rate`` …),
            or ``late_labels`` for realized metrics from ``batchscore evaluate``.
        feature: The feature column it is about; None for a run-level check.
        statistic: What ``value`` measures (``psi``, ``null_share_change``, ``accuracy`` …).
        reference: What it was compared with: ``training``, ``previous_run`` or ``""``.
        value: The statistic's value (None when skipped).
        threshold: The configured threshold (None when the check has none).
        status: ``pass``, ``warn``, ``block``, ``skipped`` or ``info``.
        action: The configured action (``warn``, ``block``), ``""`` for info rows.
        detail: One sentence for a person: what was seen, against what, and the fix.
    """

    check: str
    feature: str | None
    statistic: str
    reference: str
    value: float | None
    threshold: float | None
    status: Status
    action: str
    detail: str

    @property
    def violated(self) -> bool:
        return self.status in ("warn", "block")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})  # type: ignore[arg-type]


def monitoring_schema() -> Any:
    """The monitoring table's Arrow schema: one row per run × check × feature, partitioned by
    ``inference_date``."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("run_id", pa.string()),
            pa.field("pipeline_name", pa.string()),
            pa.field("id_range", pa.string()),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.int32()),
            pa.field("check", pa.string()),
            pa.field("feature", pa.string()),
            pa.field("statistic", pa.string()),
            pa.field("reference", pa.string()),
            pa.field("value", pa.float64()),
            pa.field("threshold", pa.float64()),
            pa.field("status", pa.string()),
            pa.field("action", pa.string()),
            pa.field("detail", pa.string()),
            pa.field("recorded_at", pa.timestamp("us")),
            pa.field("inference_date", pa.date32()),
        ]
    )


MONITORING_SUFFIX = "_monitoring"
QUARANTINE_SUFFIX = "_quarantine"
