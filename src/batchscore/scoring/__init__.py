"""How BatchInference turns features into probabilities.

- ``preprocess``: the model's preprocessing (imputers, encoders in a ColumnTransformer) as
  vectorised NumPy/Arrow operations, used only where equality with scikit-learn is proven.
- ``compiled``: tree ensembles compiled to native code with treelite/tl2cgen, cached in the
  workspace per model content and compiler version, checked against the library on a sample of
  every run (``scoring: auto|library|compiled`` in the config).

The library path — the model's own ``predict_proba`` — is ``LoadedModel.predict``.
"""
