"""Models beyond scikit-learn, loaded from their native formats — never through pickle.

An MLflow model folder whose MLmodel has an ``xgboost``, ``lightgbm``, ``catboost`` or ``onnx``
flavour loads here, from the file that flavour saved:

============  =========================================  ====================================
flavour       file (MLmodel key ``data``)                 loaded with
============  =========================================  ====================================
xgboost       ``model.ubj`` / ``model.json``              ``XGBClassifier().load_model`` (the
                                                         flavour's ``model_class``) or
                                                         ``xgboost.Booster(model_file=…)``
lightgbm      ``model.lgb`` (a Booster's text model)      ``lightgbm.Booster(model_file=…)``
catboost      ``model.cb`` (``save_format: cbm``)         ``CatBoostClassifier().load_model``
onnx          ``model.onnx``                              ``onnxruntime.InferenceSession``
============  =========================================  ====================================

The class named in the MLmodel is only ever looked up in a fixed list here (never imported by
name), and no loader runs ``pickle``/``cloudpickle``. SageMaker's built-in XGBoost
``xgboost-model`` file loads through :func:`load_xgboost_file`.

Each loader returns a :class:`~batchscore.registry.base.LoadedModel` whose estimator is an
adapter with ``predict_proba(frame)`` and ``classes_``: it types the columns as the model
expects (pandas ``category`` for XGBoost's and LightGBM's categorical features, strings for
CatBoost's) before predicting. Models without batchscore's training profile get one made from
the model itself (its categories), marked ``profile_source``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from batchscore.errors import ModelLoadError
from batchscore.registry.base import LoadedModel, ModelVersion

if TYPE_CHECKING:
    from mlflow.models import Model

# flavour -> (module it needs, the batchscore extra that installs it).
FLAVOR_EXTRAS: dict[str, tuple[str, str]] = {
    "xgboost": ("xgboost", "xgboost"),
    "lightgbm": ("lightgbm", "lightgbm"),
    "catboost": ("catboost", "catboost"),
    "onnx": ("onnxruntime", "onnx"),
}
# The safe flavour's log_model call, for messages refusing a pickled model.
SAFE_LOG_CALLS = (
    "mlflow.xgboost.log_model(model, name=...), mlflow.lightgbm.log_model(model.booster_, "
    "name=...), mlflow.catboost.log_model(model, name=...), mlflow.onnx.log_model(onnx_model, "
    "name=...) or mlflow.sklearn.log_model(model, name=..., serialization_format='skops')"
)
_XGB_CLASSES = ("xgboost.sklearn.XGBClassifier", "xgboost.sklearn.XGBRFClassifier")
_CATBOOST_CLASSES = ("CatBoostClassifier", "CatBoost")
# XGBoost objectives whose output is a class probability.
_XGB_PROBABILITY_OBJECTIVES = ("binary:logistic", "multi:softprob", "reg:logistic")


def require_module(flavor: str, version: ModelVersion) -> None:
    """Raise ModelLoadError naming the ``pip install`` when the flavour's library is missing."""
    from batchscore.loaders import _installed

    module, extra = FLAVOR_EXTRAS[flavor]
    if not _installed(module):
        raise ModelLoadError(
            f"model {version.label} is an MLflow {flavor} model, which needs {module}, "
            f"not installed: pip install 'batchscore[{extra}]'."
        )


def load_flavor(
    flavor: str, folder: Path, meta: Model, version: ModelVersion, profile: dict[str, Any] | None
) -> LoadedModel:
    """Load the MLflow ``flavor`` model in ``folder`` natively.

    Args:
        flavor: one of :data:`FLAVOR_EXTRAS`.
        folder: the MLflow model folder (with its MLmodel).
        meta: its parsed MLmodel.
        version: the registry version, for messages.
        profile: batchscore's training profile beside the model, if any.

    Raises:
        ModelLoadError: the library is missing (naming the ``pip install``), the file is
            missing or corrupt, the class is not a classifier batchscore knows, or the model
            gives no probabilities.
    """
    require_module(flavor, version)
    conf = meta.flavors[flavor]
    path = folder / str(conf.get("data", ""))
    if not path.is_file():
        raise ModelLoadError(
            f"model {version.label}: its {flavor} file {conf.get('data')!r} is missing. "
            "Register the model again."
        )
    try:
        if flavor == "xgboost":
            adapter = _xgboost(path, str(conf.get("model_class", "xgboost.core.Booster")))
        elif flavor == "lightgbm":
            adapter = _lightgbm(path, conf, version)
        elif flavor == "catboost":
            adapter = _catboost(path, conf, version)
        else:
            adapter = OnnxClassifier(path)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"model {version.label}: loading its {flavor} file {path.name} failed "
            f"({type(exc).__name__}: {exc}). Register the model again."
        ) from exc
    adapter.check(version)
    signature = _signature_types(meta)
    input_types = signature or adapter.input_types(version)
    return LoadedModel(
        version=version,
        estimator=adapter,
        input_types=input_types,
        profile=profile or adapter.profile(),
        classes=list(adapter.classes_),
    )


def load_xgboost_file(
    path: Path, version: ModelVersion, feature_names: list[str] | None
) -> LoadedModel:
    """SageMaker's built-in XGBoost ``xgboost-model``: XGBoost JSON, UBJ or legacy binary.

    The format is told by content, not name: XGBoost's raw-buffer loader reads all three
    (JSON starts ``{"``, UBJ ``{`` then a type marker, the legacy binary anything else). A
    pickle (SageMaker XGBoost 0.90/1.0 containers) starts with byte 0x80 and is refused.

    Args:
        path: the ``xgboost-model`` file.
        version: the registry version, for messages.
        feature_names: the column order the model was trained on (SageMaker's built-in
            XGBoost trains on header-less CSV, so the booster has none); None to use the
            booster's own names.

    Raises:
        ModelLoadError: xgboost missing, a pickle, corrupt, or no column names anywhere.
    """
    require_module("xgboost", version)
    import xgboost

    content = path.read_bytes()
    if content[:1] == b"\x80":
        raise ModelLoadError(
            f"model {version.label}: {path.name} is a Python pickle (SageMaker XGBoost 1.0 "
            "and older), which runs arbitrary code when loaded. Save the booster with "
            "booster.save_model('xgboost-model.json') and package that instead."
        )
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(content))
    except Exception as exc:
        raise ModelLoadError(
            f"model {version.label}: {path.name} is not an XGBoost model in JSON, UBJ or "
            f"binary format ({type(exc).__name__}: {str(exc).splitlines()[0]})."
        ) from exc
    adapter = XGBoostClassifier(booster, None)
    adapter.check(version)
    if feature_names:
        if booster.num_features() != len(feature_names):
            raise ModelLoadError(
                f"model {version.label} takes {booster.num_features()} features, but "
                f"{len(feature_names)} feature names were given ({', '.join(feature_names)})."
            )
        adapter.feature_names = list(feature_names)
    elif not booster.feature_names:
        raise ModelLoadError(
            f"model {version.label}: its XGBoost model has no feature names (SageMaker's "
            "built-in XGBoost trains on CSV without a header), so batchscore cannot tell which "
            "column is which. Set the package's customer metadata feature_names to the "
            "training columns in order, comma-separated (aws sagemaker update-model-package "
            "--customer-metadata-properties feature_names=a,b,c)."
        )
    return LoadedModel(
        version=version,
        estimator=adapter,
        input_types=adapter.input_types(version),
        profile=adapter.profile(),
        classes=list(adapter.classes_),
    )


def _signature_types(meta: Model) -> dict[str, str] | None:
    schema = meta.get_input_schema()
    if schema is None or not schema.has_input_names():
        return None
    return {s.name: getattr(getattr(s, "type", None), "name", "any") for s in schema.inputs}


class _Adapter:
    """What LoadedModel needs of an estimator: ``predict_proba`` and ``classes_``."""

    classes_: list[Any]
    feature_names: list[str]
    library = ""

    def check(self, version: ModelVersion) -> None:
        if len(self.classes_) < 2:
            raise ModelLoadError(
                f"model {version.label} ({self.library}) is not a classifier that gives class "
                "probabilities: batchscore scores classifiers."
            )

    def input_types(self, version: ModelVersion) -> dict[str, str]:
        if not self.feature_names:
            raise ModelLoadError(
                f"model {version.label} declares no input columns (no MLflow signature and "
                f"no feature names in the {self.library} model): log it with a signature."
            )
        categorical = self.categories()
        return {n: "string" if n in categorical else "double" for n in self.feature_names}

    def categories(self) -> dict[str, list[Any]]:
        """The training categories of each categorical feature (empty lists where unknown)."""
        return {}

    def profile(self) -> dict[str, Any]:
        """A profile from the model itself, for a model batchscore did not train."""
        categories = self.categories()
        vocabularies = {c: [str(v) for v in vs] for c, vs in categories.items() if vs}
        unknown = [c for c, vs in categories.items() if not vs]
        source = (
            f"model ({self.library} categories)"
            if categories
            else (f"model ({self.library}, no categorical features)")
        )
        if unknown:  # CatBoost keeps hashes only: say which columns go unchecked
            source += f"; not known for {', '.join(unknown)}: unseen values there not counted"
        return {"category_vocabularies": vocabularies, "profile_source": source}


class XGBoostClassifier(_Adapter):
    """An XGBoost booster (or its sklearn wrapper), categorical columns as pandas category."""

    library = "xgboost"

    def __init__(self, booster: Any, wrapper: Any) -> None:
        self.booster = booster
        self.wrapper = wrapper
        self.feature_names = list(booster.feature_names or [])
        types = booster.feature_types or []
        self._categorical = [n for n, t in zip(self.feature_names, types, strict=False) if t == "c"]
        objective = _xgb_objective(booster)
        self.objective = objective
        if wrapper is not None and getattr(wrapper, "classes_", None) is not None:
            self.classes_ = list(wrapper.classes_)
        elif objective in _XGB_PROBABILITY_OBJECTIVES:
            n = int(_xgb_config(booster)["learner"]["learner_model_param"]["num_class"])
            self.classes_ = list(range(max(n, 2)))
        else:
            self.classes_ = []

    def check(self, version: ModelVersion) -> None:
        if self.objective not in _XGB_PROBABILITY_OBJECTIVES:
            raise ModelLoadError(
                f"model {version.label} has XGBoost objective {self.objective!r}, which gives no "
                "class probabilities: train it with binary:logistic or multi:softprob."
            )
        super().check(version)

    def categories(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {c: [] for c in self._categorical}
        # XGBoost before 3.1 keeps no categories in the model: the names alone stand then.
        with contextlib.suppress(Exception):
            for name, values in self.booster.get_categories(export_to_arrow=True).to_arrow():
                if name in found and values is not None:
                    found[name] = values.to_pylist()
        return found

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        import xgboost

        frame = frame.copy()
        if list(frame.columns) != self.feature_names and len(self.feature_names) == frame.shape[1]:
            frame.columns = self.feature_names  # named by the config, not the booster
        for column, known in self.categories().items():
            # Typed with the training categories: an unseen one becomes missing (as in
            # batchscore's own models) instead of XGBoost refusing the batch.
            frame[column] = pd.Categorical(frame[column], categories=known or None)
        if self.wrapper is not None:
            return np.asarray(self.wrapper.predict_proba(frame), dtype=np.float64)
        names = self.feature_names if self.booster.feature_names else None
        matrix = xgboost.DMatrix(
            frame.to_numpy() if names is None else frame,
            enable_categorical=bool(self._categorical),
        )
        proba = np.asarray(self.booster.predict(matrix), dtype=np.float64)
        return np.column_stack([1 - proba, proba]) if proba.ndim == 1 else proba


def _xgb_config(booster: Any) -> dict[str, Any]:
    import json

    return json.loads(booster.save_config())


def _xgb_objective(booster: Any) -> str:
    return str(_xgb_config(booster)["learner"]["objective"]["name"])


def _xgboost(path: Path, model_class: str) -> XGBoostClassifier:
    import xgboost

    if model_class in _XGB_CLASSES:
        wrapper = getattr(xgboost, model_class.rsplit(".", 1)[1])()
        wrapper.load_model(str(path))
        return XGBoostClassifier(wrapper.get_booster(), wrapper)
    if model_class != "xgboost.core.Booster":
        raise ModelLoadError(
            f"its xgboost model_class {model_class!r} is not a classifier batchscore loads "
            f"(known: {', '.join((*_XGB_CLASSES, 'xgboost.core.Booster'))})."
        )
    return XGBoostClassifier(xgboost.Booster(model_file=str(path)), None)


class LightGBMClassifier(_Adapter):
    """A LightGBM Booster from its text model; categorical columns as pandas category with
    the categories the model stored (``pandas_categorical``)."""

    library = "lightgbm"

    def __init__(self, booster: Any) -> None:
        self.booster = booster
        self.feature_names = list(booster.feature_name())
        self._categorical = _lgb_categorical(booster, self.feature_names)
        objective = str(booster.params.get("objective") or _lgb_objective(booster))
        self.objective = objective
        if objective.startswith("binary"):
            self.classes_ = [0, 1]
        elif objective.startswith(("multiclass", "softmax", "multiclassova")):
            self.classes_ = list(range(booster.num_model_per_iteration()))
        else:
            self.classes_ = []

    def categories(self) -> dict[str, list[Any]]:
        stored = self.booster.pandas_categorical or []
        return {
            c: list(stored[i]) if i < len(stored) else [] for i, c in enumerate(self._categorical)
        }

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        frame = frame.copy()
        for column, categories in self.categories().items():
            frame[column] = pd.Categorical(frame[column], categories=categories or None)
        proba = np.asarray(self.booster.predict(frame), dtype=np.float64)
        return np.column_stack([1 - proba, proba]) if proba.ndim == 1 else proba


def _lgb_categorical(booster: Any, names: list[str]) -> list[str]:
    """The categorical features, in the order of ``pandas_categorical``: from the model's
    ``[categorical_feature: …]`` parameter, else the features whose info lists values."""
    indices = booster.params.get("categorical_feature")
    if isinstance(indices, str):
        indices = [int(i) for i in indices.split(",") if i.strip().isdigit()]
    if not indices:
        infos = booster.dump_model().get("feature_infos", {})
        return [n for n in names if (infos.get(n) or {}).get("values")]
    return [names[int(i)] for i in sorted(indices)]


def _lgb_objective(booster: Any) -> str:
    for line in booster.model_to_string(num_iteration=0).splitlines()[:20]:
        if line.startswith("objective="):
            return line.split("=", 1)[1].split()[0]
    return ""


def _lightgbm(path: Path, conf: dict[str, Any], version: ModelVersion) -> LightGBMClassifier:
    import lightgbm

    model_class = str(conf.get("model_class", "lightgbm.basic.Booster"))
    if model_class != "lightgbm.basic.Booster":
        raise ModelLoadError(
            f"model {version.label} is a LightGBM scikit-learn model ({model_class}) saved "
            f"with {conf.get('serialization_format', 'cloudpickle')!r}, not LightGBM's text "
            "format. Log its booster instead: mlflow.lightgbm.log_model(model.booster_, "
            "name=...)."
        )
    return LightGBMClassifier(lightgbm.Booster(model_file=str(path)))


class CatBoostClassifier(_Adapter):
    """A CatBoost classifier from its ``.cbm``; categorical features passed as strings."""

    library = "catboost"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.feature_names = list(model.feature_names_ or [])
        indices = model.get_cat_feature_indices()
        self._categorical = [self.feature_names[i] for i in indices]
        classes = getattr(model, "classes_", None)
        self.classes_ = list(classes) if classes is not None else []

    def categories(self) -> dict[str, list[Any]]:
        return {c: [] for c in self._categorical}  # CatBoost keeps only hashes

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        frame = frame.copy()
        for column in self._categorical:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), "None")
            frame[column] = frame[column].astype(str)
        return np.asarray(self.model.predict_proba(frame), dtype=np.float64)


def _catboost(path: Path, conf: dict[str, Any], version: ModelVersion) -> CatBoostClassifier:
    import catboost

    model_type = str(conf.get("model_type", "CatBoostClassifier"))
    if model_type not in _CATBOOST_CLASSES:
        raise ModelLoadError(
            f"model {version.label} is a CatBoost {model_type}, not a classifier: "
            "batchscore scores classifiers."
        )
    model = catboost.CatBoostClassifier()
    model.load_model(str(path), format=str(conf.get("save_format", "cbm")))
    return CatBoostClassifier(model)


class OnnxClassifier(_Adapter):
    """An ONNX classifier run by onnxruntime on the CPU.

    Inputs: one per column (as skl2onnx makes with one ``initial_types`` entry per column), or
    one 2-D tensor taking the columns in the MLflow signature's order. Probabilities: the
    output named ``probabilities`` (or the last output), a tensor or ZipMap dicts.
    """

    library = "onnx"

    def __init__(self, path: Path) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "probabilities" if "probabilities" in outputs else outputs[-1]
        self.feature_names = [i.name for i in self.inputs] if len(self.inputs) > 1 else []
        self.classes_ = _onnx_classes(path)

    def input_types(self, version: ModelVersion) -> dict[str, str]:
        if len(self.inputs) == 1:
            raise ModelLoadError(
                f"model {version.label} (onnx) takes one tensor {self.inputs[0].name!r}, whose "
                "columns have no names: log it with a signature naming them "
                "(mlflow.onnx.log_model(..., signature=infer_signature(frame)))."
            )
        return {i.name: _ONNX_TYPES.get(i.type, "any") for i in self.inputs}

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        if len(self.inputs) == 1:
            spec = self.inputs[0]
            feeds = {spec.name: frame.to_numpy().astype(_onnx_numpy(spec.type))}
        else:
            feeds = {
                i.name: frame[i.name].to_numpy().astype(_onnx_numpy(i.type)).reshape(-1, 1)
                for i in self.inputs
            }
        (proba,) = self.session.run([self.output], feeds)
        if isinstance(proba, list):  # ZipMap: one {class: probability} per row
            return np.asarray([[row[c] for c in self.classes_] for row in proba], np.float64)
        return np.asarray(proba, dtype=np.float64)


_ONNX_TYPES = {
    "tensor(float)": "float",
    "tensor(double)": "double",
    "tensor(int64)": "long",
    "tensor(int32)": "integer",
    "tensor(string)": "string",
}


def _onnx_numpy(kind: str) -> Any:
    return {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(string)": object,
    }.get(kind, np.float32)


def _onnx_classes(path: Path) -> list[Any]:
    """Class labels from the graph's classifier or ZipMap node (``classlabels_*``)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for node in graph.node:
        for attribute in node.attribute:
            # classlabels_ints (LinearClassifier), classlabels_int64s (trees), …_strings
            if attribute.name.startswith("classlabels_") and attribute.ints:
                return list(attribute.ints)
            if attribute.name.startswith("classlabels_") and attribute.strings:
                return [s.decode() for s in attribute.strings]
    return []
