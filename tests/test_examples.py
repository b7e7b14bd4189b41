"""Every code example a reader can copy runs: each ```python block of README.md and docs/*.md,
and every docstring example (doctest) of the package.

A block preceded by `<!-- example: needs-demo -->` reads a finished study at `runs/demo`: it
runs in a directory where this test has written one (the analysis fixture's files in the
demo's shape: tiny preset, synthetic/digits data). Any other marker fails the test, so no
block is skipped silently.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import json
import os
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest

from analysis_fixture import build_matrix

ROOT = Path(__file__).resolve().parent.parent
RUN_ELSEWHERE = {"API.md": "test_docs.py", "INTEGRATIONS.md": "test_integrations.py"}
"""Docs whose blocks run, in order, in their own test (API.md: one session, each block continuing
the one before; INTEGRATIONS.md: with its logged-metric checks); listed by name, so none is
skipped silently."""
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in RUN_ELSEWHERE)]
BLOCK = re.compile(r"(?:<!--\s*example:\s*(?P<mark>[\w-]+)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.M | re.S)
MARKS = {None, "needs-demo"}
DEMO_RUNS = ["E2", "E3", "E5", "A1-lr1e-06", "A1-lr5e-05", "A1-lr0.0001", "R1-apr0.1"]  # < 9: exact p stay cheap


def _blocks() -> list[tuple[str, str | None, str]]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for i, m in enumerate(BLOCK.finditer(text)):
            line = text[:m.start("code")].count("\n") + 1
            out.append((f"{path.name}:{line}", m.group("mark"), m.group("code")))
    return out


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A directory holding a finished demo-shaped study at runs/demo, with its stats.json."""
    from attncollapse.analysis import stats

    root = tmp_path_factory.mktemp("examples")
    d = build_matrix(root / "runs" / "demo", DEMO_RUNS, model="tiny", num_layers=3, overlays=(), wise=(),
                     dataset_names={"eurosat": "synthetic", "pets": "digits"})
    stats.analyze(d, n_boot=200)
    return root


def _run(code: str, where: Path) -> tuple[dict, str]:
    ns: dict = {"__name__": "__example__"}
    out = io.StringIO()
    old = os.getcwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<example>", "exec"), ns)
    finally:
        os.chdir(old)
    return ns, out.getvalue()


def test_docs_run_elsewhere_are_run_there():
    for doc, test in RUN_ELSEWHERE.items():
        assert (ROOT / "docs" / doc).is_file() and doc in (ROOT / "tests" / test).read_text()


def test_the_docs_have_examples():
    blocks = _blocks()
    assert any(name.startswith("README.md") for name, _, _ in blocks)
    assert {mark for _, mark, _ in blocks} <= MARKS, "unknown example marker"


@pytest.mark.parametrize("name, mark, code", _blocks(), ids=[b[0] for b in _blocks()])
def test_markdown_example_runs(name, mark, code, tmp_path, demo_dir):
    assert mark in MARKS, f"{name}: unknown marker {mark!r}; known: needs-demo"
    _run(code, demo_dir if mark == "needs-demo" else tmp_path)


def test_readme_api_example_gives_the_reports_lr_test(demo_dir):
    """The README's notebook example prints what the report and stats.json say about the LR
    sweep: Pearson r and p of log10 lr vs entropy Δ%."""
    code = next(c for name, mark, c in _blocks() if name.startswith("README.md") and "correlate(" in c)
    ns, printed = _run(code, demo_dir)
    st = json.loads((demo_dir / "runs" / "demo" / "stats.json").read_text())["tests"]["lr_sweep"]
    r, p = map(float, printed.split()[-2:])
    assert (r, p) == (pytest.approx(st["pearson_r"]), pytest.approx(st["pearson_p"]))
    assert np.isfinite(r) and len(st["runs"]) == 4  # A1 (3 lrs) + E2


def _modules() -> list[str]:
    import attncollapse

    return sorted(m.name for m in pkgutil.walk_packages(attncollapse.__path__, "attncollapse."))


def test_docstring_examples_run():
    """doctest over every module's docstrings: an example that fails or prints otherwise fails here."""
    failed = []
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for name in _modules():
        mod = importlib.import_module(name)
        for t in finder.find(mod, name):
            res = runner.run(t, out=lambda s: None)
            if res.failed:
                failed.append(t.name)
    assert not failed, f"docstring examples fail: {failed}"
    assert len(_modules()) > 40  # every module was searched
