"""Registries of lazy loaders: pick an implementation by its ``type``, import it on first use.

A kind of backend (feature stores, model registries, engines, sinks …) keeps a dict from its
``type`` names to :class:`Loader` entries, ``"module:attribute"`` strings with the optional
extra whose packages the implementation needs. :func:`load_implementation` looks a type up and
imports only that implementation, so choosing one never imports another's dependencies (nor
anything heavy before it is needed). As in pyiceberg's ``load_catalog``:

- an unknown type is a :class:`~batchscore.errors.ConfigError` naming the known ones;
- a missing optional dependency is a ``ConfigError`` naming the extra that brings it:
  ``pip install 'batchscore[aws]'``.

Light on purpose: it imports only :mod:`batchscore.errors`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchscore.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Loader:
    """Where an implementation lives, and what it needs that batchscore may not have.

    Attributes:
        target: ``"package.module:attribute"``, e.g.
            ``"batchscore.feature_store.iceberg:IcebergFeatureStore"``.
        extra: the optional-dependency extra that installs ``requires`` (``"aws"``), or None
            when the base install has everything.
        requires: top-level modules of that extra (``("boto3",)``); checked before the import,
            so a missing one is reported even where the implementation imports it lazily.
    """

    target: str
    extra: str | None = None
    requires: tuple[str, ...] = ()

    def load(self, what: str) -> Any:
        """Import the target and return its attribute.

        Args:
            what: what the implementation is, for the error (``"feature store 'sagemaker'"``).

        Returns:
            The attribute ``target`` names (usually a class).

        Raises:
            ConfigError: a module of ``requires`` is not installed; names ``pip install
                'batchscore[<extra>]'``.
        """
        for module in self.requires:
            if not _installed(module):
                raise self._missing(what, module)
        module_name, _, attribute = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing in self.requires:
                raise self._missing(what, missing) from exc
            raise  # a broken install of batchscore itself: not the user's extra to fix
        return getattr(module, attribute)

    def _missing(self, what: str, module: str) -> ConfigError:
        hint = f"pip install 'batchscore[{self.extra}]'" if self.extra else f"pip install {module}"
        return ConfigError(f"{what} needs {module}, which is not installed: {hint}.")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a stub without a spec
        return False


def load_implementation(
    loaders: Mapping[str, Loader | str], type_name: str, *, kind: str, key: str
) -> Any:
    """The implementation registered under ``type_name``, imported now.

    Args:
        loaders: type name -> :class:`Loader` (or a bare ``"module:attribute"`` string for an
            implementation that needs no extra).
        type_name: the configured type, e.g. ``settings.feature_store_type``.
        kind: what the loaders make, for errors (``"feature store"``).
        key: the config key that chooses the type, for errors (``"feature_store.type"``).

    Returns:
        What the loader names (usually a class with ``from_settings``).

    Raises:
        ConfigError: the type is unknown (naming the known ones), or its extra is not
            installed (naming the ``pip install`` that adds it).
    """
    loader = loaders.get(type_name)
    if loader is None:
        known = sorted(loaders)
        raise ConfigError(
            f"{key} {type_name!r} is not a known {kind} type.{did_you_mean(type_name, known)} "
            f"Known types: {', '.join(known)}."
        )
    if isinstance(loader, str):
        loader = Loader(loader)
    return loader.load(f"{kind} type {type_name!r}")
