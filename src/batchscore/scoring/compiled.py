"""Tree ensembles compiled to native code (treelite + tl2cgen), cached, and checked every run.

How BatchInference scores is chosen once per run by :func:`plan_scoring` from
``scoring: auto|library|compiled`` and the model:

- ``library``: the model's own ``predict_proba`` (``LoadedModel.predict``); nothing compiles.
- ``auto``: the final estimator of the model (a scikit-learn ``HistGradientBoosting``,
  ``GradientBoosting``, ``RandomForest`` or ``ExtraTrees`` classifier, or a LightGBM booster
  without categorical features) is imported into treelite and compiled with tl2cgen into a
  shared library, cached under ``<workspace>/models/compiled/<key>/``. Anything else (another
  model, no C compiler, a compile error) scores with the library, said in one log line.
- ``compiled``: as ``auto``, but what would fall back raises :class:`ModelError` instead.

The cache key is the sha256 of the treelite model's own serialised bytes (the trees, their
thresholds and leaves, the output transform: it changes whenever the model does) with the
treelite, tl2cgen and C compiler versions and the code generation parameters
(:data:`CODEGEN_PARAMS`). A library is compiled in a private staging folder and
renamed into place, under an ``flock`` per key, so a concurrent run never loads half of one.

Parity: every batch, up to :data:`PARITY_ROWS` rows spread over it are also scored by the
library; a probability differing by more than :data:`PARITY_TOLERANCE`, or another predicted
class, fails the check, and the engine rescores the whole run with the library (``auto``) or
stops it (``compiled``). A batch the compiled path cannot take as the library would (its
preprocessing raises, missing values the estimator refuses, infinities after preprocessing, the
library raising on the sample) is scored by the library for that batch, which keeps
quarantine's bisection (:func:`~batchscore.monitoring.quarantine.predict_bisecting`) as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from batchscore.errors import ModelError

if TYPE_CHECKING:
    import pyarrow as pa

    from batchscore.registry import LoadedModel

log = logging.getLogger("batchscore")

PARITY_ROWS = 1_000  # rows of each batch also scored by the library
PARITY_TOLERANCE = 1e-12  # largest probability difference accepted between the two paths
COMPILED_DIR = "compiled"  # under the workspace's models/
LIBRARY = "model.so"

# How tl2cgen generates the C code, part of the cache key. ``quantize``: each feature value is
# first turned into its position among the model's thresholds on that feature (a binary
# search), then the trees compare small integers: the same branch as comparing the floats
# (equal values map to equal positions), 1.7x faster on the bench's 200-tree model.
CODEGEN_PARAMS: dict[str, int] = {"quantize": 1}
META = "meta.json"
# scikit-learn classifiers treelite imports (treelite.sklearn.import_model).
SKLEARN_TREES = (
    "HistGradientBoostingClassifier",
    "GradientBoostingClassifier",
    "RandomForestClassifier",
    "ExtraTreesClassifier",
)
# Of those, the ones built of scikit-learn DecisionTrees, which predict on float32 inputs.
FLOAT32_TREES = SKLEARN_TREES[1:]
XGBOOST_REASON = (
    "XGBoost adds its trees in float32 in its own order: compiled, its probabilities differ "
    "from its predict_proba by ~1e-7, above the 1e-12 parity bound"
)


class CompileUnavailable(Exception):
    """Why a model cannot be compiled here (the reason the library scores it)."""


@dataclass
class Parity:
    """The comparison of the compiled path with the library over the rows checked."""

    rows_checked: int = 0
    max_abs_diff: float = 0.0
    class_mismatches: int = 0
    deferred_rows: int = 0  # rows the library scored: batches the compiled path cannot take

    @property
    def failed(self) -> bool:
        return self.max_abs_diff > PARITY_TOLERANCE or self.class_mismatches > 0

    def merge(self, other: Parity | None) -> None:
        if other is None:
            return
        self.rows_checked += other.rows_checked
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)
        self.class_mismatches += other.class_mismatches
        self.deferred_rows += other.deferred_rows

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Parity | None:
        return None if values is None else cls(**values)


class CompiledModel:
    """A model's final estimator as a compiled library, with the preprocessing in front of it.

    Picklable (the Ray engine ships it to actors on other nodes): it carries the library's
    bytes, and a copy loads them from a private temporary folder on first use.
    """

    def __init__(
        self,
        *,
        kind: str,
        trees: int,
        library_path: Path,
        transformer: Any | None,
        input_types: dict[str, str],
        allow_nan: bool,
        binary: bool,
        float32_inputs: bool = False,
        nthread: int | None = None,
    ) -> None:
        self.kind = kind
        self.trees = trees
        self.library_path = library_path
        self.transformer = transformer
        self.input_types = dict(input_types)
        self.allow_nan = allow_nan
        self.binary = binary  # two classes: one output column is the positive class
        # scikit-learn's decision trees compare float32 inputs with float64 thresholds.
        self.float32_inputs = float32_inputs
        self.nthread = nthread
        self._library_bytes: bytes | None = None
        self._predictor: Any = None
        self._preprocessor: Any = None
        self._preprocessor_checked = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_library_bytes"] = self.library_bytes
        state["_predictor"] = None
        state["_preprocessor"] = None  # rebuilt where it runs
        state["_preprocessor_checked"] = False
        return state

    @property
    def library_bytes(self) -> bytes:
        if self._library_bytes is None:
            self._library_bytes = self.library_path.read_bytes()
        return self._library_bytes

    @property
    def preprocessing(self) -> str:
        """One line: how the preprocessing runs (vectorised, or scikit-learn's own)."""
        preprocessor = self._vectorised()
        if self.transformer is None:
            return "none"
        return preprocessor.describe() if preprocessor is not None else "scikit-learn"

    def _vectorised(self) -> Any:
        if not self._preprocessor_checked:
            self._preprocessor_checked = True
            if self.transformer is not None:
                self._preprocessor = vectorised_preprocessor(self.transformer, self.input_types)
        return self._preprocessor

    def _loaded(self) -> Any:
        if self._predictor is None:
            # Always from a private copy: dlopen caches libraries by path (a process that runs
            # many runs, as `schedule` does, would keep a replaced entry's old code), and a
            # mapped file changed in place kills the process with SIGBUS.
            folder = Path(tempfile.mkdtemp(prefix="batchscore-compiled-"))
            try:
                (folder / LIBRARY).write_bytes(self.library_bytes)
                self._predictor = load_predictor(folder / LIBRARY, self.nthread)
            finally:  # loaded (mapped) libraries outlive their file
                shutil.rmtree(folder, ignore_errors=True)
        return self._predictor

    def features(self, batch: pa.RecordBatch, model: LoadedModel) -> np.ndarray:
        """The estimator's input matrix for ``batch`` (float64, C order), as the library's
        pipeline would hand it to the estimator; ±inf counted into ``model.non_finite``."""
        preprocessor = self._vectorised()
        if preprocessor is not None:
            matrix = preprocessor.transform(batch, model.non_finite)
        elif self.transformer is not None:
            matrix = self.transformer.transform(model.frame(batch))
        else:
            matrix = model.frame(batch).to_numpy(dtype=np.float64)
        return np.ascontiguousarray(np.asarray(matrix, dtype=np.float64))

    def predict_proba(self, batch: pa.RecordBatch, model: LoadedModel) -> np.ndarray | None:
        """Class probabilities (n, classes) for ``batch``, or None when this batch is not one
        the compiled path scores as the library would (the library scores it instead; the
        ±inf counts are as before the call)."""
        import tl2cgen

        counted = dict(model.non_finite)
        try:
            matrix = self.features(batch, model)
        except Exception:  # the library's own error (or quarantine) decides
            _restore(model.non_finite, counted)
            return None
        if self.float32_inputs:
            with np.errstate(over="ignore"):  # too large for float32: inf, the library refuses
                matrix = matrix.astype(np.float32).astype(np.float64)
        if np.isinf(matrix).any() or (not self.allow_nan and np.isnan(matrix).any()):
            _restore(model.non_finite, counted)  # the estimator refuses these: the library says so
            return None
        raw = self._loaded().predict(tl2cgen.DMatrix(matrix, dtype="float64"))
        out = np.asarray(raw, dtype=np.float64).reshape(matrix.shape[0], -1)
        if self.binary and out.shape[1] == 1:
            # As scikit-learn and LightGBM: the negative class is 1 - p.
            return np.column_stack([1.0 - out[:, 0], out[:, 0]])
        return out


def _restore(into: dict[str, int], counts: dict[str, int]) -> None:
    into.clear()
    into.update(counts)


def vectorised_preprocessor(transformer: Any, input_types: dict[str, str]) -> Any:
    """``batchscore.scoring.preprocess.vectorise`` when it is there (None: not vectorised)."""
    try:
        from batchscore.scoring.preprocess import vectorise
    except ImportError:
        return None
    try:
        return vectorise(transformer, input_types)
    except Exception as exc:  # a preprocessing it cannot take is scikit-learn's to run
        log.debug("preprocessing not vectorised: %s", exc)
        return None


def parity_sample(batch: pa.RecordBatch) -> np.ndarray:
    """Indices of the rows checked in ``batch``: up to PARITY_ROWS, spread over it."""
    n = batch.num_rows
    if n <= PARITY_ROWS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, PARITY_ROWS).astype(np.int64))


def check_parity(
    model: LoadedModel,
    batch: pa.RecordBatch,
    prediction: np.ndarray,
    probability: np.ndarray,
) -> Parity | None:
    """Score a sample of ``batch`` with the library and compare; None when the library raises
    on the sample (then the library scores the whole batch, as it would have)."""
    rows = parity_sample(batch)
    counted = dict(model.non_finite)
    try:
        expected_class, expected = model.predict(batch.take(rows))
    except Exception:
        return None
    finally:
        _restore(model.non_finite, counted)  # counted once, by the path that scores
    diff = np.abs(expected - probability[rows])
    return Parity(
        rows_checked=len(rows),
        max_abs_diff=float(diff.max()) if len(rows) else 0.0,
        class_mismatches=int((expected_class != prediction[rows]).sum()),
    )


# Choosing the path ----------------------------------------------------------------------------


@dataclass
class ScoringPlan:
    """How a run scores: the path, why, and the compiled model when there is one."""

    mode: str  # the config's scoring: auto | library | compiled
    path: str  # compiled | library
    reason: str
    compiled: CompiledModel | None = None
    compile_seconds: float | None = None
    cache: str | None = None  # hit | miss (compiled) or None
    model_label: str = ""
    parity: Parity = field(default_factory=Parity)
    fallback: str | None = None  # why the run was rescored with the library
    compiled_library: str | None = None
    preprocessing: str | None = None

    def describe(self) -> str:
        """The one log line saying which path scores and why."""
        return f"scoring: {self.path} — {self.reason}"

    def parity_failed(self, parity: Parity) -> None:
        """The run's parity check failed: raise (``scoring: compiled``) or switch this plan to
        the library, with a warning; the caller rescores every row.

        Raises:
            ModelError: ``scoring: compiled``; names the model, the difference and the fix.
        """
        found = (
            f"the compiled trees' probabilities differ from the model's own predict_proba by up "
            f"to {parity.max_abs_diff:.3g} (bound {PARITY_TOLERANCE:g}), the predicted class on "
            f"{parity.class_mismatches} of {parity.rows_checked} rows checked"
        )
        if self.mode == "compiled":
            raise ModelError(
                f"model {self.model_label}: {found}. Set 'scoring: library' in the config to "
                "score with the model's own predict_proba."
            )
        self.fallback = found
        self.parity = parity
        self.path, self.reason = "library", f"parity check failed: {found}; every row rescored"
        self.compiled = None
        log.warning("BatchInference: %s; rescoring every row with the library", found)

    def record(self) -> dict[str, Any]:
        """The run record's ``scoring`` facts."""
        return {
            "path": self.path,
            "reason": self.reason,
            "compiled_library": self.compiled_library,
            "compile_seconds": self.compile_seconds,
            "cache": self.cache,
            "preprocessing": self.preprocessing,
            "parity": self.parity.to_dict(),
            "fallback": self.fallback,
        }


def plan_scoring(
    mode: str, model: LoadedModel, workspace: Path, *, announce: bool = True
) -> ScoringPlan:
    """Choose how the run scores ``model`` and log it in one line (unless ``announce`` is
    False: the caller logs ``plan.describe()`` when the step starts); compiles (or loads from
    the cache) when the compiled path applies.

    Args:
        mode: the config's ``scoring``.
        model: the loaded model.
        workspace: the workspace folder (the cache is its ``models/compiled/``).

    Raises:
        ModelError: ``scoring: compiled`` and the model cannot be compiled here.
    """
    label = model.version.label
    if mode == "library":
        plan = ScoringPlan(mode, "library", "scoring: library in the config", model_label=label)
        if announce:
            log.info(plan.describe())
        return plan
    try:
        plan = _compile_plan(mode, model, workspace / "models" / COMPILED_DIR)
    except CompileUnavailable as exc:
        if mode == "compiled":
            raise ModelError(
                f"model {label} cannot be scored compiled: {exc}. Set 'scoring: auto' (falls "
                "back to the model's own predict_proba) or 'scoring: library' in the config."
            ) from exc
        plan = ScoringPlan(mode, "library", str(exc), model_label=label)
    if announce:
        log.info(plan.describe())
    return plan


def _compile_plan(mode: str, model: LoadedModel, cache_root: Path) -> ScoringPlan:
    transformer, estimator, tl_model, allow_nan = import_trees(model)
    toolchain = find_toolchain()
    parts = {
        "treelite_model_sha256": hashlib.sha256(tl_model.serialize_bytes()).hexdigest(),
        **toolchain_versions(toolchain),
        "codegen": json.dumps(CODEGEN_PARAMS, sort_keys=True),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    path, seconds, cache = CompileCache(cache_root).library(key, parts, tl_model, toolchain)
    compiled = CompiledModel(
        kind=type(estimator).__name__,
        trees=int(tl_model.num_tree),
        library_path=path,
        transformer=transformer,
        input_types=model.input_types,
        allow_nan=allow_nan,
        binary=len(model.classes) == 2,
        float32_inputs=type(estimator).__name__ in FLOAT32_TREES,
        nthread=os.cpu_count(),
    )
    try:
        compiled._loaded()
    except Exception as exc:
        raise CompileUnavailable(f"the compiled library {path} does not load ({exc})") from exc
    done = f"compiled in {seconds:.1f} s" if cache == "miss" else "cache hit"
    reason = (
        f"{compiled.kind}, {compiled.trees} trees ({done}: {path.parent}); "
        f"preprocessing: {compiled.preprocessing}; parity checked on up to {PARITY_ROWS} rows "
        "per batch"
    )
    return ScoringPlan(
        mode, "compiled", reason, compiled=compiled, compile_seconds=seconds, cache=cache,
        model_label=model.version.label, compiled_library=str(path),
        preprocessing=compiled.preprocessing,
    )  # fmt: skip


def import_trees(model: LoadedModel) -> tuple[Any, Any, Any, bool]:
    """The model split as (preprocessing, final estimator, treelite model, whether the
    estimator takes missing values).

    Raises:
        CompileUnavailable: not a tree ensemble treelite takes (says which and why).
    """
    from batchscore.registry.flavors import LightGBMClassifier, XGBoostClassifier

    transformer, estimator = split_pipeline(model.estimator)
    name = type(estimator).__name__
    if isinstance(estimator, XGBoostClassifier) or name in ("XGBClassifier", "XGBRFClassifier"):
        raise CompileUnavailable(XGBOOST_REASON)
    booster = None
    if isinstance(estimator, LightGBMClassifier):
        if estimator.categories():
            raise CompileUnavailable(
                "LightGBM model with categorical features (compiled only without them)"
            )
        if any(kind not in _NUMERIC for kind in model.input_types.values()):
            raise CompileUnavailable("LightGBM model with non-numeric inputs")
        booster = estimator.booster
    elif name == "LGBMClassifier":
        booster = estimator.booster_
    elif name not in SKLEARN_TREES:
        raise CompileUnavailable(
            f"{name} is not a tree ensemble batchscore compiles (compiled: "
            f"{', '.join(SKLEARN_TREES)}, LightGBM)"
        )
    import treelite

    try:
        with native_output() as captured:
            if booster is not None:
                tl_model = treelite.frontend.from_lightgbm(booster)
            else:
                tl_model = treelite.sklearn.import_model(estimator)
    except Exception as exc:
        raise CompileUnavailable(
            f"treelite cannot import {name} ({type(exc).__name__}: {exc}{_tail(captured)})"
        ) from exc
    if booster is not None:
        allow_nan = True
    else:
        from sklearn.utils import get_tags

        allow_nan = bool(get_tags(estimator).input_tags.allow_nan)
    return transformer, estimator, tl_model, allow_nan


_NUMERIC = ("double", "float", "long", "integer", "int")


def split_pipeline(estimator: Any) -> tuple[Any | None, Any]:
    """(everything before the final estimator or None, the final estimator)."""
    steps = getattr(estimator, "steps", None)
    if not steps:
        return None, estimator
    final = steps[-1][1]
    if len(steps) == 1:
        return None, final
    if len(steps) == 2:
        return steps[0][1], final
    return estimator[:-1], final


# Compiling and the cache ----------------------------------------------------------------------


def find_toolchain() -> str:
    """The C compiler tl2cgen uses: gcc, else clang, else cc.

    Raises:
        CompileUnavailable: none is on PATH.
    """
    for name in ("gcc", "clang", "cc"):
        if shutil.which(name):
            return name
    raise CompileUnavailable("no C compiler (gcc, clang or cc) on PATH to compile the trees")


def toolchain_versions(toolchain: str) -> dict[str, str]:
    """What the compiled library depends on besides the model: library and compiler versions.

    Raises:
        CompileUnavailable: the compiler does not run.
    """
    import tl2cgen
    import treelite

    try:
        done = subprocess.run(
            [toolchain, "--version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileUnavailable(f"the C compiler {toolchain!r} does not run ({exc})") from exc
    return {
        "treelite": treelite.__version__,
        "tl2cgen": tl2cgen.__version__,
        "compiler": f"{toolchain}: {(done.stdout.splitlines() or [''])[0].strip()}",
    }


@contextlib.contextmanager
def native_output() -> Iterator[list[str]]:
    """Silence treelite's and tl2cgen's notices (printed from Python, or written to stderr by
    native code); the text is appended to the yielded list, for error messages."""
    captured: list[str] = []
    printed = io.StringIO()  # treelite's log callback prints from Python
    with tempfile.TemporaryFile() as sink, contextlib.redirect_stdout(printed):
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(printed.getvalue() + sink.read().decode(errors="replace"))


def _tail(captured: list[str]) -> str:
    lines = [line for text in captured for line in text.splitlines() if line.strip()]
    return f"; {lines[-1].strip()}" if lines else ""


def load_predictor(path: Path, nthread: int | None) -> Any:
    import tl2cgen

    with native_output():
        return tl2cgen.Predictor(str(path), nthread=nthread)


class CompileCache:
    """Compiled libraries under ``root/<key>/`` (``model.so`` and ``meta.json`` with its
    sha256), placed by one rename so no reader sees half of one."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def library(
        self, key: str, parts: dict[str, str], tl_model: Any, toolchain: str
    ) -> tuple[Path, float, str]:
        """The library for ``key``: (path, compile seconds, "hit" | "miss").

        Raises:
            CompileUnavailable: compiling failed (the compiler's last line in the reason).
        """
        entry = self.root / key
        meta = self._verified(entry)
        if meta is not None:
            return entry / LIBRARY, float(meta.get("compile_seconds", 0.0)), "hit"
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            meta = self._verified(entry)  # another run may have compiled it meanwhile
            if meta is not None:
                return entry / LIBRARY, float(meta.get("compile_seconds", 0.0)), "hit"
            seconds = self._compile_into(entry, parts, tl_model, toolchain)
        return entry / LIBRARY, seconds, "miss"

    def _compile_into(
        self, entry: Path, parts: dict[str, str], tl_model: Any, toolchain: str
    ) -> float:
        import tl2cgen

        staging = Path(tempfile.mkdtemp(prefix=f".staging-{entry.name[:8]}-", dir=self.root))
        try:
            started = time.perf_counter()
            try:
                with native_output() as captured:
                    tl2cgen.export_lib(
                        tl_model, toolchain=toolchain, libpath=str(staging / LIBRARY),
                        params={**CODEGEN_PARAMS,
                                "parallel_comp": max(1, min(8, tl_model.num_tree))},
                        nthread=os.cpu_count(),
                    )  # fmt: skip
            except Exception as exc:
                raise CompileUnavailable(
                    f"compiling with {toolchain} failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}{_tail(captured)})"
                ) from exc
            seconds = round(time.perf_counter() - started, 3)
            library = staging / LIBRARY
            meta = {
                "key": parts,
                "library_sha256": _sha256(library),
                "compile_seconds": seconds,
            }
            (staging / META).write_text(json.dumps(meta, indent=2))
            for stray in staging.iterdir():  # keep only the library and its meta
                if stray.name not in (LIBRARY, META):
                    shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
            if entry.exists():  # a bad entry: aside first (a reader keeps its open file)
                aside = self.root / f".discarded-{entry.name}-{uuid.uuid4().hex[:8]}"
                os.rename(entry, aside)
                shutil.rmtree(aside, ignore_errors=True)
            os.rename(staging, entry)
            return seconds
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _verified(self, entry: Path) -> dict[str, Any] | None:
        """The entry's meta when its library matches the sha256 recorded beside it."""
        try:
            meta = json.loads((entry / META).read_text())
            if _sha256(entry / LIBRARY) == meta["library_sha256"]:
                return meta
        except (OSError, ValueError, KeyError, TypeError):
            return None
        log.warning("compiled library at %s does not match its meta.json; compiling again", entry)
        return None

    def _lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """One compiler per key across processes (the model cache's lock)."""
        from batchscore.registry.cache import key_lock

        return key_lock(self.root, key)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
