"""How a reader finds and reads things: the reports' linked table of contents, and the figure
defects a reviewer flagged (issue 30) — one style per run in fig. 12, no empty error caps,
bars from 0, absolute Δ where a Δ% is unstable, labels that do not overprint, the dashboard's
legend and pretrained level. Figures are drawn by their registry functions from fixture files;
the Figure is captured at `save` to assert on its Axes."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import BarContainer

import analysis_fixture
from analysis_fixture import build_matrix, rendered_matrix
from attncollapse.analysis import report, roles, table
from attncollapse.analysis.figures import ablations, base, curves, index, zeroshot
from attncollapse.analysis.instability import unstable
from attncollapse.analysis.report import render

SMALL = {"overlays": (), "wise": ()}


# ----------------------------------------------------------------------------- contents and anchors

class _Html(HTMLParser):
    """Ids of every element, the table of contents' links, and every heading's (level, id, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.toc: list[str] = []
        self.heads: list[tuple[int, str | None, str]] = []
        self._nav = self._head = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "nav":
            self._nav = True
        elif tag == "a" and self._nav and a.get("href", "").startswith("#"):
            self.toc.append(a["href"][1:])
        elif re.fullmatch(r"h[1-6]", tag) and not self._nav:
            self._head = [int(tag[1]), a.get("id"), ""]

    def handle_endtag(self, tag):
        if tag == "nav":
            self._nav = None
        elif self._head and tag == f"h{self._head[0]}":
            self.heads.append(tuple(self._head))
            self._head = None

    def handle_data(self, data):
        if self._head:
            self._head[2] += data


def test_contents_link_every_heading_to_an_anchor_that_exists():
    md, hp = report.write(rendered_matrix())
    md, html = md.read_text(), hp.read_text()
    p = _Html()
    p.feed(html)
    assert len(p.ids) == len(set(p.ids)), "duplicate ids"
    heads = [h for h in p.heads if h[0] >= 2]
    assert len(heads) >= 30 and all(h[1] for h in heads), "a heading without an anchor"
    # the contents list exactly the headings below the title, in order, and every link lands
    assert p.toc == [h[1] for h in heads]
    assert set(p.toc) <= set(p.ids)
    assert html.count('href="#contents"') == sum(h[0] == 2 for h in heads)  # each section links back
    # report.md: the same anchors, every heading (but the contents' own) linked by its text
    md_heads = re.findall(r"^#{2,6} (.+)$", md, flags=re.M)
    links = re.findall(r"^\s*- \[(.+)\]\(#([a-z0-9-]+)\)$", md, flags=re.M)
    assert [t for t, _ in links] == [h for h in md_heads if h != render.TOC_TITLE]
    assert [a for _, a in links] == p.toc
    for _, a in links:
        assert f'<a id="{a}"></a>\n\n#' in md
    # the contents come first, right after the title
    assert md.index("## Contents") < md.index("## Abstract") and html.index('<nav class="toc"') < html.index("<h2 id=")


def test_anchors_survive_renumbering_and_repeated_names():
    def blocks(n):
        return [("h", 1, "Title"), ("banner", "demo"), ("h", 2, f"{n}. Grand comparison"), ("h", 3, "entropy"),
                ("h", 2, f"{n + 1}. Δentropy per layer"), ("h", 3, "entropy"), ("h", 3, "entropy")]
    anchors = [[b[3] for b in render.contents(blocks(n)) if b[0] == "h" and len(b) > 3] for n in (3, 7)]
    assert anchors[0] == anchors[1] == ["grand-comparison", "grand-comparison-entropy", "delta-entropy-per-layer",
                                        "delta-entropy-per-layer-entropy", "delta-entropy-per-layer-entropy-2"]
    out = render.contents(blocks(1))
    assert [b[0] for b in out[:3]] == ["h", "banner", "toc"]  # the banner stays first
    assert render.contents(out) is out  # applied once, whichever renderer runs first


# ----------------------------------------------------------------------------- figures

@pytest.fixture
def drawn(monkeypatch):
    """Figures drawn by the registry functions, captured at `save` (no PNG written)."""
    figs = []

    def keep(fig, out):
        fig.draw_without_rendering()  # the layout a saved PNG would have
        figs.append(fig)
        return Path(out)

    for mod in (base, curves, ablations, zeroshot, index):
        monkeypatch.setattr(mod, "save", keep)
    return figs


def _ctx(d: Path) -> base.Ctx:
    m = table.load(d)
    return base.Ctx(m, roles.select(m), {})  # no stats.json needed by the assertions below


def test_fig12_gives_each_of_21_runs_its_own_style_and_legend_entry(tmp_path, drawn):
    d = build_matrix(tmp_path / "m", points=4, **SMALL)
    curves.fig12(_ctx(d), tmp_path / "f.png")
    fig = drawn[0]
    for ax in fig.axes[:5]:  # the sixth panel is the onset bars
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        assert len(lines) == 21
        assert len({(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 21
    assert len(fig.legends[0].get_texts()) == 21


def test_fig12_draws_entropy_velocity_and_onset_as_a_fraction_of_training(tmp_path, drawn):
    # the original's report: the 1% onset as a fraction of training, beside an entropy-velocity panel
    d = build_matrix(tmp_path / "m", ["E2", "E4", "A1-lr5e-05"], points=6, **SMALL)
    curves.fig12(_ctx(d), tmp_path / "f.png")
    vel, bars = drawn[0].axes[4], drawn[0].axes[5]
    for run_id in ("E2", "E4", "A1-lr5e-05"):
        ent = [p["mean"]["entropy"] for p in json.loads((d / run_id / "history.json").read_text())["points"]]
        line = next(ln for ln in vel.get_lines() if ln.get_label() == run_id)
        assert line.get_ydata() == pytest.approx(np.diff(ent))
        assert line.get_xdata() == pytest.approx(np.arange(1, len(ent)) / len(ent))
    onset = {r.run_id: table.collapse_onset(r.history()) for r in table.load(d).done}
    widths = [p.get_width() for p in bars.patches]
    assert widths, "the fixture's runs collapse, so the onset panel has bars"
    assert sorted(widths) == pytest.approx(sorted(o["fraction"] for o in onset.values() if o))
    assert all(0 < w <= 1 for w in widths)


def _small_base(monkeypatch, **metrics):
    """Fixture runs whose initial values of `metrics` are near zero (as on a random-init model)."""
    for mt, v in metrics.items():
        monkeypatch.setitem(analysis_fixture.BASELINE_12, mt, list(np.linspace(v, 1.5 * v, 12)))


def test_unstable_delta_pct_is_plotted_as_absolute_delta(tmp_path, drawn, monkeypatch):
    _small_base(monkeypatch, gini=0.02, head_diversity=0.001)
    d = build_matrix(tmp_path / "m", ["E2", "E4", "E5", "A1-lr5e-05"], points=4, **SMALL)
    runs = {r.run_id: r for r in table.load(d).done}
    assert unstable("head_diversity", runs["E2"].get("head_diversity_initial"))
    assert not unstable("entropy", runs["E2"].get("entropy_initial"))

    index.FIGURES["fig5_fullft_vs_lora"](_ctx(d), tmp_path / "f5.png")
    ent, _, gini, hdiv = drawn[0].axes[:4]
    assert "absolute" in gini.get_ylabel() and "absolute" in hdiv.get_ylabel() and "Δ%" in ent.get_ylabel()
    order = ["E2", "E4", "E5"]  # reference, then LoRA by rank
    final = {r: json.loads((d / r / "final.json").read_text()) for r in order}
    want = [final[r]["final_mean"]["head_diversity"] - final[r]["initial_mean"]["head_diversity"] for r in order]
    assert [p.get_height() for p in hdiv.patches] == pytest.approx(want)
    assert [p.get_height() for p in ent.patches] == pytest.approx([final[r]["delta_pct"]["entropy"] for r in order])

    curves.fig12(_ctx(d), tmp_path / "f12.png")
    gini12 = drawn[1].axes[3]
    assert "absolute" in gini12.get_ylabel() and "Δ%" in drawn[1].axes[2].get_ylabel()
    h = json.loads((d / "E2" / "history.json").read_text())["points"]
    line = next(ln for ln in gini12.get_lines() if ln.get_label() == "E2")
    assert line.get_ydata() == pytest.approx([p["mean"]["gini"] - h[0]["mean"]["gini"] for p in h])


def test_single_seed_bars_draw_no_error_bars_and_fig8_starts_at_zero(tmp_path, drawn):
    d = build_matrix(tmp_path / "m", ["E2", "E4", "R1-apr0.1", "R3-wd0.0", "A1-lr5e-05"], points=4, **SMALL)
    ctx = _ctx(d)
    ablations.fig8(ctx, tmp_path / "f8.png")
    index.fig16(ctx, tmp_path / "f16.png")
    index.FIGURES["fig5_fullft_vs_lora"](ctx, tmp_path / "f5.png")
    containers = [c for f in drawn for ax in f.axes for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) >= 8
    assert all(c.errorbar is None for c in containers)
    assert all(not ax.collections or not any(type(c).__name__ == "LineCollection" for c in ax.collections)
               for f in drawn for ax in f.axes)  # no error-bar segments anywhere
    acc = drawn[0].axes[1]
    assert acc.get_ylim()[0] <= 0 < max(p.get_height() for p in acc.patches) <= acc.get_ylim()[1]


def test_bars_of_several_seeds_keep_their_error_bars(tmp_path, drawn):
    d = build_matrix(tmp_path / "m", ["E2", "R1-apr0.1"], seeds=(1, 2), points=4, **SMALL)
    ablations.fig8(_ctx(d), tmp_path / "f8.png")
    ent = drawn[0].axes[0]
    sd = [np.std([r.delta() for r in rs], ddof=1) for rs in roles.by_config(table.load(d).done).values()]
    bars = next(c for c in ent.containers if isinstance(c, BarContainer))
    segs = bars.errorbar.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segs] == pytest.approx([2 * x for x in sd])


def test_fig7_labels_do_not_overprint(tmp_path, drawn):
    d = build_matrix(tmp_path / "m", points=4, **SMALL)
    zeroshot.fig7(_ctx(d), tmp_path / "f7.png")
    fig = drawn[0]
    ax = fig.axes[0]
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.texts if t.get_text() in {p.run_id for p in table.load(d).done}]
    assert len(boxes) >= 15  # most points keep their label ...
    for i, a in enumerate(boxes):  # ... and no two labels overlap
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)
    named = {t.get_text() for t in ax.texts}
    crowded = next((t.get_text() for t in ax.texts if t.get_text().startswith("unlabelled")), "")
    assert all(rid in named or rid in crowded for rid in (p.run_id for p in table.load(d).done))


def test_dashboard_legend_hides_no_bar_and_zero_shot_shows_the_pretrained_level(tmp_path, drawn):
    d = build_matrix(tmp_path / "m", ["E2", "E3", "E4", "A1-lr5e-05", "A1-lr1e-06"], points=4, **SMALL)
    index.fig16(_ctx(d), tmp_path / "f16.png")
    fig = drawn[0]
    assert fig.legends and fig.axes[0].get_legend() is None  # the family legend sits outside the panels
    zs = fig.axes[2]
    levels = [ln.get_ydata()[0] for ln in zs.get_lines() if ln.get_linestyle() == "--"]
    assert levels == pytest.approx([100 * analysis_fixture.BASELINE_ZS])
