"""The vectorised preprocessing equals scikit-learn's, bit for bit, on the same batches.

Each case fits a transformer on a frame built by ``LoadedModel.frame`` (as a model trained by
``batchscore train`` sees its data), then compares ``vectorise(...).transform(batch)`` with
``transformer.transform(model.frame(batch))`` on batches with nulls, ±inf, unseen categories,
all-null columns and every Arrow string layout.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    KBinsDiscretizer,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

from batchscore.registry.base import LoadedModel
from batchscore.scoring.preprocess import vectorise
from batchscore.training import build_pipeline

NUMERIC = ["n0", "n1", "n2"]
TEXT = ["c0", "c1"]
TYPES = {"n0": "double", "n1": "double", "n2": "long", "c0": "string", "c1": "string"}
STRING_LAYOUTS = ["string", "large_string", "dictionary"]


def features(
    n: int,
    seed: int,
    *,
    vocabulary: str = "abcd",
    layout: str = "string",
    missing: float = 0.15,
) -> pa.Table:
    """Doubles with NaN, nulls and ±inf; a long column with nulls; text columns with nulls."""
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for name in ("n0", "n1"):
        x = rng.normal(size=n).round(2)
        x[rng.random(n) < missing / 2] = np.nan
        x[rng.random(n) < 0.03] = np.inf
        x[rng.random(n) < 0.03] = -np.inf
        nulls = rng.random(n) < missing / 2
        columns[name] = pa.array(x, mask=nulls)
    longs = rng.integers(-3, 4, size=n)
    columns["n2"] = pa.array(longs, pa.int64(), mask=rng.random(n) < missing)
    for name in TEXT:
        values = rng.choice(list(vocabulary), n).astype(object)
        values[rng.random(n) < missing] = None
        columns[name] = text_array(values, layout)
    return pa.table(columns)


def text_array(values, layout: str) -> pa.Array:
    if layout == "dictionary":
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, pa.large_string() if layout == "large_string" else pa.string())


def fitted(transformer, table: pa.Table, types: dict[str, str] = TYPES):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformer.fit(LoadedModel(None, None, types).frame(table))  # type: ignore[arg-type]


def assert_equal_to_sklearn(transformer, batch, types: dict[str, str] = TYPES) -> np.ndarray:
    """Vectorised and scikit-learn's output: same bits, dtype, shape, ±inf counts."""
    pre = vectorise(transformer, types)
    assert pre is not None, "expected the transformer to be vectorised"
    counted: dict[str, int] = {}
    ours = pre.transform(batch, counted)
    model = LoadedModel(None, None, types)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(transformer.transform(model.frame(batch)))
    assert ours.dtype == np.float64 and expected.dtype == np.float64
    assert ours.flags.c_contiguous
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected, equal_nan=True)
    assert counted == model.non_finite
    return ours


def training_pipeline(table: pa.Table):
    return fitted(build_pipeline(NUMERIC, TEXT)[:-1], table)


def test_a_batch_longer_than_a_fill_block_is_equal_in_every_row():
    """The output matrix is filled FILL_ROWS rows at a time: a batch of several blocks and a
    partial last one, with and without missing values to impute (a column without any is
    passed on as Arrow's own memory, read-only)."""
    from batchscore.scoring.preprocess import FILL_ROWS

    pre = training_pipeline(features(300, 0))
    n = 2 * FILL_ROWS + 123
    assert_equal_to_sklearn(pre, features(n, 2, vocabulary="abcdef"))
    complete = features(n, 3, missing=0.0).set_column(
        0,
        "n0",
        pa.array(np.random.default_rng(4).normal(size=n)),  # no NaN, null or inf
    )
    assert_equal_to_sklearn(pre, complete)


@pytest.mark.parametrize("layout", STRING_LAYOUTS)
def test_training_pipeline_equal_on_every_string_layout(layout):
    pre = training_pipeline(features(300, 0))
    # Unseen categories (e, f), nulls and ±inf in the batch.
    out = assert_equal_to_sklearn(pre, features(500, 1, vocabulary="abcdef", layout=layout))
    assert np.isnan(out[:, 3:]).any()  # unseen and missing categories became NaN
    assert vectorise(pre, TYPES).describe() == "vectorised: 3 median-imputed, 2 ordinal-encoded"


def test_table_of_several_chunks_and_empty_batch():
    pre = training_pipeline(features(300, 0))
    table = pa.concat_tables([features(100, 2), features(50, 3, vocabulary="abz")])
    assert table.column("c0").num_chunks == 2
    assert_equal_to_sklearn(pre, table)
    empty = vectorise(pre, TYPES).transform(features(10, 4).slice(0, 0), {})
    assert empty.shape == (0, 5) and empty.dtype == np.float64  # scikit-learn refuses 0 rows


def test_all_null_columns_at_fit_and_at_transform():
    train = features(300, 0)
    train = train.set_column(1, "n1", pa.nulls(300, pa.float64()))
    train = train.set_column(4, "c1", pa.nulls(300, pa.null()))  # categories_: [None]
    for keep in (False, True):
        ct = ColumnTransformer(
            [
                ("num", SimpleImputer(strategy="mean", keep_empty_features=keep), NUMERIC),
                ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), TEXT),
            ]
        )
        pre = fitted(ct, train)
        assert_equal_to_sklearn(pre, features(200, 5))
        batch = features(200, 6)
        batch = batch.set_column(3, "c0", pa.nulls(200, pa.string()))
        batch = batch.set_column(4, "c1", pa.nulls(200, pa.null()))
        batch = batch.set_column(0, "n0", pa.nulls(200, pa.float64()))
        assert_equal_to_sklearn(pre, batch)


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
def test_numeric_imputers_and_scaler(strategy):
    imputer = SimpleImputer(strategy=strategy, fill_value=-7.5)
    for scaler in (
        StandardScaler(),
        StandardScaler(with_mean=False),
        StandardScaler(with_std=False),
    ):
        ct = ColumnTransformer([("num", make_pipeline(imputer, scaler), NUMERIC)])
        assert_equal_to_sklearn(fitted(ct, features(300, 0)), features(400, 7))


def test_whole_frame_pipeline_positional_and_mask_columns_and_remainder():
    numeric = {k: v for k, v in TYPES.items() if k in NUMERIC}
    train, batch = features(300, 0).select(NUMERIC), features(300, 8).select(NUMERIC)
    whole = make_pipeline(SimpleImputer(), StandardScaler(), FunctionTransformer())
    assert_equal_to_sklearn(fitted(whole, train, numeric), batch, numeric)
    by_position = ColumnTransformer([("a", SimpleImputer(), [2, 0])], remainder="passthrough")
    out = assert_equal_to_sklearn(fitted(by_position, train, numeric), batch, numeric)
    assert np.isnan(out[:, 2]).any()  # the remainder (n1) passes through, NaN and all
    by_mask = ColumnTransformer(
        [("a", "passthrough", [True, False, True]), ("b", "drop", [False, True, False])],
        remainder=StandardScaler(),
    )
    assert_equal_to_sklearn(fitted(by_mask, train, numeric), batch, numeric)


@pytest.mark.parametrize("layout", STRING_LAYOUTS)
def test_ordinal_encoder_variants(layout):
    train = features(300, 0, missing=0.0)  # no missing category: missing is unknown
    batch = features(400, 9, vocabulary="abcdefg", layout=layout)
    for encoder in (
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
        OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=99, encoded_missing_value=-2
        ),
        OrdinalEncoder(
            categories=[["d", "b", "a", "c"], ["c", "a", "b", "d", "e"]],
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
        ),
    ):
        for data in (train, features(300, 1)):  # fitted without and with missing values
            assert_equal_to_sklearn(fitted(ColumnTransformer([("c", encoder, TEXT)]), data), batch)
    # Numeric categories, on the long column (cast to float64 as the frame casts it).
    numbers = ColumnTransformer([("n", OrdinalEncoder(handle_unknown="use_encoded_value",
                                                      unknown_value=-1), ["n2"])])  # fmt: skip
    assert_equal_to_sklearn(fitted(numbers, features(300, 0)), features(300, 10))
    wider = features(300, 11)
    wider = wider.set_column(2, "n2", pa.array(np.arange(300) - 150, pa.int64()))
    assert_equal_to_sklearn(fitted(numbers, features(300, 0)), wider)


@pytest.mark.parametrize("layout", STRING_LAYOUTS)
def test_one_hot_dense_with_drop(layout):
    batch = features(400, 12, vocabulary="abcdef", layout=layout)
    binary = features(300, 0, vocabulary="ab")
    for drop in (None, "first", "if_binary", ["c", "b"]):
        for unknown in ("ignore", "infrequent_if_exist"):
            encoder = OneHotEncoder(sparse_output=False, handle_unknown=unknown, drop=drop)
            ct = ColumnTransformer([("c", encoder, TEXT)])
            assert_equal_to_sklearn(fitted(ct, features(300, 0)), batch)
            if drop != ["c", "b"]:
                assert_equal_to_sklearn(fitted(ct, binary), batch)
    known = features(300, 13, vocabulary="abcd", layout=layout)
    strict = ColumnTransformer([("c", OneHotEncoder(sparse_output=False), TEXT)])
    assert_equal_to_sklearn(fitted(strict, features(300, 0)), known)


@pytest.mark.parametrize("layout", STRING_LAYOUTS)
@pytest.mark.parametrize("strategy", ["most_frequent", "constant"])
def test_text_imputer_before_encoder(layout, strategy):
    imputer = SimpleImputer(strategy=strategy, fill_value="zz")
    for encoder in (
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
        OneHotEncoder(sparse_output=False, handle_unknown="ignore"),
    ):
        ct = ColumnTransformer([("c", make_pipeline(imputer, encoder), TEXT)])
        pre = fitted(ct, features(300, 0))
        assert_equal_to_sklearn(pre, features(300, 14, vocabulary="abcde", layout=layout))


@pytest.mark.parametrize("layout", STRING_LAYOUTS)
def test_unknown_category_raises_as_sklearn_does(layout):
    for encoder in (OrdinalEncoder(), OneHotEncoder(sparse_output=False)):
        pre = fitted(ColumnTransformer([("c", encoder, TEXT)]), features(300, 0))
        known = features(200, 15, layout=layout)  # its nulls: seen at fit, so known
        assert_equal_to_sklearn(pre, known)
        unseen = features(200, 15, vocabulary="abcx", layout=layout)
        with pytest.raises(ValueError, match="Found unknown categories") as ours:
            vectorise(pre, TYPES).transform(unseen, {})
        assert "'x'" in str(ours.value)
        with pytest.raises(ValueError, match="Found unknown categories"):
            pre.transform(LoadedModel(None, None, TYPES).frame(unseen))  # type: ignore[arg-type]
    # Missing values never seen at fit are unknown too.
    pre = fitted(ColumnTransformer([("c", OrdinalEncoder(), TEXT)]), features(300, 0, missing=0))
    with pytest.raises(ValueError, match="Found unknown categories"):
        vectorise(pre, TYPES).transform(features(50, 16, layout=layout), {})


def test_text_column_of_another_arrow_type_is_left_to_sklearn():
    pre = training_pipeline(features(300, 0))
    batch = features(200, 17)
    batch = batch.set_column(3, "c0", pa.array(np.arange(200) % 3, pa.int64()))
    with pytest.raises(TypeError) as expected:  # numbers against string categories
        pre.transform(LoadedModel(None, None, TYPES).frame(batch))  # type: ignore[arg-type]
    with pytest.raises(TypeError) as ours:
        vectorise(pre, TYPES).transform(batch, {})
    assert str(ours.value) == str(expected.value)
    # A text column arriving as float: its ±inf are counted as the frame counts them.
    batch = batch.set_column(3, "c0", pa.array([np.inf, 1.0] * 100))
    counted: dict[str, int] = {}
    with pytest.raises(TypeError):
        vectorise(pre, TYPES).transform(batch, counted)
    assert counted["c0"] == 100


class Doubler(TransformerMixin, BaseEstimator):
    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return np.asarray(x, dtype=float) * 2


@pytest.mark.parametrize(
    "part",
    [
        KBinsDiscretizer(n_bins=3, encode="ordinal"),
        Doubler(),
        FunctionTransformer(np.log1p),
        SimpleImputer(add_indicator=True),
        MinMaxScaler(),
    ],
    ids=["kbins", "custom", "function", "indicator", "min-max"],
)
def test_unsupported_numeric_parts_give_none(part):
    ct = ColumnTransformer([("n", make_pipeline(SimpleImputer(), part) if not isinstance(
        part, SimpleImputer) else part, ["n0", "n2"])])  # fmt: skip
    assert vectorise(fitted(ct, features(300, 0)), TYPES) is None


@pytest.mark.parametrize(
    "part",
    [
        OneHotEncoder(),  # sparse output
        OneHotEncoder(sparse_output=False, min_frequency=5),
        OrdinalEncoder(max_categories=2),
        OrdinalEncoder(dtype=np.float32),
        "passthrough",  # text in the output: an object matrix
    ],
    ids=["sparse", "min-frequency", "max-categories", "float32", "text-passthrough"],
)
def test_unsupported_text_parts_give_none(part):
    ct = ColumnTransformer([("n", SimpleImputer(), NUMERIC), ("c", part, TEXT)])
    assert vectorise(fitted(ct, features(300, 0)), TYPES) is None


def test_undeclared_or_missing_columns_give_none():
    pre = training_pipeline(features(300, 0))
    assert vectorise(pre, {**TYPES, "c0": "any"}) is None
    assert vectorise(pre, {k: v for k, v in TYPES.items() if k != "c1"}) is None
    assert vectorise(pre.set_output(transform="pandas"), TYPES) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
    layout=st.sampled_from(STRING_LAYOUTS),
    vocabulary=st.sampled_from(["a", "ab", "abcd", "abcdefgh", "b\u00e9\u00f1", "xyz"]),
    missing=st.sampled_from([0.0, 0.2, 0.9, 1.0]),
)
def test_training_pipeline_property(n, seed, layout, vocabulary, missing):
    pre = training_pipeline(features(120, 0, vocabulary="ab\u00e9cd", missing=0.1))
    batch = features(n, seed, vocabulary=vocabulary, layout=layout, missing=missing)
    assert_equal_to_sklearn(pre, batch)


def test_pipeline_with_final_estimator_parts_only():
    """``model.estimator[:-1]`` — a Pipeline around the ColumnTransformer — is what is passed."""
    pipeline = build_pipeline(NUMERIC, TEXT)
    pipeline.steps[-1] = ("classifier", "passthrough")
    whole = fitted(Pipeline(pipeline.steps[:-1]), features(300, 0))
    assert_equal_to_sklearn(whole, features(200, 18, vocabulary="abz"))


def test_model_input_in_another_order_with_an_unused_column():
    """Columns are found by the names the transformer was fitted on; an unused numeric column
    is still cast and its ±inf counted, as ``LoadedModel.frame`` does."""
    pre = training_pipeline(features(300, 0))
    types = {"extra": "double", **dict(reversed(TYPES.items())), "other": "any"}
    batch = features(200, 19).append_column("extra", pa.array([np.inf, -np.inf, 0.5, 1.0] * 50))
    batch = batch.append_column("other", pa.array([np.inf, 2.0] * 100, pa.float32()))
    assert_equal_to_sklearn(pre, batch, types)
    counted: dict[str, int] = {}
    vectorise(pre, types).transform(batch, counted)
    assert counted["extra"] == counted["other"] == 100 and counted["n0"] > 0
