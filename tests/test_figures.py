"""Every registered figure renders from the fixture, and is skipped (not drawn) without its runs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from analysis_fixture import build_matrix, rendered_matrix
from attncollapse.analysis import figures, stats


def _png_info(path: Path) -> tuple[int, int, float | None]:
    """(width, height, dpi) from the PNG's IHDR and pHYs chunks."""
    b = path.read_bytes()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    w = h = dpi = None
    i = 8
    while i < len(b):
        n, kind = struct.unpack(">I", b[i:i + 4])[0], b[i + 4:i + 8]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", b[i + 8:i + 16])
        elif kind == b"pHYs":
            dpi = struct.unpack(">I", b[i + 8:i + 12])[0] * 0.0254
        elif kind in (b"IDAT", b"IEND"):
            break
        i += 12 + n
    return w, h, dpi


@pytest.fixture(scope="module")
def matrix() -> Path:
    return rendered_matrix()


# The fixture holds one model family; the cross-family figure is drawn in tests/test_families_report.py.
@pytest.mark.parametrize("name", [n for n in figures.FIGURES if n != "extra_model_families"])
def test_every_figure_renders_from_the_fixture(matrix, name):
    index = json.loads((matrix / "figures" / "figures.json").read_text())
    assert "file" in index[name], f"{name} not drawn: {index[name]}"
    path = matrix / index[name]["file"]
    w, h, dpi = _png_info(path)
    assert w >= 400 and h >= 250 and path.stat().st_size > 10_000, (w, h, path.stat().st_size)
    assert dpi is not None and dpi >= 149.9  # print resolution


def test_registry_covers_the_reports_figure_index():
    wanted = ["fig2_baseline_structure", "fig3_triple_curve", "fig4_layer_entropy_heatmap", "fig5_fullft_vs_lora",
              "fig5b_fullft_vs_lora_pets", "fig6_lr_sweep", "fig7_collapse_vs_zeroshot", "fig8_regularization",
              "fig9_head_diversity", "extra_erf95_evolution", "extra_frozen_layers", "extra_lora_qkvo",
              "fig10_per_layer_delta_heatmap", "fig11_statistical_summary", "fig12_training_dynamics",
              "fig13_metric_correlations", "fig14_convergence", "fig15_zeroshot_extended", "fig16_dashboard",
              "fig17_gini_evolution"]
    assert set(wanted) <= set(figures.FIGURES)
    assert set(figures.FIGURES) == set(figures.CAPTIONS)


def test_empty_matrix_skips_every_figure(tmp_path):
    d = build_matrix(tmp_path / "m", [], baseline=False)
    res = figures.render_all(d)
    assert set(res) == set(figures.FIGURES)
    for name, r in res.items():
        assert isinstance(r, str) and not r.startswith("failed"), (name, r)
        assert not (d / "figures" / f"{name}.png").exists()
    index = json.loads((d / "figures" / "figures.json").read_text())
    assert all("skipped" in v for v in index.values())


MISSING_WITH_E2_ONLY = ["fig5_fullft_vs_lora", "fig5b_fullft_vs_lora_pets", "fig6_lr_sweep", "fig8_regularization",
                        "fig11_statistical_summary", "fig13_metric_correlations", "extra_frozen_layers",
                        "extra_lora_qkvo", "extra_wise_interpolation", "extra_attention_overlays"]


def test_partial_matrix_skips_the_figures_without_runs(tmp_path):
    # Only E2 (+ baseline): no LoRA, no sweep, no regularizers, no overlays, no WiSE curve.
    d = build_matrix(tmp_path / "m", ["E2"], overlays=(), wise=())
    ctx = figures.Ctx.load(d)
    for name in MISSING_WITH_E2_ONLY:
        out = d / "figures" / f"{name}.png"
        r = figures.FIGURES[name](ctx, out)
        assert isinstance(r, str) and r, name
        assert not out.exists(), name
    # the figures that need only E2 do draw (two, to keep the test fast)
    for name in ("fig3_triple_curve", "fig2_baseline_structure"):
        assert isinstance(figures.FIGURES[name](ctx, d / "figures" / f"{name}.png"), Path)


def test_stale_figure_is_removed_when_its_runs_disappear(tmp_path):
    d = build_matrix(tmp_path / "m", [], baseline=False)
    stale = d / "figures" / "fig6_lr_sweep.png"
    stale.parent.mkdir()
    stale.write_bytes(b"\x89PNG old")
    assert isinstance(figures.render_all(d)["fig6_lr_sweep"], str)
    assert not stale.exists()


def test_baseline_structure_standalone(tmp_path):
    b = json.loads((build_matrix(tmp_path / "m", []) / "baseline" / "eurosat.json").read_text())
    out = figures.baseline_structure(b, tmp_path / "fig2.png")
    assert isinstance(out, Path) and _png_info(out)[0] > 400
    assert isinstance(figures.baseline_structure({}, tmp_path / "none.png"), str)
    assert not (tmp_path / "none.png").exists()


def test_demo_datasets_and_three_layers(tmp_path):
    # The demo: tiny preset (3 layers) on synthetic/digits data, same figures by config fields.
    d = build_matrix(tmp_path / "m", ["E2", "E3", "E5", "E7"], model="tiny", num_layers=3,
                     dataset_names={"eurosat": "synthetic", "pets": "digits"}, wise=())
    ctx = figures.Ctx.load(d)
    assert set(ctx.roles["datasets"]) == {"synthetic", "digits"}
    for name in ("fig5b_fullft_vs_lora_pets", "fig10_per_layer_delta_heatmap", "extra_attention_overlays"):
        out = figures.FIGURES[name](ctx, d / "figures" / f"{name}.png")
        assert isinstance(out, Path), (name, out)


def test_figures_accept_a_matrix_dir(tmp_path):
    d = build_matrix(tmp_path / "m", ["E2", "A1-lr1e-06", "A1-lr5e-05"], overlays=(), wise=())
    stats.analyze(d, n_boot=200)
    assert isinstance(figures.FIGURES["fig6_lr_sweep"](d, d / "fig6.png"), Path)


def test_degenerate_statistics_do_not_break_figures(tmp_path):
    flat = {r: {"delta": (0.5, 0.5, 0.5, 0.5), "layer_noise": 0.0} for r in ("E2", "E5", "A1-lr1e-06", "A1-lr5e-05")}
    d = build_matrix(tmp_path / "m", list(flat), overrides=flat, overlays=(), wise=())
    stats.analyze(d, n_boot=200)  # NaN statistics, written as null
    ctx = figures.Ctx.load(d)
    for name in ("fig5_fullft_vs_lora", "fig6_lr_sweep", "fig11_statistical_summary", "fig13_metric_correlations"):
        assert isinstance(figures.FIGURES[name](ctx, d / f"{name}.png"), Path), name


def test_fig14_draws_the_stats_json_criterion(tmp_path, monkeypatch):
    """Fig. 14 shows stats.json's one convergence criterion: its text and count in the title, one
    bar per judged run at that run's statistic, an entropy panel only when the criterion has one."""
    import numpy as np

    from attncollapse.analysis.figures import base as figures_base, curves as figures_curves

    d = build_matrix(tmp_path / "m", ["E2", "E5", "A1-lr0.0001"], overlays=(), wise=())
    drawn = []
    monkeypatch.setattr(figures_curves, "save", lambda fig, out: drawn.append(fig) or Path(out))
    for crit, panels in ((None, 1), (stats.CONVERGENCE_FIG14, 2)):
        st = stats.analyze(d, n_boot=100, write=False, convergence_criterion=crit)
        ctx = figures_base.Ctx.load(d)
        ctx.stats = st
        figures_curves.fig14(ctx, tmp_path / "f.png")
        fig, c = drawn[-1], st["tests"]["convergence"]
        axes = [a for a in fig.axes if a.patches]
        assert len(axes) == panels and all(a.patches for a in axes)  # no empty panel
        assert c["criterion"]["text"] in fig._suptitle.get_text().replace("\n", " ")
        assert f"{c['n_converged']} of {c['n_runs']} runs" in fig._suptitle.get_text()
        key = f"acc_{c['criterion']['rule']}_pp"
        widths = [p.get_width() for p in axes[0].patches]
        assert widths == [abs(v[key]) for v in c["runs"] if not v.get("skipped")]
        assert np.isclose(axes[0].lines[0].get_xdata()[0], c["criterion"]["acc_tol_pp"])


def test_overlays_share_one_colour_scale_with_a_colour_bar(tmp_path, monkeypatch):
    """Every heatmap of the overlay figure uses 0 … the largest head-mean patch value of the
    overlays.npz files drawn (computed here from the files), and one colour bar shows it."""
    import numpy as np

    from attncollapse.analysis.figures import curves as figures_curves

    d = build_matrix(tmp_path / "m", ["E2", "E5"])
    drawn = {}
    monkeypatch.setattr(figures_curves, "save", lambda fig, out: drawn.setdefault("fig", fig) and out)
    figures_curves.overlays(d, tmp_path / "o.png")
    fig = drawn["fig"]
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == "inferno"]
    top = 0.0
    for rid in ("E2", "E5"):
        with np.load(d / rid / "overlays.npz") as z:
            L = z["initial"].shape[0]
            for key in ("initial", "final"):
                p = z[key][sorted({0, L // 2, L - 1})][:, :2, :, 1:]  # the two images drawn per run
                top = max(top, float((p / p.sum(-1, keepdims=True)).mean(-2).max()))
    clims = {im.get_clim() for im in heat}
    assert len(heat) == 4 * 6 and len(clims) == 1
    lo, hi = clims.pop()
    assert lo == 0.0 and hi == pytest.approx(top)
    assert any("one scale" in ax.get_ylabel() for ax in fig.axes)
