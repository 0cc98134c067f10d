"""The checks Validate runs: a run's summary against its reference, as :class:`CheckResult` s.

Pure functions of (this run's :class:`RunSummary`, the model's training profile, the previous
successful run's summary, :class:`ChecksSettings`, the run's as-of time): no I/O, so each check
is tested on hand-made summaries and the figures are reproducible from ``summary.json``.

The population stability index (PSI) of an actual distribution ``a`` against an expected one
``e`` over the same bins (shares summing to 1) is::

    PSI = Σ_i (a_i - e_i) · ln(a_i / e_i),   with a_i, e_i raised to at least ε = 0.0001

so an empty bin on either side adds a large but finite term instead of infinity. Numeric
features use the training profile's quantile bins (``statistics[col]["bin_edges"]``,
``bin_fractions``: shares of the non-null training values); categorical features use the
categories' shares (``statistics[col]["frequencies"]``); predictions use the training
validation scores' bins (``profile["prediction_reference"]``). Rules of thumb: below 0.1 is
stable, 0.1-0.25 a moderate shift, above 0.25 a large one (the defaults warn there).

Each check has a threshold and an action (``CHECK_DEFAULTS`` in :mod:`batchscore.config`); a
check beyond its threshold takes its action as status (``warn`` or ``block``), one without a
reference is ``skipped`` with a detail naming how to get one, and one set to ``off`` is not
computed. The verdict is the worst status: ``block`` > ``warn`` > ``pass``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchscore.monitoring.results import CheckResult
from batchscore.monitoring.summaries import OTHER

if TYPE_CHECKING:
    from batchscore.config import CheckSettings, ChecksSettings
    from batchscore.monitoring.summaries import RunSummary

EPSILON = 1e-4
CHECKS_FILE = "checks.json"

TRAINING = "training"
PREVIOUS = "previous_run"

# How to get a reference when there is none (the detail of a skipped check says it).
NO_PROFILE_FIX = (
    "the model's training profile has no {what}: retrain it with 'batchscore train' (its "
    "profile has them), or set registry.training_data so batchscore profiles the model's "
    "training data"
)
NO_PREVIOUS_FIX = (
    "first run of this logical run (pipeline and id range): no earlier successful run to "
    "compare with; the next run compares with this one"
)

# Types a profile's ``dtypes`` (or a model signature) gives a numeric feature.
_NUMERIC_EXPECTED = frozenset({"double", "float", "long", "integer", "int", "float64", "int64"})
# Arrow type names (``str(pa.DataType)``) that hold numbers: castable to a numeric feature.
_NUMERIC_TYPES = ("int", "uint", "float", "double", "halffloat", "decimal", "bool")


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = EPSILON) -> float:
    """The population stability index of ``actual`` shares against ``expected`` shares.

    Args:
        expected: The reference's share of each bin (sums to 1).
        actual: This run's share of the same bins (sums to 1).
        epsilon: The least share a bin counts with on either side (an empty bin would
            otherwise make the index infinite).

    Returns:
        ``Σ (a - e) · ln(a / e)`` over the bins, each share at least ``epsilon``.

    Raises:
        ValueError: the two have a different number of bins.
    """
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} expected bins but {len(actual)} actual bins")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(float(e), epsilon), max(float(a), epsilon)
        total += (a - e) * math.log(a / e)
    return total


def shares(counts: Sequence[float]) -> list[float]:
    """Counts as shares of their total (all zero when the total is)."""
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def category_psi(expected: dict[str, float], counts: dict[str, int]) -> float:
    """PSI over the union of the reference's categories and this run's (an unseen category's
    expected share is 0, so it counts with ``EPSILON``)."""
    categories = sorted(set(expected) | set(counts))
    actual = shares([counts.get(c, 0) for c in categories])
    return psi([expected.get(c, 0.0) for c in categories], actual)


@dataclass
class CheckReport:
    """Every result of one run's checks, and the verdict they make.

    Attributes:
        results: One per check × feature (and reference), in ``CHECK_DEFAULTS`` order.
        reference: What they were compared with (for ``checks.json`` and the report).
    """

    results: list[CheckResult] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return verdict(self.results)

    @property
    def violations(self) -> list[str]:
        return violations(self.results)

    @property
    def max_psi(self) -> float | None:
        """The largest feature PSI against training (numeric or categorical), if any."""
        values = [
            r.value for r in self.results
            if r.check in ("psi", "category_psi") and r.value is not None
        ]  # fmt: skip
        return max(values) if values else None


def verdict(results: Iterable[CheckResult]) -> str:
    """``block`` if any result blocks, else ``warn`` if any warns, else ``pass``."""
    statuses = {r.status for r in results}
    return "block" if "block" in statuses else "warn" if "warn" in statuses else "pass"


def violations(results: Iterable[CheckResult]) -> list[str]:
    """One short line per result beyond its threshold:
    ``psi monthly_charges: 0.412 > 0.25 vs training (block)``."""
    return [describe_violation(r) for r in results if r.violated]


def describe_violation(result: CheckResult) -> str:
    where = f"{result.check} {result.feature}" if result.feature else result.check
    value = "–" if result.value is None else f"{result.value:.4g}"
    limit = "" if result.threshold is None else f" > {result.threshold:g}"
    against = f" vs {result.reference}" if result.reference else ""
    return f"{where}: {result.statistic} {value}{limit}{against} ({result.status})"


def run_checks(
    summary: RunSummary,
    profile: dict[str, Any] | None,
    previous: RunSummary | None,
    settings: ChecksSettings,
    as_of: dt.datetime,
    *,
    input_columns: Sequence[str] | None = None,
    previous_run_id: str | None = None,
    previous_missing: str | None = None,
) -> CheckReport:
    """Every enabled check of ``summary`` against the training ``profile`` and the
    ``previous`` run.

    Args:
        summary: This run's summary (features and predictions).
        profile: The model's training profile (None: the model has none).
        previous: The previous successful run's summary of the same pipeline and id range
            (None: there is none).
        settings: The thresholds and actions (``settings.checks``).
        as_of: The run's as-of time (naive UTC): what freshness measures ages from.
        input_columns: The model's input columns (default: the profile's ``columns``).
        previous_run_id: The previous run's id, recorded in the reference.
        previous_missing: Why there is no previous summary, when there is a previous run
            but its summary is gone (the skipped checks' detail says it).

    Returns:
        The results and the reference they used.
    """
    profile = profile or {}
    named = settings.named()
    columns = list(input_columns if input_columns is not None else profile.get("columns", []))
    no_previous = previous_missing or NO_PREVIOUS_FIX
    context = _Context(summary, profile, previous, named, as_of, columns, no_previous)
    results: list[CheckResult] = []
    for name, check in (
        ("contract", _contract),
        ("null_rate", _null_rate),
        ("psi", _numeric_psi),
        ("category_psi", _category_psi),
        ("unseen_categories", _unseen_categories),
        ("range", _range),
        ("freshness", _freshness),
        ("volume", _volume),
        ("prediction_psi", _prediction_psi),
        ("positive_rate", _positive_rate),
    ):
        if named[name].action != "off":
            results.extend(check(context, name, named[name]))
    return CheckReport(results, reference_of(profile, columns, previous_run_id))


def reference_of(
    profile: dict[str, Any], columns: Sequence[str], previous_run_id: str | None
) -> dict[str, Any]:
    """What the checks compared with: the training bins, frequencies and ranges per feature,
    the prediction reference, and the previous run's id."""
    statistics = profile.get("statistics", {})
    features: dict[str, Any] = {}
    for column in columns:
        stats = statistics.get(column, {})
        kept = ("bin_edges", "bin_fractions", "frequencies", "min", "max", "missing_fraction")
        features[column] = {k: stats[k] for k in kept if k in stats}
    return {
        "training": {
            "features": features,
            "prediction_reference": profile.get("prediction_reference"),
            "rows": profile.get("rows"),
        },
        "previous_run_id": previous_run_id,
    }


# The checks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    summary: RunSummary
    profile: dict[str, Any]
    previous: RunSummary | None
    named: dict[str, CheckSettings]
    as_of: dt.datetime
    columns: list[str]
    no_previous: str

    def stats(self, column: str) -> dict[str, Any]:
        return self.profile.get("statistics", {}).get(column, {})


# A result's threshold defaults to the check's; freshness's age check has its own (max_age).
_SETTING: Any = object()


def _result(
    name: str,
    setting: CheckSettings,
    feature: str | None,
    statistic: str,
    reference: str,
    value: float | None,
    violated: bool,
    detail: str,
    threshold: Any = _SETTING,
) -> CheckResult:
    return CheckResult(
        check=name,
        feature=feature,
        statistic=statistic,
        reference=reference,
        value=None if value is None else round(float(value), 6),
        threshold=setting.threshold if threshold is _SETTING else threshold,
        status=setting.action if violated else "pass",  # type: ignore[arg-type]
        action=setting.action,
        detail=detail,
    )


def _skipped(
    name: str, setting: CheckSettings, feature: str | None, statistic: str, reference: str,
    detail: str, threshold: Any = _SETTING,
) -> CheckResult:  # fmt: skip
    return CheckResult(
        check=name, feature=feature, statistic=statistic, reference=reference, value=None,
        threshold=setting.threshold if threshold is _SETTING else threshold, status="skipped",
        action=setting.action, detail=detail,
    )  # fmt: skip


def _beyond(value: float, threshold: float | None) -> bool:
    return threshold is not None and value > threshold + 1e-12


def _contract(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """Each input column present, and of a type castable to the profile's ``dtypes``."""
    dtypes = c.profile.get("dtypes", {})
    out = []
    for column in c.columns:
        arrived = c.summary.columns.get(column)
        if arrived is None:
            out.append(_result(
                name, setting, column, "missing", "", 1.0, True,
                f"the model needs {column!r} but the snapshot has no such column: restore it "
                "in the feature group (or train a model without it)",
            ))  # fmt: skip
            continue
        expected = dtypes.get(column)
        numeric_arrived = arrived.startswith(_NUMERIC_TYPES)
        if expected is None:
            out.append(
                _result(
                    name,
                    setting,
                    column,
                    "uncastable",
                    "",
                    0.0,
                    False,
                    f"{column!r} arrives as {arrived}; the profile names no type",
                )
            )
            continue
        if expected not in _NUMERIC_EXPECTED or numeric_arrived:  # anything casts to text
            note = "" if _same_kind(expected, arrived) else f", cast to {expected}"
            out.append(_result(name, setting, column, "uncastable", TRAINING, 0.0, False,
                               f"{column!r} arrives as {arrived}{note}"))  # fmt: skip
            continue
        # A numeric feature arriving as text: castable only if its values parse as numbers;
        # a batch that does not parse is summarised as all null (summaries._numeric).
        numeric = c.summary.numeric.get(column)
        rows = numeric.rows if numeric else 0
        unparsed = (numeric.nulls / rows) if numeric and rows else 0.0
        parsed_none = numeric is not None and rows > 0 and numeric.minimum is None
        baseline = float(c.stats(column).get("missing_fraction") or 0.0)
        violated = parsed_none or unparsed > baseline + (c.named["null_rate"].threshold or 0.0)
        detail = (
            f"{column!r} arrives as {arrived} but the model was trained on {expected}: "
            f"{unparsed:.1%} of its values are null or do not parse as numbers; fix the "
            "upstream type (or cast it in the feature group) and rerun"
            if violated
            else f"{column!r} arrives as {arrived}, cast to {expected}: its values parse"
        )
        out.append(_result(name, setting, column, "uncastable", TRAINING,
                           unparsed if violated else 0.0, violated, detail))  # fmt: skip
    return out


def _same_kind(expected: str, arrived: str) -> bool:
    text = ("string", "large_string", "utf8", "large_utf8", "dictionary")
    if expected in ("string", "category", "object"):
        return arrived.startswith(text)
    return arrived == expected


def _null_shares(summary: RunSummary) -> dict[str, float]:
    shares_ = {c: s.null_share for c, s in summary.numeric.items()}
    shares_.update({c: s.null_share for c, s in summary.categorical.items()})
    return shares_


def _null_rate(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """Null share now minus the training ``missing_fraction`` and the previous run's share."""
    now = _null_shares(c.summary)
    before = _null_shares(c.previous) if c.previous is not None else {}
    out = []
    for column in [col for col in c.columns if col in now]:
        missing = c.stats(column).get("missing_fraction")
        if missing is None:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "null_share_change",
                    TRAINING,
                    NO_PROFILE_FIX.format(what=f"missing_fraction for {column!r}"),
                )
            )
        else:
            change = now[column] - float(missing)
            out.append(_result(
                name, setting, column, "null_share_change", TRAINING, change,
                _beyond(abs(change), setting.threshold),
                f"{now[column]:.1%} of {column!r} is null, {float(missing):.1%} in training",
            ))  # fmt: skip
        if c.previous is None or column not in before:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "null_share_change",
                    PREVIOUS,
                    c.no_previous
                    if c.previous is None
                    else f"the previous run did not summarise {column!r}",
                )
            )
            continue
        change = now[column] - before[column]
        out.append(_result(
            name, setting, column, "null_share_change", PREVIOUS, change,
            _beyond(abs(change), setting.threshold),
            f"{now[column]:.1%} of {column!r} is null, {before[column]:.1%} in the previous run",
        ))  # fmt: skip
    return out


def _numeric_psi(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """PSI of each numeric feature on the training quantile bins."""
    out = []
    for column, feature in c.summary.numeric.items():
        stats = c.stats(column)
        edges, fractions = stats.get("bin_edges"), stats.get("bin_fractions")
        if not edges or not fractions:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "psi",
                    TRAINING,
                    NO_PROFILE_FIX.format(what=f"quantile bins for {column!r}"),
                )
            )
            continue
        if [float(e) for e in edges] != [float(e) for e in feature.bin_edges] or (
            len(feature.bin_counts) != len(fractions)
        ):
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "psi",
                    TRAINING,
                    f"{column!r} was summarised on other bins than the profile's "
                    "(the profile changed since BatchInference): rerun the run",
                )
            )
            continue
        if not sum(feature.bin_counts):
            out.append(_skipped(name, setting, column, "psi", TRAINING,
                                f"{column!r} has no non-null value to compare (the null_rate "
                                "check reports it)"))  # fmt: skip
            continue
        value = psi(fractions, shares(feature.bin_counts))
        out.append(_result(
            name, setting, column, "psi", TRAINING, value, _beyond(value, setting.threshold),
            f"PSI of {column!r} on the training deciles is {value:.3f}",
        ))  # fmt: skip
    return out


def _category_psi(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """PSI of each categorical feature's category shares against training's."""
    out = []
    for column, feature in c.summary.categorical.items():
        frequencies = c.stats(column).get("frequencies")
        if not frequencies:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "psi",
                    TRAINING,
                    NO_PROFILE_FIX.format(what=f"category frequencies for {column!r}"),
                )
            )
            continue
        if not sum(feature.counts.values()):
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "psi",
                    TRAINING,
                    f"{column!r} has no non-null value to compare",
                )
            )
            continue
        value = category_psi(frequencies, feature.counts)
        out.append(_result(
            name, setting, column, "psi", TRAINING, value, _beyond(value, setting.threshold),
            f"PSI of {column!r}'s category shares is {value:.3f}",
        ))  # fmt: skip
    return out


def _unseen_categories(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """Share of a categorical feature's non-null values the model never saw."""
    out = []
    vocabularies = c.profile.get("category_vocabularies", {})
    for column, feature in c.summary.categorical.items():
        known = set(vocabularies.get(column) or c.stats(column).get("frequencies") or [])
        values = sum(feature.counts.values())
        if not known:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "unseen_share",
                    TRAINING,
                    NO_PROFILE_FIX.format(what=f"categories of {column!r}"),
                )
            )
            continue
        if not values:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "unseen_share",
                    TRAINING,
                    f"{column!r} has no non-null value to compare",
                )
            )
            continue
        unseen = {v: n for v, n in feature.counts.items() if v not in known and v != OTHER}
        unseen_rows = max(feature.unseen, sum(unseen.values()))
        share = unseen_rows / values
        examples = ", ".join(repr(v) for v in sorted(unseen, key=lambda v: -unseen[v])[:3])
        out.append(_result(
            name, setting, column, "unseen_share", TRAINING, share,
            _beyond(share, setting.threshold),
            f"{share:.1%} of {column!r} are categories the model never saw"
            + (f" (e.g. {examples}); they are scored as missing" if examples else ""),
        ))  # fmt: skip
    return out


def _range(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """Share of a numeric feature's non-null values outside the training [min, max]."""
    out = []
    for column, feature in c.summary.numeric.items():
        stats = c.stats(column)
        low, high = stats.get("min"), stats.get("max")
        known = feature.rows - feature.nulls
        if low is None or high is None:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "out_of_range_share",
                    TRAINING,
                    NO_PROFILE_FIX.format(what=f"min/max for {column!r}"),
                )
            )
            continue
        if not known:
            out.append(
                _skipped(
                    name,
                    setting,
                    column,
                    "out_of_range_share",
                    TRAINING,
                    f"{column!r} has no non-null value to compare",
                )
            )
            continue
        outside = feature.below_training_min + feature.above_training_max
        share = outside / known
        out.append(_result(
            name, setting, column, "out_of_range_share", TRAINING, share,
            _beyond(share, setting.threshold),
            f"{share:.2%} of {column!r} lie outside the training range [{low:g}, {high:g}] "
            f"(seen {_g(feature.minimum)} to {_g(feature.maximum)})",
        ))  # fmt: skip
    return out


def _g(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _freshness(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """The newest event time's age at the run's as-of time, and the share of rows whose
    latest record is older than ``max_feature_age``."""
    max_age = getattr(setting, "max_age", None)
    max_feature_age = getattr(setting, "max_feature_age", None)
    fresh = c.summary.freshness
    out = []
    if fresh is None or fresh.newest is None:
        why = "the snapshot has no event times (no event-time column was summarised)"
        return [
            _skipped(name, setting, None, "newest_event_age_seconds", "", why, max_age),
            _skipped(name, setting, None, "stale_share", "", why),
        ]
    age = (c.as_of - dt.datetime.fromisoformat(fresh.newest)).total_seconds()
    if max_age is None:
        out.append(CheckResult(
            check=name, feature=None, statistic="newest_event_age_seconds", reference="",
            value=round(age, 3), threshold=None, status="info", action=setting.action,
            detail=f"the newest event is {_duration(age)} old; set checks.freshness.max_age "
            "(e.g. '36h') to check it",
        ))  # fmt: skip
    else:
        out.append(_result(
            name, setting, None, "newest_event_age_seconds", "", age, age > max_age,
            f"the newest event time ({fresh.newest}) is {_duration(age)} old at the run's "
            f"as-of time; allowed: {_duration(max_age)}", threshold=max_age,
        ))  # fmt: skip
    if max_feature_age is None or fresh.stale_before is None or not fresh.rows:
        out.append(_skipped(
            name, setting, None, "stale_share", "",
            "set checks.freshness.max_feature_age (e.g. '30d') to count customers whose latest "
            "record is older",
        ))  # fmt: skip
    else:
        share = fresh.stale_rows / fresh.rows
        out.append(_result(
            name, setting, None, "stale_share", "", share, _beyond(share, setting.threshold),
            f"{share:.1%} of the customers' latest records are older than "
            f"{_duration(max_feature_age)} (before {fresh.stale_before})",
        ))  # fmt: skip
    return out


def _duration(seconds: float) -> str:
    if abs(seconds) >= 2 * 86_400:
        return f"{seconds / 86_400:.1f} days"
    if abs(seconds) >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"


def _volume(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """Rows now against the previous run's: the drop, as a share of the previous rows."""
    if c.previous is None:
        return [_skipped(name, setting, None, "row_drop", PREVIOUS, c.no_previous)]
    if not c.previous.rows:
        return [_skipped(name, setting, None, "row_drop", PREVIOUS, "the previous run had no rows")]
    drop = (c.previous.rows - c.summary.rows) / c.previous.rows
    return [_result(
        name, setting, None, "row_drop", PREVIOUS, drop, _beyond(drop, setting.threshold),
        f"{c.summary.rows:,} rows scored, {c.previous.rows:,} in the previous run",
    )]  # fmt: skip


def _prediction_psi(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """PSI of the scores against the training validation scores and the previous run."""
    now = c.summary.predictions
    statistic = "psi"
    if now is None or not now.rows:
        why = "the summary has no predictions (BatchInference recorded none)"
        return [_skipped(name, setting, None, statistic, TRAINING, why),
                _skipped(name, setting, None, statistic, PREVIOUS, why)]  # fmt: skip
    out = []
    reference = c.profile.get("prediction_reference") or {}
    fractions, edges = reference.get("bin_fractions"), reference.get("bin_edges")
    if not fractions or not edges:
        out.append(
            _skipped(
                name,
                setting,
                None,
                statistic,
                TRAINING,
                NO_PROFILE_FIX.format(what="prediction_reference (validation scores)"),
            )
        )
    elif [float(e) for e in edges] != [float(e) for e in now.bin_edges]:
        out.append(_skipped(name, setting, None, statistic, TRAINING,
                            "the scores were binned on other edges than the profile's "
                            "prediction_reference: rerun the run"))  # fmt: skip
    else:
        value = psi(fractions, shares(now.bin_counts))
        out.append(_result(
            name, setting, None, statistic, TRAINING, value, _beyond(value, setting.threshold),
            f"PSI of the scores against the training validation scores is {value:.3f}",
        ))  # fmt: skip
    before = c.previous.predictions if c.previous is not None else None
    if before is None or not before.rows:
        out.append(
            _skipped(
                name,
                setting,
                None,
                statistic,
                PREVIOUS,
                c.no_previous
                if c.previous is None
                else "the previous run's summary has no predictions",
            )
        )
    elif [float(e) for e in before.bin_edges] != [float(e) for e in now.bin_edges]:
        out.append(_skipped(name, setting, None, statistic, PREVIOUS,
                            "the previous run binned its scores on other edges (another "
                            "model version's reference)"))  # fmt: skip
    else:
        value = psi(shares(before.bin_counts), shares(now.bin_counts))
        out.append(_result(
            name, setting, None, statistic, PREVIOUS, value, _beyond(value, setting.threshold),
            f"PSI of the scores against the previous run's is {value:.3f}",
        ))  # fmt: skip
    return out


def _positive_rate(c: _Context, name: str, setting: CheckSettings) -> list[CheckResult]:
    """Positive-prediction rate now minus training's and the previous run's (absolute)."""
    now = c.summary.predictions
    statistic = "positive_rate_change"
    if now is None or now.positive_rate is None:
        why = "the summary has no predictions (BatchInference recorded none)"
        return [_skipped(name, setting, None, statistic, TRAINING, why),
                _skipped(name, setting, None, statistic, PREVIOUS, why)]  # fmt: skip
    rate = now.positive_rate
    out = []
    trained = (c.profile.get("prediction_reference") or {}).get("positive_rate")
    if trained is None:
        out.append(
            _skipped(
                name,
                setting,
                None,
                statistic,
                TRAINING,
                NO_PROFILE_FIX.format(what="prediction_reference.positive_rate"),
            )
        )
    else:
        change = rate - float(trained)
        out.append(_result(
            name, setting, None, statistic, TRAINING, change,
            _beyond(abs(change), setting.threshold),
            f"{rate:.1%} predicted positive, {float(trained):.1%} on the validation data",
        ))  # fmt: skip
    before = c.previous.predictions if c.previous is not None else None
    if before is None or before.positive_rate is None:
        out.append(
            _skipped(
                name,
                setting,
                None,
                statistic,
                PREVIOUS,
                c.no_previous
                if c.previous is None
                else "the previous run's summary has no predictions",
            )
        )
    else:
        change = rate - before.positive_rate
        out.append(_result(
            name, setting, None, statistic, PREVIOUS, change,
            _beyond(abs(change), setting.threshold),
            f"{rate:.1%} predicted positive, {before.positive_rate:.1%} in the previous run",
        ))  # fmt: skip
    return out
