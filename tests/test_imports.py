"""The import graph of batchscore has no cycles (issue 13): records, hooks and small types live
below what uses them. ``scripts/import_cycles.py`` is the checker; it is shown to find the three
cycles of the tree before the restructuring."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    script = ROOT / "scripts" / "import_cycles.py"
    spec = importlib.util.spec_from_file_location("import_cycles", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_cycles"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_cycles() -> None:
    checker = _checker()
    graph = checker.module_graph(ROOT / "src" / "batchscore")
    assert len(graph) > 50 and "batchscore.pipeline" in graph
    assert checker.cycles(graph) == []


def test_the_checker_finds_a_cycle_through_functions_and_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "batchscore"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from batchscore.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n"
    )
    (package / "c.py").write_text("import batchscore.a\n")
    checker = _checker()
    assert checker.cycles(checker.module_graph(package)) == [["batchscore.a", "batchscore.sub.b"]]
