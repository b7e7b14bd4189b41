"""report.md / report.html: every run listed, every figure embedded, the demo banner, findings
that follow the numbers, and a headless-browser check that the HTML renders offline."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from analysis_fixture import build_matrix, rendered_matrix
from attncollapse.analysis import report
from attncollapse.analysis.published import published_statistics
from attncollapse.analysis.report import render

SMALL = {"overlays": (), "wise": ()}
SECTIONS = ("Research questions", "Setup", "Metric definitions", "Experiment matrix", "Datasets",
            "Pretrained baseline", "Grand comparison", "Full fine-tuning vs LoRA", "LoRA rank", "Zero-shot transfer",
            "Learning-rate sweep", "Layer freezing", "LoRA target modules", "Regularization", "Weight decay",
            "Layer-wise patterns", "Statistics", "The reports' tests, recomputed", "Training dynamics", "Reproduction scorecard", "Findings",
            "Discussion", "Limitations", "Conclusions", "Runs", "Figure index")


@pytest.fixture(scope="module")
def written() -> tuple[Path, str, str]:
    d = rendered_matrix()
    md, hp = report.write(d)
    return d, md.read_text(), hp.read_text()


def test_report_lists_every_run(written):
    d, md, html = written
    with open(d / "results.csv", newline="") as fh:
        ids = [r["run_id"] for r in csv.DictReader(fh)]
    assert len(ids) >= 10
    for rid in ids:
        assert f"| {rid} |" in md and f"<td>{rid}</td>" in html


def test_report_embeds_every_rendered_figure(written):
    d, md, html = written
    index = json.loads((d / "figures" / "figures.json").read_text())
    drawn = [n for n, v in index.items() if "file" in v]
    assert drawn
    for name in drawn:
        assert f"](figures/{name}.png)" in md
        assert re.search(rf'<figure id="{name}"><img alt="[^"]*" src="data:image/png;base64,', html), name
    assert html.count("<img ") == len(drawn)
    # self-contained: nothing fetched from outside the file
    assert not re.search(r'(src|href)="(https?:|//|figures/)', html) and "<link" not in html


def test_report_follows_the_reports_structure(written):
    _, md, _ = written
    heads = re.findall(r"^## \d+\. (.+)$", md, flags=re.M)
    for want in SECTIONS:
        assert any(h.startswith(want) for h in heads), want
    assert "(adapters active)" in md and "with adapters off and the pretrained projection" in md  # both LoRA protocols
    assert "PIPELINE DEMONSTRATION" not in md  # a real model on real data


@pytest.mark.parametrize("kw, why", [({"model": "tiny"}, "tiny"), ({"model": "vit-b-32-random"}, "vit-b-32-random"),
                                     ({"dataset_names": {"eurosat": "synthetic"}}, "synthetic"),
                                     ({"dataset_names": {"eurosat": "digits"}}, "digits")])
def test_demo_banner_for_presets_and_offline_data(tmp_path, kw, why):
    d = build_matrix(tmp_path / "m", ["E2", "E5"], **SMALL, **kw)
    md, hp = report.write(d)
    md, html = md.read_text(), hp.read_text()
    top = md.split("## Abstract")[0]
    assert "PIPELINE DEMONSTRATION — NOT A SCIENTIFIC RESULT" in top and why in top
    assert '<div class="banner" role="alert">' in html.split("<h2>")[0]


def _section(md: str, title: str) -> str:
    """The text of the numbered section `## <n>. <title>` up to the next level-2 heading."""
    m = re.search(rf"^## \d+\. {re.escape(title)}.*?$(.*?)(?=^## |\Z)", md, flags=re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(1)


def _findings(d: Path) -> str:
    return _section(report.write(d)[0].read_text(), "Findings")


def test_findings_flip_with_the_numbers(tmp_path):
    runs = ["E2", "E4", "E5", "E6", "A1-lr1e-06", "A1-lr5e-05", "A1-lr0.0001"]
    base = _findings(build_matrix(tmp_path / "a", runs, **SMALL))
    assert "LoRA's entropy Δ is higher" in base and "entropy Δ falls as the learning rate rises" in base
    # LoRA now loses more entropy than full FT, and collapse shrinks with learning rate
    flip = {r: {"delta": (-3.0, -3.0, 5.0, 0.0)} for r in ("E4", "E5", "E6")}
    flip |= {"A1-lr1e-06": {"delta": (-5.0, -2, 2, 0)}, "A1-lr5e-05": {"delta": (1.0, 1, -1, 0)},
             "A1-lr0.0001": {"delta": (3.0, 2, -2, 0)}}
    flipped = _findings(build_matrix(tmp_path / "b", runs, overrides=flip, **SMALL))
    assert "LoRA's entropy Δ is lower" in flipped and "LoRA's entropy Δ is higher" not in flipped
    assert "entropy Δ rises as the learning rate rises" in flipped


def test_findings_say_not_significant(tmp_path):
    same = {r: {"delta": (-0.14, -1.7, -3.5, -0.7), "layer_noise": 2.0} for r in ("E2", "E5")}
    text = _findings(build_matrix(tmp_path / "m", ["E2", "E5"], overrides=same, **SMALL))
    assert "not significant at α = 0.05 after Holm correction" in text


def test_degenerate_numbers_are_reported_not_crashed_on(tmp_path):
    # identical Δ everywhere: no variance, so the tests give NaN (null in stats.json)
    flat = {r: {"delta": (0.5, 0.5, 0.5, 0.5), "layer_noise": 0.0, "zeroshot": 0.3}
            for r in ("E2", "E5", "A1-lr1e-06", "A1-lr5e-05")}
    d = build_matrix(tmp_path / "m", list(flat), overrides=flat, **SMALL)
    text = _findings(d)
    assert "LoRA's entropy Δ is the same" in text and "not testable (no variance)" in text
    assert "significant at" not in text.replace("not significant at", "")


def test_missing_sections_and_failed_runs_are_reported(tmp_path):
    d = build_matrix(tmp_path / "m", ["E2", "E5", "R3-wd0.1"], failed=["R3-wd0.1"], **SMALL)
    md = report.write(d)[0].read_text()
    assert "Not run: LR sweep needs ≥ 3 distinct learning rates" in md
    assert "No A3 runs" in md and "No R1, R2 runs" in md and "No A2 runs" in md
    assert "| R3-wd0.1 | R3 | 42 | failed |" in md
    assert "Figure fig6_lr_sweep not drawn" in md  # no figures rendered here: each says so


_PROBE = ("<script>window.addEventListener('load',function(){var im=Array.from(document.images);"
          "document.body.setAttribute('data-images',im.length);document.body.setAttribute('data-loaded',"
          "im.filter(function(i){return i.complete&&i.naturalWidth>0}).length);});</script>")


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not on PATH")
def test_html_renders_in_a_headless_browser(written, tmp_path):
    import matplotlib.image as mpimg

    d, _, html = written
    page = tmp_path / "report.html"  # a copy with a probe script; the report itself has no script
    page.write_text(html.replace("</body>", _PROBE + "</body>"))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", page.as_uri()).stdout
    m = re.search(r'<body data-images="(\d+)" data-loaded="(\d+)"', dom)
    assert m, dom[:500]
    assert int(m.group(1)) == html.count("<img ") > 0 and m.group(1) == m.group(2)
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", (d / "report.html").as_uri())
    px = mpimg.imread(shot)[..., :3]
    assert px.shape[:2] == (3000, 1200)
    not_white = (px < 0.95).any(-1).mean()
    assert px.std() > 0.05 and not_white > 0.05, (px.std(), not_white)  # not blank
    # the figure area (below the setup tables) holds colour, i.e. images were painted
    assert np.abs(px[..., 0] - px[..., 2]).max() > 0.3


# ----------------------------------------------------------------------------- the study's document

def _table_rows(section: str) -> list[list[str]]:
    """Every Markdown table body row of a section (no header), as cells."""
    lines = section.splitlines() + [""]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line, nxt in zip(lines, lines[1:])
            if line.startswith("| ") and not nxt.startswith("|---")]


def test_research_questions_carry_their_tests(written):
    d, md, _ = written
    st = json.loads((d / "stats.json").read_text())
    sec = _section(md, "Research questions")
    for rq in ("RQ1", "RQ2", "RQ3", "RQ4", "RQ5"):
        assert f"**{rq}." in sec
    assert "Does LoRA preserve attention structure better than full fine-tuning?" in sec
    rows = {r[1]: r for r in _table_rows(sec) if r[0] == "RQ2"}
    for e in st["tests"]["fullft_vs_lora"]["entries"]:  # raw and Holm p exactly as stats.json has them
        row = rows[f"entropy Δ%, full FT − LoRA ({e['label']})"]
        assert row[2:5] == ["Welch t", e["unit"], f"{e['n_a']}+{e['n_b']}"]
        assert row[6] == render.pval(e["welch_p"]) and row[7] == render.pval(e["welch_p_holm"])
        assert row[8].startswith("significant" if e["welch_p_holm"] < 0.05 else "not significant")
    # RQ3: one answer, on the reports' protocol (final Δ% vs frozen-projection zero-shot for full FT,
    # adapters-off for LoRA); the as-trained view is a labelled row
    e = st["tests"]["collapse_vs_zeroshot"]  # its numbers: test_stats.py test_rq3_is_on_the_reports_protocol
    assert e["primary"] and e["protocol"] == "reports"
    answer = sec.split("**RQ3.")[1].split("**RQ4.")[0]
    assert f"across {e['n']} runs" in answer and "pretrained projection" in answer and answer.count("r = ") == 1
    r3 = [r for r in _table_rows(sec) if r[0] == "RQ3"]
    assert [r[1].split(":")[0] for r in r3] == ["primary", "secondary"]
    assert render.num(st["tests"]["collapse_vs_zeroshot_as_trained"]["pearson_r"]) not in answer
    # the abstract answers every RQ in one line each
    abstract = md.split("## Abstract")[1].split("## 1.")[0]
    assert all(f"RQ{i} " in abstract for i in range(1, 6))


def test_conclusions_claim_only_what_holm_supports(written, tmp_path):
    d, md, _ = written
    st = json.loads((d / "stats.json").read_text())
    sig = [e for e in st["tests"]["fullft_vs_lora"]["entries"] if e["welch_p_holm"] < 0.05]
    concl = _section(md, "Conclusions")
    for e in st["tests"]["fullft_vs_lora"]["entries"]:
        assert (f"On {e['label']}, LoRA's entropy Δ% differs" in concl) == (e in sig)
    same = {r: {"delta": (-0.14, -1.7, -3.5, -0.7), "layer_noise": 2.0} for r in ("E2", "E5")}
    flat = report.write(build_matrix(tmp_path / "m", ["E2", "E5"], overrides=same, **SMALL))[0].read_text()
    assert "supports no claim" in _section(flat, "Conclusions")


def test_grand_tables_equal_the_results_file(written):
    d, md, _ = written
    with open(d / "results.csv", newline="") as fh:
        rows = {r["run_id"]: r for r in csv.DictReader(fh)}
    grand = _section(md, "Grand comparison")
    for mt in ("entropy", "head_diversity"):
        table = {r[0]: r for r in _table_rows(grand.split(f"### {mt}")[1].split("###")[0])}
        for rid, r in rows.items():
            if r["status"] != "done":
                continue
            ini, fin, dp = float(r[f"{mt}_initial"]), float(r[f"{mt}_final"]), float(r[f"{mt}_delta_pct"])
            assert table[rid][1:] == [f"{ini:.4f}", f"{fin:.4f}", f"{fin - ini:+.4f}", f"{dp:+.2f}%"], rid
    # the reports' baseline head diversity (0.075) is not near zero: nothing marked
    assert "%†" not in md


def test_matrix_and_datasets_tables_show_each_runs_settings(written):
    d, md, _ = written
    with open(d / "results.csv", newline="") as fh:
        rows = {r["run_id"]: r for r in csv.DictReader(fh)}
    table = {r[0]: r for r in _table_rows(_section(md, "Experiment matrix"))}
    for rid, r in rows.items():
        assert table[rid][3] == format(float(r["lr"]), "g") and table[rid][8] == format(float(r["weight_decay"]), "g")
        assert table[rid][4] == (r["lora_rank"] or "—" if r["method"] == "lora" else "—")
    assert "| Dataset | Role |" in _section(md, "Datasets")


def test_zero_shot_names_all_three_protocols(written):
    _, md, _ = written
    sec = _section(md, "Zero-shot transfer")
    assert "| Run | Configuration | Seeds | as trained | frozen pretrained projection | adapters off |" in sec
    for name in ("**as trained**", "**frozen pretrained projection**", "**adapters off**"):
        assert name in sec


SMALL_MATRIX = """\
name: small
baseline: [synthetic]
defaults:
  model: tiny
  dataset: synthetic
  optim: {lr: 1.0e-3, batch_size: 32, epochs: 1, precision: fp32}
  data: {synthetic_train: 64, synthetic_test: 48, eval_subset_size: 20}
  eval: {points_per_epoch: 2, batch_size: 10, aggregate: per_image, erf_q: 0.9}
  zeroshot: {datasets: [synthetic], max_images: 24}
runs:
  E2: {}
  E4: {method: lora, lora: {rank: 4, alpha: 8}, optim: {lr: 1.0e-2}}
"""


def test_real_runs_report(tmp_path, capsys):
    """The real runner on the tiny preset: every section, numbers equal to the run files,
    † exactly where the initial value is near zero, the scorecard labelled not comparable."""
    from attncollapse.analysis.report.runtables import unstable
    from attncollapse.cli import main

    (tmp_path / "m.yaml").write_text(SMALL_MATRIX)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "m.yaml"), "--out", str(out)]) == 0, capsys.readouterr().out
    md = (out / "report.md").read_text()
    heads = re.findall(r"^## \d+\. (.+)$", md, flags=re.M)
    for want in SECTIONS:
        assert any(h.startswith(want) for h in heads), want
    fin = {r: json.loads((out / r / "final.json").read_text()) for r in ("E2", "E4")}
    grand = _section(md, "Grand comparison")
    marks = 0
    for mt in ("entropy", "erf", "gini", "head_diversity"):
        table = {r[0]: r for r in _table_rows(grand.split(f"### {mt}")[1].split("###")[0])}
        for rid, f in fin.items():
            ini, end = f["initial_mean"][mt], f["final_mean"][mt]
            want = f"{f['delta_pct'][mt]:+.2f}%" + ("†" if abs(ini) < 0.05 * (np.log(49) if mt == "entropy" else 1) else "")
            assert table[rid][1:] == [f"{ini:.4f}", f"{end:.4f}", f"{end - ini:+.4f}", want], (mt, rid)
            marks += want.endswith("†")
            assert unstable(mt, ini) == want.endswith("†")
    assert marks > 0  # the random tiny preset's head diversity starts near 0.001: its Δ% is marked
    assert "†" not in grand.split("### entropy")[1].split("###")[0]  # entropy (~2.7 nats) never is
    sc = _section(md, "Reproduction scorecard")
    assert sc.lstrip().startswith("**Not comparable**") and "model_random_init" in sc
    assert "| E2 | best_acc_pct | value | 99.3 |" in sc and "| fullft_down_lora_up | entropy.delta_pct | ordering |" in sc
    ds = {(r[0], r[1]): r for r in _table_rows(_section(md, "Datasets"))}
    info = fin["E2"]["data"]
    assert ds["synthetic", "training"][3:7] == [str(info["classes"]), str(info["sizes"]["train"]), str(info["sizes"]["val"]),
                                    str(info["sizes"]["test"])]
    assert ds["synthetic", "zero-shot"][6] == str(fin["E2"]["zeroshot"]["synthetic"]["images"])
    mx = {r[0]: r for r in _table_rows(_section(md, "Experiment matrix"))}
    assert (mx["E2"][3], mx["E4"][3], mx["E4"][4]) == ("0.001", "0.01", "4")
    assert "Method and learning rate are confounded" in md
    zs = {r[0]: r for r in _table_rows(_section(md, "Zero-shot transfer"))}
    z = fin["E4"]["zeroshot"]["synthetic"]
    assert [c.split(" (")[0] for c in zs["E4"][3:6]] == [render.pct(z["acc"]), render.pct(z["acc_frozen_projection"]),
                                                        render.pct(z["acc_base_only"])]
    assert "PIPELINE DEMONSTRATION" in md.split("## Abstract")[0]
    # E1 records (and the report shows) every eval setting that moves its numbers: the
    # matrix's non-default ones, not the defaults.
    b = json.loads((out / "baseline" / "synthetic.json").read_text())
    assert (b["aggregate"], b["group_size"], b["erf_q"], b["diversity"]) == ("per_image", 10, 0.9, "batch_mean")
    assert ("**synthetic** (20 eval images, model `tiny`; aggregation per_image over batches of 10, head diversity "
            "batch_mean, ERF q 0.9):") in _section(md, "Pretrained baseline")
    setup = {r[0]: r[1] for r in _table_rows(_section(md, "Setup"))}
    assert "aggregation per_image" in setup["Metric eval"] and "ERF q 0.9" in setup["Metric eval"]
    # the runner's results.csv carries the reports' collapse onset, recomputed here from history.json
    with open(out / "results.csv", newline="") as fh:
        rows = {r["run_id"]: r for r in csv.DictReader(fh)}
    for rid in ("E2", "E4"):
        pts = json.loads((out / rid / "history.json").read_text())["points"]
        h0 = pts[0]["mean"]["entropy"]
        hit = next(((i, p["epoch"]) for i, p in enumerate(pts) if p["mean"]["entropy"] < 0.99 * h0), None)
        assert rows[rid]["collapse_onset_epoch"] == ("" if hit is None else repr(float(hit[1])))
        assert rows[rid]["collapse_onset_frac"] == ("" if hit is None else repr(hit[0] / len(pts)))


def test_several_seeds_give_one_row_per_configuration(tmp_path):
    d = build_matrix(tmp_path / "m", ["E2", "E5"], seeds=(42, 43), **SMALL)
    md = report.write(d)[0].read_text()
    with open(d / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = {r[0]: r for r in _table_rows(_section(md, "Grand comparison").split("### entropy")[1].split("###")[0])}
    assert set(table) == {"E2", "E5"}  # configs, not E2-s42 / E2-s43
    for cid in ("E2", "E5"):
        v = np.array([float(r["entropy_delta_pct"]) for r in rows if r["run_id"].startswith(cid + "-")])
        assert table[cid][4] == f"{v.mean():+.2f}% ± {v.std(ddof=1):.2f}%"
    assert {r[0]: r for r in _table_rows(_section(md, "Experiment matrix"))}["E2"][12] == "42, 43"


def test_reports_tests_table_shows_stats_json(written):
    """Every reports_* entry of stats.json is a row of "The reports' tests, recomputed", with its
    grouping, statistic and p exactly as stats.json has them and the published value beside it."""
    d, md, _ = written
    T = json.loads((d / "stats.json").read_text())["tests"]
    rows = {r[0]: r for r in _table_rows(_section(md, "The reports' tests, recomputed"))}
    for e in T["reports_regularizers"]["entries"]:
        row = rows[f"{e['label']}, paired t"]
        assert row[1] == e["grouping"] and row[2] == f"t({e['df']}) = {e['t']:.2f}" and row[3] == render.pval(e["paired_p"])
        orig = published_statistics(as_printed=True).get(f"regularizer_{e['run']}")  # the original report's own
        assert row[5] == (f"t = {orig['t']}, p = {orig['p']}, d = {orig['cohens_d']} (original report)" if orig else
                          "p = 0.023" if e["regularizer"] == "entropy_floor" and e["reg_lambda"] == 0.1 else "not printed")
    for e in T["reports_layer_position"]["entries"]:
        row = rows[f"{e['label']}, one-way ANOVA"]
        orig = "F = 0.29, p = 0.755" if e["role"] == "full-FT reference" else "F = 0.85, p = 0.460"
        assert row[3] == render.pval(e["anova_p"]) and row[5].startswith(orig) and "1–4, 5–8, 9–12" in row[1]
    e = T["reports_fullft_vs_lora"]
    row = rows["Full FT vs LoRA, Welch t"]
    assert row[2] == f"t = {e['welch_t']:.2f}" and row[4].startswith(f"d = {e['cohens_d_lora_minus_full']:+.2f}")
    assert row[5] == "t = -2.50, p = 0.019, d = 0.71"


def _stats_numbers(st: dict) -> set[str]:
    """Every number stats.json holds (and every count of its lists and mappings), as the report
    may print it: integers, 2–3 decimals, 2 significant digits, %g — unsigned."""
    out: set[str] = set()

    def walk(x):
        if isinstance(x, bool) or x is None:
            return
        if isinstance(x, (int, float)):
            v = abs(float(x))
            out.update({format(v, f) for f in (".3f", ".2f", ".2g", "g", ".0f")})
            if v == int(v):
                out.add(str(int(v)))
        elif isinstance(x, dict):
            out.add(str(len(x)))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            out.add(str(len(x)))
            for v in x:
                walk(v)
    walk(st)
    return out


def test_abstract_and_rq_answers_read_back_from_stats_json(written):
    """Every number of the abstract and of the research questions' answers is a number of
    stats.json (a count, a statistic, a p): none is computed by the prose on its own."""
    d, md, _ = written
    st = json.loads((d / "stats.json").read_text())
    known = _stats_numbers(st)
    abstract = md.split("## Abstract")[1].split("## 1.")[0]
    answers = re.findall(r"^\*\*RQ\d\. [^*]+\*\* (.+)$", _section(md, "Research questions"), flags=re.M)
    assert abstract.strip() and len(answers) == 5
    for text in [abstract, *answers]:
        text = re.sub(r"`[^`]*`|RQ\d|\[CLS\]", "", text)
        for tok in re.findall(r"\d+(?:\.\d+)?", text):
            assert tok in known, f"{tok!r} in {text[:120]!r}… is not a stats.json number"
