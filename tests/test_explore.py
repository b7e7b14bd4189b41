"""The explorer pages: a run's evalmaps.npz, `attncollapse explore`, compare.html / maps.html,
and the page driven in a real headless Chromium.

The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in NUL on file descriptors 3 and 4), so nothing but Chromium is needed:
a real mouse click on the eval-point slider and real key presses must change the step
label and the pixels of the drawn map.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_run_config

from attncollapse import train
from attncollapse.cli import main
from attncollapse.train.evalmaps import STORE, read_store


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("run") / "E2"
    train.run(tiny_run_config(**{"eval.map_images": 3}), d)
    return d


def _page_data(page: Path) -> dict:
    text = page.read_text()
    assert not re.search(r"<(script|img|link)[^>]+(src|href)=", text), "the page must not load anything"
    raw = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S).group(1)
    data = json.loads(raw.replace("<\\/", "</"))
    data["maps_array"] = np.frombuffer(base64.b64decode(data["maps"]), "<f2").reshape(data["shape"])
    return data


def test_evalmaps_hold_every_eval_point_and_match_the_overlays(finished):
    store = read_store(finished / STORE)
    hist = json.loads((finished / "history.json").read_text())
    assert store["steps"].tolist() == [p["step"] for p in hist["points"]]
    K, L, k, H, P = store["maps"].shape
    assert k == 3 and store["images"].shape[0] == 3 and np.allclose(store["maps"].sum(-1), 1, atol=5e-3)
    # overlays.npz comes from separate forwards (before the first step, after the last):
    # the store's first and last points are the same maps, up to fp16
    with np.load(finished / "overlays.npz") as ov:
        for rows, i in ((ov["initial"], 0), (ov["final"], -1)):
            p = rows[:, :k, :, 1:] / rows[:, :k, :, 1:].sum(-1, keepdims=True)
            np.testing.assert_allclose(store["maps"][i], p, atol=1e-3)
        assert np.array_equal(store["images"], ov["images"][:k])
    assert not np.allclose(store["maps"][0], store["maps"][-1], atol=1e-3)  # training moved them


def test_a_damaged_store_is_refused_and_explore_falls_back_to_the_overlays(finished, tmp_path):
    import attncollapse._io as io

    run = tmp_path / "E2"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    blob = bytearray((run / STORE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside the maps
    (run / STORE).write_bytes(bytes(blob))
    with pytest.raises(io.DamagedFile):
        read_store(run / STORE)
    with pytest.warns(UserWarning, match="overlays.npz"):
        assert main(["explore", str(run)]) == 0
    data = _page_data(run / "explore.html")
    assert data["shape"][0] == 2 and data["frames"][0].startswith("step 0")


def test_explore_page_of_a_run_holds_its_maps_and_curves(finished, capsys):
    assert main(["explore", str(finished)]) == 0
    assert "explore.html" in capsys.readouterr().out
    data = _page_data(finished / "explore.html")
    store = read_store(finished / STORE)
    np.testing.assert_array_equal(data["maps_array"].astype(np.float32), store["maps"])
    hist = json.loads((finished / "history.json").read_text())
    ent = data["curves"]["panels"][0]
    assert ent["series"][0]["by_layer"][1] == [p["layers"]["entropy"][1] for p in hist["points"]]
    assert ent["uniform"] == pytest.approx(np.log(store["maps"].shape[-1]))
    assert "/tmp" not in data["title"] and str(finished) not in json.dumps(data["provenance"])


def test_maps_page_matches_maps_npz_and_writes_provenance(tmp_path):
    out = tmp_path / "m"
    assert main(["maps", "tiny", "synthetic", "--vs", "tiny-vit", "--limit", "3", "--out", str(out)]) == 0
    data = _page_data(out / "maps.html")
    prov = json.loads((out / "maps.json").read_text())
    assert prov["command"] == "maps" and [m["spec"] for m in prov["models"]] == ["tiny", "tiny-vit"]
    with np.load(out / "maps.npz") as z:
        maps, columns = z["maps"], list(z["columns"])
    page = data["maps_array"].astype(np.float64)  # (models, L, N, H, P)
    g = maps.shape[-1]
    for c, col in enumerate(columns):  # "L3 mean B": the page's head mean of that layer and model
        layer, model = int(col.split()[0][1:]), "AB".index(col.split()[-1])
        want = maps[:, c].reshape(len(maps), g * g)
        np.testing.assert_allclose(page[model, layer - 1].mean(1), want, atol=2e-3)
    assert data["frames"] == ["A: tiny", "B: tiny-vit"] and data["ref_label"] == "A: tiny"


# ----------------------------------------------------------------------------- the page in a browser

class _Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, profile: Path):
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def fds():  # the child's fd 3 reads our commands, its fd 4 writes the replies
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}", "--window-size=1300,1000", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._id, self._buf, self.session = 0, b"", None

    def send(self, method: str, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def js(self, expr: str):
        return self.send("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def key(self, key: str, code: int) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code,
                      **({"text": key} if kind == "keyDown" and len(key) == 1 else {}))

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)


def _wait(browser: _Browser, expr: str, tries: int = 200):
    import time

    for _ in range(tries):
        value = browser.js(expr)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never true in the page: {expr}")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not on PATH (CI installs it)")
def test_the_page_moves_with_its_slider_and_keys_in_a_headless_browser(finished, tmp_path):
    main(["explore", str(finished)])
    b = _Browser(tmp_path / "profile")
    try:
        b.open((finished / "explore.html").as_uri())
        _wait(b, "document.body && +document.body.dataset.drawn > 0 && [...document.images].length === 0 "
                 "&& document.getElementById('frame-label').textContent !== ''")
        state = "JSON.stringify([document.getElementById('frame-label').textContent, " \
                "document.getElementById('layer-label').textContent, document.getElementById('head-label').textContent, " \
                "document.getElementById('cur').toDataURL()])"
        _wait(b, "document.getElementById('cur').toDataURL().length > 1000")
        label0, layer0, head0, pixels0 = json.loads(b.js(state))
        n_points = len(read_store(finished / STORE)["steps"])
        assert label0.startswith("step ") and "pretrained" not in label0  # opens on the last eval point
        # a real mouse click at the slider's left end: back to step 0, the pretrained model
        x, y = json.loads(b.js("(r => JSON.stringify([r.left + 2, r.top + r.height / 2]))"
                               "(document.getElementById('frame').getBoundingClientRect())"))
        b.click(x, y)
        label1, _, _, pixels1 = json.loads(b.js(state))
        assert b.js("+document.getElementById('frame').value") == 0 and n_points > 2
        assert label1.startswith("step 0") and "pretrained" in label1 and label1 != label0
        assert pixels1 != pixels0  # the drawn map changed with the step
        # the page's keys (focus off the slider): → next eval point, ↓ layer, ] head
        b.js("document.activeElement.blur()")
        b.key("ArrowRight", 39)
        b.key("ArrowDown", 40)
        b.key("]", 221)
        label2, layer2, head2, pixels2 = json.loads(b.js(state))
        assert label2.startswith("step ") and label2 != label1
        assert layer2 != layer0 and head2 == "head 1 of 4" and head0.startswith("mean")
        assert pixels2 not in (pixels0, pixels1)
    finally:
        b.close()
