"""validate = run: every config the audit found passing `validate` and failing (or doing harm)
in `run` is refused by both, before any work, with the field named and the fix said."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest
import torch

from attncollapse.cli import main
from attncollapse.config import ConfigError, load_matrix, prepare

TINY = "name: t\ndefaults: {model: tiny, dataset: synthetic}\n"


def _write(tmp_path: Path, body: str, head: str = TINY) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(head + textwrap.dedent(body))
    return p


def _errors(tmp_path: Path, body: str, head: str = TINY, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_matrix(_write(tmp_path, body, head), overrides=list(overrides))
    return info.value.errors


@pytest.fixture
def no_gpu(monkeypatch):
    # The verdict on `device: cuda` depends on the machine; pin it to "no GPU" (CI's).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


CORPUS = [
    # (matrix YAML body, location the error must name, words it must say)
    ("runs:\n  E2: {device: banana}\n", "runs.E2.device", "expected auto, cpu, cuda"),
    ("runs:\n  E2: {device: cuda}\n", "runs.E2.device", "no CUDA GPU"),
    ("runs:\n  E2: {device: 'cuda:1'}\n", "runs.E2.device", "no CUDA GPU"),
    ("seeds: [1180591620717411303424]\nruns:\n  E2: {}\n", "seeds.0", "less than or equal to 4294967295"),
    ("seeds: [-1]\nruns:\n  E2: {}\n", "seeds.0", "greater than or equal to 0"),
    ("runs:\n  E2: {optim: {lr: .inf}}\n", "runs.E2.optim.lr", "finite number"),
    ("runs:\n  E2: {optim: {lr: .nan}}\n", "runs.E2.optim.lr", "finite number"),
    ("runs:\n  E2: {regularizer: {kind: apr, lam: .inf}}\n", "runs.E2.regularizer.lam", "finite number"),
    ("runs:\n  figures: {}\n", "runs.figures.id", "reserved"),
    ("runs:\n  results.csv: {}\n", "runs.results.csv.id", "reserved"),
    ("runs:\n  matrix.yaml: {}\n", "runs.matrix.yaml.id", "reserved"),
    ("runs:\n  E1: {}\n", "runs.E1.id", "E1 baseline"),
    ("runs:\n  " + "x" * 300 + ": {}\n", "runs." + "x" * 300 + ".id", "at most 100"),
    ('runs:\n  "E2\\u0007\\u001b[31m": {}\n', "runs.E2\x07\x1b[31m.id", "control characters"),
    ("runs:\n  E2: {data: {synthetic_classes: 1000, synthetic_train: 64}}\n", "runs.E2.data.synthetic_train",
     "every class needs at least one"),
    ("runs:\n  E2: {data: {synthetic_train: 1000000000}}\n", "runs.E2.data.synthetic_train", "GiB of memory"),
]


@pytest.mark.parametrize("body, where, words", CORPUS, ids=[f"case{i}" for i in range(len(CORPUS))])
def test_audit_config_refused_naming_the_field(tmp_path, no_gpu, body, where, words):
    errs = _errors(tmp_path, body)
    assert any(e.startswith(where + ":") and words in e for e in errs), errs


@pytest.mark.parametrize("name, words", [("../../x", "plain name"), ("/tmp/elsewhere", "plain name"),
                                         ("a" * 120, "at most 100"), (".hidden", "plain name")])
def test_matrix_name_is_a_plain_name(tmp_path, name, words):
    errs = _errors(tmp_path, "runs:\n  E2: {}\n", head=f"name: {name!r}\ndefaults: {{model: tiny}}\n")
    assert any(e.startswith("name:") and words in e for e in errs), errs
    errs = _errors(tmp_path, "runs:\n  E2: {}\n", overrides=[f"name={name}"])  # --set name=... too
    assert any(e.startswith("name:") and words in e for e in errs), errs


def test_cache_dir_symlink_loop_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    errs = _errors(tmp_path, f"runs:\n  E2: {{data: {{cache_dir: {str(a / 'cache')!r}}}}}\n")
    assert any(e.startswith("runs.E2.data.cache_dir:") and "symlink loop" in e for e in errs), errs


def test_alias_bomb_refused_quickly(tmp_path):
    # ~0.9 KB that expands to 9**9 values: must be refused in well under a second, not walked.
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("name: t\nruns:\n  E2: {}\n" + "\n".join(lines) + "\n")
    assert p.stat().st_size < 1024
    t = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_matrix(p)
    assert time.perf_counter() - t < 5
    assert "alias bomb" in str(info.value)


def test_alias_bomb_in_set_value_refused():
    from attncollapse.config import parse_assignments

    bomb = "[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(f"&{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]"
                                                 for i in range(5)) + "]"
    pairs, errors = parse_assignments([f"seeds={bomb}"])
    assert not pairs and "aliases expand" in errors[0]


def test_huge_config_file_refused(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("name: t\nruns:\n  E2: {}\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="too large for a config"):
        load_matrix(p)


def test_cpu_threads_above_cores_is_a_warning_naming_field_and_cost(tmp_path):
    n = (os.cpu_count() or 1) + 8
    prep = prepare(_write(tmp_path, f"runs:\n  E2: {{cpu_threads: {n}}}\n"))
    assert any("cpu_threads" in w and "slower" in w for w in prep.warnings), prep.warnings
    ok = prepare(_write(tmp_path, "runs:\n  E2: {cpu_threads: 1}\n"))
    assert not any("cpu_threads" in w for w in ok.warnings)


@pytest.mark.parametrize("body", [CORPUS[1][0], CORPUS[5][0], CORPUS[8][0], CORPUS[14][0]])
def test_validate_and_run_refuse_alike_before_any_work(tmp_path, no_gpu, capsys, body):
    cfg = _write(tmp_path, body)
    assert main(["validate", str(cfg)]) == 2
    said_validate = capsys.readouterr().err
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out)]) == 2
    said_run = capsys.readouterr().err
    assert "Traceback" not in said_validate + said_run
    first = lambda s: [ln for ln in s.splitlines() if ln.strip()][1:]  # the located problems  # noqa: E731
    assert first(said_validate) == first(said_run) and first(said_run)
    assert not out.exists()  # nothing made: run refused before any work


def test_valid_names_and_seeds_still_pass(tmp_path):
    m = load_matrix(_write(tmp_path, "seeds: [0, 4294967295]\nruns:\n  A1: {sweep: {optim.lr: [5e-5, 1e-4]}}\n"
                                     "  R1: {regularizer: {kind: apr}, sweep: {regularizer.lam: "
                                     "{label: apr, values: [0.1]}}}\n  E2+x=y@z_1.0: {}\n"))
    assert [r.id for r in m.expand()][:2] == ["A1-lr5e-05-s0", "A1-lr5e-05-s4294967295"]
