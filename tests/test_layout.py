"""The package's shape (docs/API.md, the module docstrings): imports run downward between stages, with no
cycle (imports inside functions counted), no private name crossing modules, and an
analysis stage that loads no torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import attncollapse

ROOT = Path(attncollapse.__file__).parent
PKG = "attncollapse"

# stage → the stages it may import (besides itself, `_io` and `_device`).
ALLOWED = {
    "cli": None,  # anything
    "lab": {"train", "transfer", "measure", "models", "data", "config", "analysis"},
    "integrations": {"train", "transfer", "track", "measure", "models", "data"},
    "study": {"train", "config", "analysis"},
    "train": {"transfer", "track", "measure", "models", "data", "config"},
    "transfer": {"measure", "models", "data"},
    "measure": {"data"},
    "config": {"data", "models"},
    "data": set(),
    "models": set(),
    "analysis": set(),
    "track": {"analysis"},  # tracker sinks and map pictures, below train and integrations
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module of ours, names taken from it) for every import statement, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == PKG]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PKG:
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.append((sub, []) if sub in modules else (target, [a.name]))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _ in _imports(name, path, modules):
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in modules and dep != name and not name.startswith(dep + "."):
                    graph[name].add(dep)
    return graph


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycle_counting_imports_inside_functions():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_stages_import_only_downward():
    bad = []
    for module, deps in _graph().items():
        stage = _stage(module)
        allowed = ALLOWED.get(stage)
        if stage in ("", "_io", "_device") and module != PKG:
            allowed = set()
        if module == PKG or allowed is None:
            continue
        for dep in deps:
            target = _stage(dep)
            if target not in (stage, "_io", "_device") and target not in allowed:
                bad.append(f"{module} → {dep}")
    assert not bad, "imports against the stage order: " + ", ".join(sorted(bad))


# analysis/'s rooms → the rooms each may import (besides itself and the inputs at the top:
# table, roles, published). Figures and report both read statistics, never each other.
ANALYSIS_ROOMS = {"statistics": set(), "figures": {"statistics"}, "report": {"statistics"},
                  "forgetting": {"statistics", "figures", "report"}}  # the forgetting study's own room


def test_analysis_rooms_import_only_downward():
    top = f"{PKG}.analysis"
    bad = []
    for module, deps in _graph().items():
        parts = module.split(".")
        if not module.startswith(top + "."):
            continue
        room = parts[2] if len(parts) > 3 or (ROOT / "analysis" / parts[2]).is_dir() else None
        for dep in deps:
            d = dep.split(".")
            if not dep.startswith(top + ".") or len(d) < 3:
                continue
            target = d[2] if (ROOT / "analysis" / d[2]).is_dir() else None
            if target is None or target == room:
                continue  # the inputs at the top are readable from every room
            if room is None or target not in ANALYSIS_ROOMS[room]:
                bad.append(f"{module} → {dep}")
    assert not bad, "analysis rooms importing sideways or upward: " + ", ".join(sorted(bad))
    assert {p.name for p in (ROOT / "analysis").iterdir() if (p / "__init__.py").exists()} == set(ANALYSIS_ROOMS)


def test_no_private_name_crosses_modules():
    modules = _modules()
    bad = [f"{name}: from {target} import {n}" for name, path in modules.items()
           for target, names in _imports(name, path, modules) for n in names
           if n.startswith("_") and target != name]
    assert not bad, bad


def test_no_importlib_by_string_for_our_modules():
    hits = [p.name for p in ROOT.rglob("*.py") if "import_module(" in p.read_text() and f'"{PKG}.' in p.read_text()]
    assert not hits, hits


def test_analysis_imports_no_torch_and_the_top_package_stays_light():
    code = ("import sys, attncollapse, attncollapse.analysis; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from attncollapse import load_results, select; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api_names_resolve():
    for name in attncollapse.__all__:
        assert getattr(attncollapse, name) is not None, name


def test_readme_layout_lists_every_module_once():
    # The README's "Layout" table is the map a newcomer reads: each module in its stage's
    # row, named once, so a moved or added module shows up here until the table follows.
    readme = (ROOT.parent.parent / "README.md").read_text()
    rows = readme.split("## Layout", 1)[1].split("\n\n")[2].splitlines()
    listed: dict[str, list[str]] = {}
    for row in rows[2:]:
        cells = row.split("|")
        stage, body = cells[1].strip().strip("`").rstrip("/"), cells[2]
        if stage.endswith(".py"):
            continue  # cli.py, _io.py, _device.py: one-file stages, named in the first cell
        while re.search(r"\([^()]*\)", body):
            body = re.sub(r"\([^()]*\)", "", body)  # a module's job may name other things in `code`
        names = [w for w in body.split("`")[1::2] if w.isidentifier()]
        listed[stage] = [n for n in names if (ROOT / stage / f"{n}.py").exists()]
    # every package, sub-packages too (analysis/statistics/ has its own row)
    on_disk = {p.parent.relative_to(ROOT).as_posix(): [] for p in ROOT.glob("*/**/__init__.py")}
    for p in ROOT.glob("*/**/*.py"):
        if p.name != "__init__.py":
            on_disk[p.parent.relative_to(ROOT).as_posix()].append(p.stem)
    for stage, mods in on_disk.items():
        got = listed.get(stage, [])
        assert sorted(set(got)) == sorted(mods), f"{stage}/: README lists {sorted(set(got))}, disk has {sorted(mods)}"
        assert len(got) == len(set(got)), f"{stage}/: a module listed twice in README's Layout"
