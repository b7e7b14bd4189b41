"""The explorer page: one self-contained HTML file to look through [CLS]→patch maps.

A *bundle* (a dict, `bundle_of`) holds the maps of F frames (eval points of a run, or
models A and B), L layers, N images and H heads, the images, and the metric curves. The page
inlines all of it (maps as little-endian fp16 in base64, images as greyscale PNGs in
base64, the colour map as 256 RGB triples) with its script: no network, no file beside it.

Sliders (and keys: ← → frame, ↑ ↓ layer, [ ] head, , . image) choose what is drawn: the
reference frame (the pretrained model, or A) and the chosen frame side by side on one colour
scale, every head of the layer, every image, and the curves with a cursor at the frame (or
layer). Each map is drawn on the patch grid over a low-contrast grey copy of its image, so
the attention stays readable; the colour bar marks the uniform share 1/P.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .. import _io

ALPHA = 0.78  # map opacity over the grey image: the image orients, the attention dominates


def grey_png(picture: np.ndarray) -> str:
    """(3, S, S) uint8 → base64 PNG of a low-contrast grey copy (luminance mapped to 35–75%)."""
    lum = (np.transpose(picture, (1, 2, 0)).astype(np.float32) @ np.array([0.299, 0.587, 0.114])) / 255.0
    grey = (255 * (0.35 + 0.4 * lum)).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def colormap(name: str = "viridis") -> list[list[int]]:
    """256 RGB triples of a matplotlib colour map (the figures' sequential one)."""
    from matplotlib import colormaps

    return (np.asarray(colormaps[name](np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(int).tolist()


def bundle_of(*, title: str, provenance: list[str], frames: list[str], frame_name: str, maps: np.ndarray,
              pictures: np.ndarray, names: list[str], curves: dict, ref_label: str | None) -> dict:
    """The page's data.

    Args:
        title: the page heading; provenance: lines under it (model, images, versions).
        frames: F labels of the frames ("step 84 · epoch 0.20 · acc 0.81", "B: run/E2").
        frame_name: what a frame is ("eval point", "model").
        maps: (F, L, N, H, P) [CLS]→patch shares (rows summing to 1).
        pictures: (N, 3, S, S) uint8 images; names: their N labels.
        curves: {"axis": "frame" | "layer", "xlabel", "x": [..], "cursor": [F x values] (axis
            frame), "panels": [{"title", "uniform": float | None, "series": [{"label",
            "color", "dash": bool, "y": [..]} or {..., "by_layer": [L lists]}]}]}.
        ref_label: the caption of frame 0 drawn beside the chosen frame; None = no reference.
    """
    F, L, N, H, P = maps.shape
    g = int(round(P ** 0.5))
    if g * g != P:
        raise ValueError(f"maps over {P} patches do not form a square grid")
    return {"title": title, "provenance": provenance, "frames": frames, "frame_name": frame_name,
            "shape": [F, L, N, H, P], "grid": [g, g], "names": list(names),
            "maps": base64.b64encode(np.ascontiguousarray(maps, "<f2").tobytes()).decode(),
            "images": [grey_png(p) for p in pictures], "curves": curves, "ref_label": ref_label,
            "cmap": colormap(), "alpha": ALPHA}


def write_page(path: str | Path, bundle: dict) -> Path:
    """Write the page atomically; returns its path."""
    data = json.dumps(bundle, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    text = (_HTML.replace("__TITLE__", html.escape(bundle["title"]))
            .replace("__DATA__", data).replace("__SCRIPT__", _SCRIPT))
    path = Path(path)
    _io.write_text(path, text)
    return path


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:13px system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px}h2{font-size:14px;margin:14px 0 4px}
.prov{color:#555;font-size:12px}.keys{color:#555;font-size:12px}
.controls{display:grid;grid-template-columns:max-content 280px max-content;gap:4px 12px;align-items:center;margin:10px 0}
.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;text-align:center;max-width:260px}
canvas.map{border:1px solid #bbb}
.strip figure canvas{cursor:pointer}.strip figcaption{font-size:10px;max-width:96px;overflow:hidden}
.picked{outline:2px solid #D55E00}
</style></head><body>
<h1 id="title"></h1><div class="prov" id="prov"></div>
<div class="controls">
<label for="frame" id="frame-name">frame</label><input type="range" id="frame" min="0" value="0"><span id="frame-label"></span>
<label for="layer">layer</label><input type="range" id="layer" min="0" value="0"><span id="layer-label"></span>
<label for="head">head</label><input type="range" id="head" min="0" value="0"><span id="head-label"></span>
<label for="image">image</label><input type="range" id="image" min="0" value="0"><span id="image-label"></span>
</div>
<div class="keys">Keys: ← → frame · ↑ ↓ layer · [ ] head · , . image. Head 0 = mean over heads.
Maps are drawn on the patch grid over a grey copy of the image; one colour scale per row.</div>
<div class="row">
<div style="max-width:560px">
<div class="row">
<figure id="ref-fig"><canvas id="ref" class="map" width="256" height="256"></canvas><figcaption id="ref-cap"></figcaption></figure>
<figure><canvas id="cur" class="map" width="256" height="256"></canvas><figcaption id="cur-cap"></figcaption></figure>
</div>
<canvas id="cbar" width="530" height="46"></canvas>
<h2>every head of this layer (own colour scale)</h2><div class="row strip" id="heads"></div>
<h2>every image (own colour scale)</h2><div class="row strip" id="imgs"></div>
</div>
<div><h2 id="curves-title">metrics</h2><div id="curves"></div></div>
</div>
<script id="data" type="application/json">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""

_SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const [F, L, N, H, P] = D.shape, G = D.grid;
function h2f(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * Math.pow(2, -24);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * Math.pow(2, e - 15);
}
const bytes = Uint8Array.from(atob(D.maps), c => c.charCodeAt(0));
const half = new Uint16Array(bytes.buffer), M = new Float32Array(half.length);
for (let i = 0; i < half.length; i++) M[i] = h2f(half[i]);
function mapAt(f, l, n, h) {
  const base = ((f * L + l) * N + n) * H;
  if (h > 0) return M.subarray((base + h - 1) * P, (base + h) * P);
  const out = new Float32Array(P);
  for (let k = 0; k < H; k++) for (let p = 0; p < P; p++) out[p] += M[(base + k) * P + p] / H;
  return out;
}
const max = a => a.reduce((m, v) => Math.max(m, v), 0);
const pics = D.images.map(src => { const im = new Image(); im.onload = () => draw(); im.src = "data:image/png;base64," + src; return im; });
const ui = {}; for (const k of ["frame", "layer", "head", "image"]) ui[k] = document.getElementById(k);
ui.frame.max = F - 1; ui.layer.max = L - 1; ui.head.max = H; ui.image.max = N - 1;
ui.layer.value = L - 1; ui.frame.value = F - 1;  // the last layer at the last frame: the change at a glance
document.getElementById("title").textContent = D.title;
document.getElementById("prov").innerHTML = D.provenance.map(s => s.replace(/&/g, "&amp;").replace(/</g, "&lt;")).join("<br>");
document.getElementById("frame-name").textContent = D.frame_name;
if (D.ref_label === null) document.getElementById("ref-fig").style.display = "none";
function paint(canvas, f, l, n, h, vmax) {
  const ctx = canvas.getContext("2d"), W = canvas.width;
  ctx.globalAlpha = 1; ctx.fillStyle = "#999"; ctx.fillRect(0, 0, W, W);
  if (pics[n].complete && pics[n].naturalWidth) { ctx.imageSmoothingEnabled = true; ctx.drawImage(pics[n], 0, 0, W, W); }
  const m = mapAt(f, l, n, h), small = document.createElement("canvas");
  small.width = G[1]; small.height = G[0];
  const sctx = small.getContext("2d"), img = sctx.createImageData(G[1], G[0]);
  for (let p = 0; p < P; p++) {
    const c = D.cmap[Math.max(0, Math.min(255, Math.round(255 * m[p] / (vmax || 1))))];
    img.data.set([c[0], c[1], c[2], 255], 4 * p);
  }
  sctx.putImageData(img, 0, 0);
  ctx.globalAlpha = D.alpha; ctx.imageSmoothingEnabled = false; ctx.drawImage(small, 0, 0, W, W); ctx.globalAlpha = 1;
}
function colorbar(vmax) {
  const c = document.getElementById("cbar"), ctx = c.getContext("2d"), x0 = 10, w = c.width - 20;
  ctx.clearRect(0, 0, c.width, c.height);
  for (let i = 0; i < w; i++) { const k = D.cmap[Math.round(255 * i / (w - 1))]; ctx.fillStyle = `rgb(${k})`; ctx.fillRect(x0 + i, 4, 1, 14); }
  ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textAlign = "left";
  ctx.fillText("0", x0, 32); ctx.textAlign = "right"; ctx.fillText(vmax.toPrecision(3), x0 + w, 32);
  const u = 1 / P;
  if (u <= vmax) {
    const x = x0 + w * u / vmax; ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.moveTo(x, 2); ctx.lineTo(x, 20); ctx.stroke();
    ctx.textAlign = "center"; ctx.fillStyle = "#222"; ctx.fillText(`uniform 1/P = ${u.toPrecision(3)}`, Math.min(Math.max(x, 70), x0 + w - 110), 32);
  }
  ctx.textAlign = "left"; ctx.fillText("[CLS]→patch attention, share of the row", x0, 44);
}
function strip(id, items, pick) {
  const box = document.getElementById(id);
  if (box.children.length !== items.length) {
    box.innerHTML = "";
    items.forEach((it, i) => {
      const fig = document.createElement("figure"), cv = document.createElement("canvas"), cap = document.createElement("figcaption");
      cv.width = cv.height = 96; cv.className = "map"; cv.onclick = () => pick(i); fig.append(cv, cap); box.append(fig);
    });
  }
  const vmax = max(items.map(it => max(mapAt(...it.at))));
  items.forEach((it, i) => {
    const fig = box.children[i]; paint(fig.firstChild, ...it.at, vmax);
    fig.lastChild.textContent = it.label; fig.firstChild.classList.toggle("picked", !!it.picked);
  });
}
function curves(f, l) {
  const C = D.curves, box = document.getElementById("curves");
  document.getElementById("curves-title").textContent = C.title || "metrics";
  if (box.children.length !== C.panels.length)
    box.innerHTML = C.panels.map(() => '<canvas width="380" height="170"></canvas>').join("<br>");
  const xc = C.axis === "frame" ? C.cursor[f] : C.x[l];
  C.panels.forEach((pn, i) => {
    const cv = box.querySelectorAll("canvas")[i], ctx = cv.getContext("2d");
    const W = cv.width, Hh = cv.height, m = {l: 62, r: 8, t: 18, b: 28};
    ctx.clearRect(0, 0, W, Hh);
    const lines = pn.series.map(s => ({...s, y: s.by_layer ? s.by_layer[l] : s.y}));
    const ys = lines.flatMap(s => s.y).filter(v => v !== null && isFinite(v));
    if (pn.uniform !== null && pn.uniform !== undefined) ys.push(pn.uniform);
    let lo = Math.min(...ys), hi = Math.max(...ys); if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const pad = 0.06 * (hi - lo); lo -= pad; hi += pad;
    const x0 = Math.min(...C.x), x1 = Math.max(...C.x) === x0 ? x0 + 1 : Math.max(...C.x);
    const X = x => m.l + (W - m.l - m.r) * (x - x0) / (x1 - x0), Y = y => Hh - m.b - (Hh - m.t - m.b) * (y - lo) / (hi - lo);
    ctx.strokeStyle = "#888"; ctx.lineWidth = 1; ctx.strokeRect(m.l, m.t, W - m.l - m.r, Hh - m.t - m.b);
    ctx.fillStyle = "#222"; ctx.font = "11px sans-serif"; ctx.textAlign = "left"; ctx.fillText(pn.title, m.l, 12);
    const dig = Math.max(0, Math.ceil(-Math.log10(hi - lo)) + 2), fmt = v => v.toFixed(Math.min(dig, 8));  // distinct ends
    ctx.textAlign = "right"; ctx.fillText(fmt(hi), m.l - 3, m.t + 8); ctx.fillText(fmt(lo), m.l - 3, Hh - m.b);
    ctx.textAlign = "center"; ctx.fillText(C.xlabel, (W + m.l) / 2, Hh - 4);
    ctx.fillText(String(x0), m.l, Hh - m.b + 12); ctx.textAlign = "right"; ctx.fillText(String(x1), W - m.r, Hh - m.b + 12);
    if (pn.uniform !== null && pn.uniform !== undefined) {
      ctx.setLineDash([2, 3]); ctx.strokeStyle = "#555"; ctx.beginPath(); ctx.moveTo(m.l, Y(pn.uniform)); ctx.lineTo(W - m.r, Y(pn.uniform)); ctx.stroke();
      ctx.setLineDash([]); ctx.textAlign = "left"; ctx.fillStyle = "#555"; ctx.fillText("uniform", m.l + 3, Y(pn.uniform) - 3);
    }
    lines.forEach((s, k) => {
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.6; ctx.setLineDash(s.dash ? [5, 3] : []); ctx.beginPath();
      const pts = s.y.map((v, j) => [C.x[j], v]).filter(([, v]) => v !== null && isFinite(v));
      pts.forEach(([xv, v], j) => j ? ctx.lineTo(X(xv), Y(v)) : ctx.moveTo(X(xv), Y(v)));  // across gaps: accuracy is sparse
      ctx.stroke(); ctx.setLineDash([]); ctx.fillStyle = s.color;
      if (pts.length < 40) pts.forEach(([xv, v]) => { ctx.beginPath(); ctx.arc(X(xv), Y(v), 2, 0, 7); ctx.fill(); });
      ctx.fillStyle = s.color; ctx.textAlign = "right"; ctx.fillText(s.label, W - m.r - 3, m.t + 12 + 12 * k);
    });
    ctx.strokeStyle = "#D55E00"; ctx.lineWidth = 1; ctx.beginPath(); ctx.moveTo(X(xc), m.t); ctx.lineTo(X(xc), Hh - m.b); ctx.stroke();
  });
}
function draw() {
  const f = +ui.frame.value, l = +ui.layer.value, h = +ui.head.value, n = +ui.image.value;
  document.getElementById("frame-label").textContent = D.frames[f];
  document.getElementById("layer-label").textContent = `layer ${l + 1} of ${L}`;
  document.getElementById("head-label").textContent = h ? `head ${h} of ${H}` : `mean over ${H} heads`;
  document.getElementById("image-label").textContent = `${D.names[n]} (${n + 1} of ${N})`;
  const fr = D.ref_label === null ? f : 0;
  const vmax = Math.max(max(mapAt(f, l, n, h)), max(mapAt(fr, l, n, h)));
  if (D.ref_label !== null) { paint(document.getElementById("ref"), 0, l, n, h, vmax); document.getElementById("ref-cap").textContent = D.ref_label; }
  paint(document.getElementById("cur"), f, l, n, h, vmax);
  document.getElementById("cur-cap").textContent = D.frames[f];
  colorbar(vmax);
  strip("heads", Array.from({length: H + 1}, (_, k) => ({at: [f, l, n, k], label: k ? `head ${k}` : "mean", picked: k === h})), k => { ui.head.value = k; draw(); });
  strip("imgs", Array.from({length: N}, (_, k) => ({at: [f, l, k, h], label: D.names[k], picked: k === n})), k => { ui.image.value = k; draw(); });
  curves(f, l);
  document.body.dataset.drawn = String(+(document.body.dataset.drawn || 0) + 1);
}
for (const k in ui) ui[k].addEventListener("input", draw);
const KEYS = {ArrowRight: ["frame", 1], ArrowLeft: ["frame", -1], ArrowUp: ["layer", 1], ArrowDown: ["layer", -1],
              "]": ["head", 1], "[": ["head", -1], ".": ["image", 1], ",": ["image", -1]};
document.addEventListener("keydown", e => {
  if (e.target instanceof HTMLInputElement || !(e.key in KEYS)) return;  // a focused slider moves itself
  const [k, d] = KEYS[e.key], s = ui[k];
  s.value = Math.max(+s.min, Math.min(+s.max, +s.value + d)); e.preventDefault(); draw();
});
draw();
"""
