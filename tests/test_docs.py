"""docs/API.md covers the whole public API and its examples run; the README's lab commands run.

The examples of docs/API.md run in order in one namespace in an empty directory, exactly as
the page says; the README's `measure` / `compare` / `maps` lines run through the CLI entry
point in-process.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import attncollapse
from attncollapse.cli import main

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "API.md"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_every_public_name_has_a_section_in_api_md():
    text = API.read_text()
    missing = [n for n in attncollapse.__all__ if f"\n### {n}\n" not in text]
    assert not missing, f"docs/API.md has no section for {missing}"
    extra = [n for n in re.findall(r"^### (\w+)$", text, flags=re.M) if n not in attncollapse.__all__]
    assert not extra, f"docs/API.md documents names not in __all__: {extra}"


def test_api_md_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNCOLLAPSE_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    for i, block in enumerate(_blocks(API.read_text(), "python")):
        try:
            exec(compile(block, f"docs/API.md block {i + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/API.md python block {i + 1} failed: {type(e).__name__}: {e}\n{block}") from e


def test_readme_lab_commands_run(tmp_path, monkeypatch, capsys):
    section = (ROOT / "README.md").read_text().split("## Measure any model on any images", 1)[1]
    lines = [ln.strip() for ln in _blocks(section, "bash")[0].splitlines() if ln.strip()]
    assert [shlex.split(ln)[1] for ln in lines] == ["measure", "compare", "maps"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNCOLLAPSE_CACHE", str(tmp_path / "cache"))
    for ln in lines:
        argv = shlex.split(ln)
        assert argv[0].endswith("attncollapse")
        assert main(argv[1:]) == 0, ln
        out = Path(argv[argv.index("--out") + 1])
        want = {"measure": "measure.json", "compare": "compare.json", "maps": "maps.npz"}[argv[1]]
        assert (out / want).is_file(), ln
    assert "wrote" in capsys.readouterr().out
