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

SMALL = {"overlays": (), "wise": ()}


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
    for want in ("Setup", "Pretrained baseline", "Grand comparison", "Full fine-tuning vs LoRA", "LoRA rank",
                 "Zero-shot transfer", "Learning-rate sweep", "Layer freezing", "LoRA target modules",
                 "Regularization", "Weight decay", "Layer-wise patterns", "Statistics", "Findings", "Runs"):
        assert any(h.startswith(want) for h in heads), want
    assert "adapter-active" in md and "base-only" in md  # both zero-shot protocols side by side
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
