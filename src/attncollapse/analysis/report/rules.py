"""The scorecard's rules: when one of our numbers reproduces a published one.

A rule must be able to fail where the reports' claim would fail. The effects the reports
describe are small (most entropy Δ% lie within ±1%), so a fixed tolerance of a percentage
point, or of 2% of a level, accepts a run whose full FT raises entropy where the reports'
lowered it. Every tolerance here is therefore *below the published effect* — half of it —
and never finer than the printed precision (one unit of the last printed digit):

- a Δ% (or a relative zero-shot change): |ours − published| ≤ max(½·|published|, 1 unit):
  within implies the same sign, and a separate direction row states the sign itself;
- a level before training (E1's means and 48 per-layer values, a run's initial value): the
  same pretrained model on the same images, so ±1 unit of the printed precision;
- a level after training (a run's final value): ±max(½·|published final − initial|, 1 unit);
- an accuracy: ±2 pp (the reports' accuracies differ by tenths; no claim rests on them);
- a p-value: the same side of α (the claim a p carries); t and F: ±1.0; r, ρ, d: ±0.2;
  Mann–Whitney U: ±10% of its range n_a·n_b.

With ≥ 2 seeds every number is within when the published value lies in our mean ± 2 SD.
"""

from __future__ import annotations

import math
from typing import Any

ALPHA = 0.05

RULES = {
    "acc": "±2 pp",
    "level": "±1 in the last printed digit",
    "final": "±½ the published change (final − initial), at least 1 in the last printed digit",
    "delta": "±½ the published value (so the same sign), at least 1 in the last printed digit",
    "t": "±1.0",
    "coef": "±0.2",
    "u": "±10% of n_a·n_b",
    "p": f"same side of α = {ALPHA}",
    "sign": "the same sign (0 within half a printed unit)",
}
"""Each kind of number → its one-seed rule, as the report and scorecard.csv print it."""


def printed_unit(printed: Any) -> float:
    """One unit of the last printed digit: "3.683" → 0.001, "-78.9" → 0.1, "122" → 1."""
    s = str(printed).strip().lstrip("+-")
    return 10.0 ** -len(s.split(".", 1)[1]) if "." in s else 1.0


def sign(x: float, unit: float) -> int:
    """-1, 0 or +1; |x| below half a printed unit counts as 0 (it would print as zero)."""
    return 0 if abs(x) < unit / 2 else (1 if x > 0 else -1)


def judge(pub: float, our: dict | None, kind: str, *, unit: float = 0.0, effect: float | None = None,
          u_max: float | None = None) -> tuple[str, str, float | None]:
    """(verdict, rule, ours − published) for one number.

    Args:
        pub: the published value.
        our: {"mean", "sd", "n"} or None (missing).
        kind: a key of RULES.
        unit: one unit of the published value's last printed digit.
        effect: for kind "final", the published final − initial.
        u_max: for kind "u", n_a·n_b.
    """
    if our is None or our.get("mean") is None or (isinstance(our["mean"], float) and math.isnan(our["mean"])):
        return "missing", "—", None
    x = float(our["mean"])
    d = x - pub
    if kind == "p":
        return ("within" if (x < ALPHA) == (pub < ALPHA) else "outside"), RULES["p"], d
    if kind == "sign":
        return ("within" if sign(x, unit) == sign(pub, unit) else "outside"), RULES["sign"], d
    if (our.get("n") or 1) >= 2 and our.get("sd") is not None:
        return ("within" if abs(d) <= 2 * our["sd"] else "outside"), f"mean ± 2 sd over {our['n']} seeds", d
    tol = {"acc": 2.0, "level": unit, "final": max(0.5 * abs(effect or 0.0), unit),
           "delta": max(0.5 * abs(pub), unit), "t": 1.0, "coef": 0.2, "u": 0.1 * (u_max or 0.0)}[kind]
    return ("within" if abs(d) <= tol * (1 + 1e-9) else "outside"), RULES[kind], d
