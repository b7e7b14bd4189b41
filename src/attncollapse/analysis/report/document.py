"""The report's prose: abstract, research questions with answers, metric definitions,
discussion, limitations and conclusions — every claim generated from stats.json and the
results table, and conditional on the test behind it (raw p and Holm p at α).

The research questions are the reports' (English report §1, experiment report §1.2). An
answer says "supported" only when its test is significant after Holm correction; otherwise
it says what the numbers show and that the test does not establish it.
"""

from __future__ import annotations

from typing import Any

from .. import roles
from .render import Block, below, dpct, num, pval, ran, verdict
from .runtables import config_means, confounds, unstable
from ..table import METRICS, Matrix, Run

QUESTIONS = {
    "RQ1": "Does fine-tuning reduce attention entropy systematically?",
    "RQ2": "Does LoRA preserve attention structure better than full fine-tuning?",
    "RQ3": "How does collapse relate to zero-shot transfer degradation?",
    "RQ4": "Can regularizers mitigate collapse without hurting task accuracy?",
    "RQ5": "Which control knobs matter most (learning rate, LoRA rank, frozen layers, weight decay)?",
}
"""The reports' research questions (English report §1; experiment report §1.2 words them alike)."""

RQ_HEAD = ["RQ", "Evidence", "Test", "Unit", "n", "Statistic", "p", "Holm p", "Verdict"]


def _row(rq: str, what: str, test: str, e: dict, stat: str, p_key: str, alpha: float) -> list[str]:
    """One table row for a test entry of stats.json (p and its Holm-adjusted value side by side)."""
    n = f"{e['n_a']}+{e['n_b']}" if "n_a" in e else str(e.get("n", "—"))
    return [rq, what, test, str(e.get("unit", "—")), n, stat, pval(e.get(p_key)), pval(e.get(f"{p_key}_holm")),
            verdict(e, alpha, f"{p_key}_holm")]


def _sig(e: dict, alpha: float, key: str = "p_holm") -> bool:
    return bool(e) and not e.get("skipped") and below(e.get(key), alpha)


def _rq1(m: Matrix, T: dict, alpha: float) -> dict:
    c = T.get("entropy_direction") or {}  # stats.json's count of runs by the sign of their entropy Δ%
    n, down, up = c.get("n", 0), c.get("fell", 0), c.get("rose", 0)
    same = c.get("unchanged", 0)  # e.g. a linear probe: the tower does not change
    rows = [["RQ1", f"entropy fell in {down} of {n} runs", "— (count)", "runs", str(n),
             "—", "—", "—", "descriptive"]]
    e = T.get("lr_sweep") or {}
    dep = ""
    if e and not e.get("skipped"):
        rows.append(_row("RQ1", "entropy Δ% vs log10 lr (A1 + E2)", "Pearson", e, f"r = {num(e['pearson_r'])}",
                         "pearson_p", alpha))
        dep = (f"; its change depends on the learning rate (r = {num(e['pearson_r'])}, p = {pval(e['pearson_p'])})"
               if _sig(e, alpha, "pearson_p_holm") else
               f"; no significant dependence on the learning rate (p = {pval(e['pearson_p'])})")
    if not n:
        ans = "Not answered: no finished runs."
    elif down == n:
        ans = f"Entropy fell in all {n} runs{dep}."
    elif down == 0:
        ans = (f"No: entropy rose in {up} of {n} runs" + (f" and was unchanged in {same}" if same else "")
               + f"{dep}.")
    else:
        rest = ("rose in the rest" if not same else
                f"rose in {up} and was unchanged in {same}")
        ans = f"Not uniformly: entropy fell in {down} of {n} runs and {rest}{dep}."
    short = (f"entropy fell in {down} of {n} runs" + (", depending on the learning rate" if dep.startswith("; its")
             else "") if n else "not answered")
    return {"rq": "RQ1", "answer": ans, "short": short, "rows": rows, "claims": [ans] if dep.startswith("; its") else []}


def _rq2(T: dict, alpha: float) -> dict:
    rows, claims, parts = [], [], []
    entries = ran(T.get("fullft_vs_lora") or {})
    pooled = T.get("fullft_vs_lora_pooled") or {}
    if pooled and not pooled.get("skipped"):
        entries = entries + [pooled]
    for e in entries:
        rows.append(_row("RQ2", f"entropy Δ%, full FT − LoRA ({e['label']})", "Welch t", e,
                         f"t = {num(e['welch_t'], '.2f')}, d = {num(e['cohens_d'], '.2f')}", "welch_p", alpha))
        closer = abs(e["mean_b"]) < abs(e["mean_a"])
        txt = (f"{e['label']}: LoRA {dpct(e['mean_b'])} vs full FT {dpct(e['mean_a'])} "
               f"(Holm p = {pval(e.get('welch_p_holm'))})")
        if _sig(e, alpha, "welch_p_holm"):
            claims.append(f"On {e['label']}, LoRA's entropy Δ% differs from full FT's "
                          f"({dpct(e['mean_b'])} vs {dpct(e['mean_a'])}; Welch p = {pval(e['welch_p'])}, "
                          f"Holm p = {pval(e['welch_p_holm'])}); LoRA's change is "
                          f"{'smaller' if closer else 'larger'} in size.")
            txt += " — significant, LoRA " + ("closer to the pretrained entropy" if closer else "further from it")
        else:
            txt += " — not significant"
        parts.append(txt)
    if not entries:
        ans = f"Not answered: {(T.get('fullft_vs_lora') or {}).get('reason', 'no full-FT and LoRA runs')}."
    elif claims:
        ans = "Partly or fully supported where significant: " + "; ".join(parts) + "."
    else:
        ans = "Not established: the difference is not significant after Holm correction (" + "; ".join(parts) + ")."
    short = ("not answered" if not entries else f"LoRA differs significantly from full FT on {len(claims)} of "
             f"{len(entries)} comparisons" if claims else "no significant difference between LoRA and full FT")
    return {"rq": "RQ2", "answer": ans, "short": short, "rows": rows, "claims": claims}


def _rq3(T: dict, alpha: float) -> dict:
    """One answer, on the reports' protocol (stats.json `collapse_vs_zeroshot`); the as-trained
    views are rows labelled secondary, never a second answer."""
    e = T.get("collapse_vs_zeroshot") or {}
    sec = [x for x in [T.get("collapse_vs_zeroshot_as_trained") or {}] if x and not x.get("skipped")]
    rows = [_row("RQ3", f"secondary: {x['label']}", "Pearson", x, f"r = {num(x['pearson_r'])}", "pearson_p", alpha)
            for x in sec]
    if not e or e.get("skipped"):
        return {"rq": "RQ3", "answer": f"Not answered on the reports' protocol: {e.get('reason', 'no zero-shot results')}.",
                "short": "not answered", "rows": rows, "claims": []}
    rows.insert(0, _row("RQ3", f"primary: {e['label']}", "Pearson", e, f"r = {num(e['pearson_r'])}", "pearson_p",
                        alpha))
    how = ("final entropy Δ% against zero-shot accuracy as the reports measured it (full FT: fine-tuned tower with "
           "the pretrained projection; LoRA: adapters off)")
    if _sig(e, alpha, "pearson_p_holm"):
        ans = (f"Associated: across {e['n']} runs, {how} correlate (r = {num(e['pearson_r'])}, "
               f"p = {pval(e['pearson_p'])}); an association, not a cause.")
        return {"rq": "RQ3", "answer": ans, "short": "entropy Δ% and zero-shot accuracy are associated",
                "rows": rows, "claims": [ans]}
    ans = f"No significant association across {e['n']} runs of {how} (r = {num(e['pearson_r'])}, p = {pval(e['pearson_p'])})."
    return {"rq": "RQ3", "answer": ans, "short": "no significant association of collapse with zero-shot accuracy",
            "rows": rows, "claims": []}


def _family_rows(rq: str, test: dict, what: str, alpha: float) -> tuple[list[list[str]], list[dict]]:
    rows, sig = [], []
    for e in ran(test):
        rows.append(_row(rq, f"{what}: {e['label']} − reference", "Welch t", e,
                         f"t = {num(e['welch_t'], '.2f')}, d = {num(e['cohens_d'], '.2f')}", "welch_p", alpha))
        if _sig(e, alpha, "welch_p_holm"):
            sig.append(e)
    return rows, sig


def _rq4(m: Matrix, sel: dict, T: dict, alpha: float) -> dict:
    rows, sig = _family_rows("RQ4", T.get("regularizers") or {}, "entropy Δ%", alpha)
    if not rows:
        return {"rq": "RQ4", "answer": f"Not answered: {(T.get('regularizers') or {}).get('reason', 'no regularized runs')}.",
                "short": "not answered", "rows": [], "claims": []}
    acc = (T.get("regularizers") or {}).get("accuracy") or {}  # stats.json: best accuracy vs the reference
    acc_txt = (f"; their best accuracy{' (seed means)' if acc.get('seed_means') else ''} is {acc['min_pp']:+.2f} to "
               f"{acc['max_pp']:+.2f} pp from the unregularized reference's (not tested)"
               if acc.get("min_pp") is not None else "")
    up = [e for e in sig if e["diff"] > 0]
    if up:
        ans = ("Supported for " + ", ".join(f"{e['label']} (entropy Δ {e['diff']:+.2f} pp vs the reference, "
                                             f"Holm p = {pval(e['welch_p_holm'])})" for e in up) + acc_txt + ".")
    else:
        ans = (f"Not established: none of {len(rows)} regularized configurations raises entropy Δ significantly "
               f"after Holm correction{acc_txt}.")
    short = (f"{len(up)} of {len(rows)} regularizers raise entropy Δ significantly" if up
             else "no regularizer raises entropy Δ significantly")
    return {"rq": "RQ4", "answer": ans, "short": short, "rows": rows, "claims": [ans] if up else []}


def _rq5(sel: dict, T: dict, alpha: float) -> dict:
    rows, knobs = [], []
    e = T.get("lr_sweep") or {}
    if e and not e.get("skipped"):
        rows.append(_row("RQ5", "learning rate: entropy Δ% vs log10 lr", "Pearson", e, f"r = {num(e['pearson_r'])}",
                         "pearson_p", alpha))
        if _sig(e, alpha, "pearson_p_holm"):
            knobs.append(f"learning rate (r = {num(e['pearson_r'])}, p = {pval(e['pearson_p'])})")
    for key, what in (("freezing", "frozen layers"), ("weight_decay", "weight decay")):
        r_, sig = _family_rows("RQ5", T.get(key) or {}, what, alpha)
        rows += r_
        knobs += [f"{what} ({e['label']}, Holm p = {pval(e['welch_p_holm'])})" for e in sig]
    lora = [r for r in sel["lora"].get(sel["primary"], []) if r.delta() is not None]
    if len({r.get("lora_rank") for r in lora}) >= 2:
        means = config_means(lora, Run.delta)  # one value per configuration: its seeds' mean
        cfgs = roles.by_config(lora)
        several = any(len(rs) > 1 for rs in cfgs.values())
        rows.append(["RQ5", f"LoRA rank: entropy Δ%{' (seed means)' if several else ''} spans "
                     f"{min(means.values()):+.2f} to {max(means.values()):+.2f} over ranks "
                     f"{', '.join(str(rs[0].get('lora_rank')) for rs in cfgs.values())}", "— (no test)", "runs",
                     str(len(lora)), "—", "—", "—", "descriptive"])
    g = T.get("layer_groups_pooled") or {}
    if g and not g.get("skipped"):
        rows.append(_row("RQ5", "layer position (early/middle/late thirds, all configs pooled)", "one-way ANOVA", g,
                         f"F = {num(g['F'], '.2f')}", "p", alpha))
    if not rows:
        ans = "Not answered: no learning-rate, freezing, weight-decay or rank runs."
    elif knobs:
        ans = "Significant knobs: " + "; ".join(knobs) + ". The others tested are not significant after Holm correction."
    else:
        ans = "None of the knobs tested changes entropy Δ significantly after Holm correction."
    short = ("not answered" if not rows else f"significant: {', '.join(k.split(' (')[0] for k in knobs)}" if knobs
             else "no knob significant")
    return {"rq": "RQ5", "answer": ans, "short": short, "rows": rows, "claims": [ans] if knobs else []}


def research_questions(m: Matrix, st: dict, sel: dict) -> list[dict]:
    """Each RQ's answer, the rows of its tests and the claims it supports.

    Returns:
        [{"rq", "question", "answer", "rows": [RQ_HEAD cells], "claims": [text]}] in RQ order.
    """
    T, alpha = st.get("tests") or {}, st.get("alpha", 0.05)
    out = [_rq1(m, T, alpha), _rq2(T, alpha), _rq3(T, alpha), _rq4(m, sel, T, alpha), _rq5(sel, T, alpha)]
    for a in out:
        a["question"] = QUESTIONS[a["rq"]]
    return out


def rq_blocks(answers: list[dict], st: dict) -> list[Block]:
    """The research-question section: each question and answer, then every test behind them."""
    B: list[Block] = [("p", f"**{a['rq']}. {a['question']}** {a['answer']}") for a in answers]
    B.append(("table", RQ_HEAD, [r for a in answers for r in a["rows"]]))
    B.append(("p", f"α = {st.get('alpha', 0.05)}. Holm p: Holm–Bonferroni correction within each family of tests "
                   "(stats.json), equal to the raw p for a test that stands alone. Unit: what one observation is "
                   "— 'layers' (per-layer Δ% of one run per configuration) or 'runs' (one value per run or seed). "
                   f"Unit rule: {st.get('unit_rule', '')}."))
    return B


def abstract(m: Matrix, sel: dict, answers: list[dict], demo: bool, st: dict | None = None) -> list[Block]:
    """One paragraph: what was run, then each RQ's answer. Every number comes from stats.json
    (`st`: run counts, seeds per configuration, α) or an RQ answer built from it."""
    st = st or {}
    per = (st.get("seeds_per_config") or {c: len(rs) for c, rs in roles.by_config(m.done).items()})
    k = sorted(set(per.values()))
    seeds = (f"{k[0]} seed{'s' if k[0] != 1 else ''} each" if len(k) == 1 else f"{k[0]}–{k[-1]} seeds each"
             if k else "no seeds")
    models = ", ".join(sorted({str(r.get("model")) for r in m.done})) or "—"
    text = (f"We fine-tuned `{models}` in {len(per)} configurations on "
            f"{', '.join(sel['datasets']) or 'no dataset'} ({seeds}; "
            f"{st.get('runs_done', len(m.done))} of {st.get('runs_total', len(m.runs))} runs finished) and tracked "
            "four measures of [CLS]→patch attention (entropy, ERF, Gini, head diversity) from the pretrained model to "
            "the end of training. "
            + f"Answers (Holm-corrected tests at α = {st.get('alpha', 0.05)}; details in the next section): "
            + "; ".join(f"{a['rq']} {a['short']}" for a in answers) + ".")
    if demo:
        text += " These runs are a pipeline demonstration (see the banner): the answers describe the demo's numbers only."
    return [("p", text)]


def definitions(cfg: dict) -> list[Block]:
    """The metrics exactly as computed (docs/STUDY.md "What is measured", docs/CHOICES.md "metric
    aggregation"), with this matrix's settings."""
    ev = cfg.get("eval") or {}
    q = ev.get("erf_q", 0.95)
    div = ev.get("diversity", "batch_mean")
    return [("p", "Input: `a` = the [CLS] row of a head's attention over the P patch tokens only (the [CLS]→[CLS] "
                  "entry dropped, the row renormalised to sum 1). Natural log: entropy is in nats."),
            ("list", [
                "**Entropy** `H = −Σ_j a_j ln a_j` (0·ln 0 = 0); high = attention spread over many patches.",
                f"**ERF@{q:g}**: sort `a` descending; `k` = the smallest count whose cumulative mass ≥ {q:g}; "
                "`ERF = k / P`: the fraction of patches holding that mass.",
                "**Gini**: sort ascending `x_(1..N)`; `G = 2 Σ_i i·x_(i) / (N Σ_i x_i) − (N+1)/N`; high = unequal.",
                f"**Head diversity** (variant `{div}`): "
                + ("average each head's row over a batch of eval images, then `D = 1 − mean_{i<j} cos(ā_i, ā_j)` "
                   f"over the H heads; the layer value is the mean over eval batches of {ev.get('batch_size', 32)}."
                   if div == "batch_mean" else
                   "`1 − mean_{i<j} cos(a_i, a_j)` over heads for each image, then the mean over images."),
                ("**Layer value**: the unweighted mean of per-batch means over the eval batches of "
                 f"{ev.get('batch_size', 32)} images in draw order (a short last batch weighs as much as a full one, "
                 "as in the original code), each batch mean over its images and the heads (entropy, ERF, Gini)"
                 if ev.get("aggregate", "per_batch") == "per_batch" else
                 "**Layer value**: mean over eval images and heads (entropy, ERF, Gini)")
                + "; **run value**: mean over layers. **Δ%** = 100·(final − initial)/initial, initial = the same model before its first step on "
                "the same fixed eval subset; **Δ** = final − initial.",
            ])]


def discussion(m: Matrix, st: dict, sel: dict) -> list[Block]:
    """What the numbers suggest beyond the RQ table, each point with its number or test."""
    T, alpha, out = st.get("tests") or {}, st.get("alpha", 0.05), []
    out += confounds(m.done)
    means = config_means(m.done, Run.delta)
    if means:
        cfgs = roles.by_config(m.done)
        lo, hi = min(means, key=means.get), max(means, key=means.get)
        several = any(len(rs) > 1 for rs in cfgs.values())
        out.append(f"Entropy Δ%{' (seed means per configuration)' if several else ''} ranges "
                   f"from {dpct(means[lo])} ({lo}: {roles.describe(cfgs[lo][0])}) to "
                   f"{dpct(means[hi])} ({hi}: {roles.describe(cfgs[hi][0])}).")
    coupled = [e for e in ran(T.get("metric_correlations") or {}) if _sig(e, alpha, "pearson_p_holm")]
    if coupled:
        out.append("Metrics that move together across runs (Pearson, Holm p < α), so they are not independent "
                   "evidence: " + "; ".join(f"{e['a']}–{e['b']} r = {num(e['pearson_r'], '.2f')}" for e in coupled) + ".")
    for e in ran(T.get("entropy_vs_accuracy") or {}):
        if e.get("scope") == "all runs":
            out.append(f"{e['label']}: r = {num(e['pearson_r'], '.2f')}, p = {pval(e['pearson_p'])}, n = {e['n']} "
                       f"— {verdict(e, alpha, 'pearson_p_holm')} (English report §5.3 expects "
                       + ("a weak entropy–accuracy correlation)." if e.get("y") == "best_acc" else
                          "a strong link of collapse with transfer degradation; RQ3 answers it on the reports' "
                          "protocol, this is the as-trained view)."))
    c = T.get("convergence") or {}
    if c and not c.get("skipped"):
        out.append(f"Convergence: {c.get('n_converged')} of {c.get('n_runs')} runs meet the criterion "
                   f"({(c.get('criterion') or {}).get('text', '')}); the reports claim all 21 do.")
    n_unst = sum(unstable(mt, r.get(f"{mt}_initial")) for r in m.done for mt in METRICS)
    if n_unst:
        out.append(f"{n_unst} Δ% values have a near-zero initial value (marked † in the grand comparison): "
                   "read their absolute Δ, not the ratio.")
    return [("list", out)] if out else [("p", "*Nothing to discuss: no finished runs.*")]


def limitations(m: Matrix, st: dict, demo_reasons: list[str]) -> list[Block]:
    """What limits these results: seeds, demo data, split protocol, zero-shot protocol, the reports' flaws."""
    out = []
    n_seeds = max((len(rs) for rs in roles.by_config(m.done).values()), default=0)
    if n_seeds <= 1:
        out.append("One seed per configuration: run-to-run variance is unknown, and the two-sample tests use the "
                   "layers of one run as samples, which are not independent, so their p-values are optimistic.")
    else:
        out.append(f"Up to {n_seeds} seeds per configuration; see each test's unit and n.")
    if demo_reasons:
        out.append("Pipeline demonstration, not a result: " + "; ".join(demo_reasons) + ".")
    protos = {(r.final or {}).get("split_protocol") for r in m.done} - {None}
    if "hub" in protos:
        out.append("Split protocol `hub` (the original code's): the best checkpoint is selected on the test split, "
                   "so best accuracy is optimistic; `holdout_val` keeps test apart.")
    if "pooled_80_20" in protos:
        out.append("Split protocol `pooled_80_20`: the 20% part serves as both validation and test.")
    out.append("Zero-shot as trained includes the fine-tuned projection; the frozen-projection column isolates the "
               "vision tower and is the reports' full-FT protocol. The reports' LoRA zero-shot numbers had the "
               "adapters off and the pretrained projection, i.e. they are the pretrained model's (English report §6.2).")
    out.append("The reports' known flaws (docs/STUDY.md): one seed, no multiple-comparison correction (we add "
               "Holm), a checkpoint chosen on test, and entropy's log base stated inconsistently (we use nats).")
    out.append("Correlations across runs (collapse vs zero-shot, entropy vs accuracy) are associations, not causes.")
    return [("list", out)]


def conclusions(answers: list[dict], st: dict) -> list[Block]:
    """Only the claims whose tests are significant after Holm correction."""
    claims = [c for a in answers for c in a["claims"]]
    if not claims:
        return [("p", f"No test behind the research questions is significant at α = {st.get('alpha', 0.05)} "
                      "after Holm correction, so this matrix supports no claim beyond the descriptive numbers above.")]
    return [("p", f"Claims supported at α = {st.get('alpha', 0.05)} after Holm correction (everything else in "
                  "this report is descriptive):"), ("list", claims)]


def first_config(m: Matrix) -> dict[str, Any]:
    """The first run's config.yaml (shared settings such as eval), or {}."""
    for r in m.runs:
        if (r.dir / "config.yaml").exists():
            return r.config()
    return {}


PROMPTS = {"single": "a photo of a {name}", "ensemble": "CLIP's 18 CIFAR prompts (Radford et al. 2021), averaged"}
"""The zero-shot prompt text of each template set (transfer/text.py TEMPLATES; analysis does not import it)."""


def _run_config(m: Matrix, pick) -> dict[str, Any]:
    """config.yaml of the first finished run for which `pick(run)` holds, or {}."""
    for r in m.done:
        if pick(r) and (r.dir / "config.yaml").exists():
            return r.config()
    return {}


def methods(m: Matrix) -> list[Block]:
    """How the runs were trained and scored, from the runs' own config.yaml: optimizer, schedule,
    lr per method, LoRA, the two regularizers' formulas, the prompt and the zero-shot protocols."""
    cfg = first_config(m)
    o, z = cfg.get("optim") or {}, cfg.get("zeroshot") or {}
    lrs: dict[str, list[float]] = {}
    for r in m.done:
        if r.get("lr") is not None and float(r.get("lr")) not in lrs.setdefault(r.get("method") or "?", []):
            lrs[r.get("method") or "?"].append(float(r.get("lr")))
    lr_txt = "; ".join(f"{k}: {', '.join(f'{v:g}' for v in sorted(vs))}" for k, vs in lrs.items()) or "—"
    lora = (_run_config(m, lambda r: r.get("method") == "lora").get("lora") or {})
    pairs = {(c.get("rank"), c.get("alpha")) for r in m.done if r.get("method") == "lora"
             and (r.dir / "config.yaml").exists() for c in [r.config().get("lora") or {}]}
    alpha = ("2·rank" if all(a is None or (k and float(a) == 2 * k) for k, a in pairs)
             else ", ".join(f"{a:g} at rank {k}" for k, a in sorted(pairs, key=str) if a is not None))
    reg = lambda kind: (_run_config(m, lambda r: r.get("regularizer") == kind).get("regularizer") or {})  # noqa: E731
    floor = reg("entropy_floor").get("floor_ratio", 0.7)
    templates = z.get("templates", "single")
    prompt = PROMPTS.get(templates, str(templates)) if isinstance(templates, str) else "; ".join(map(str, templates))
    items = [
        f"**Optimizer**: AdamW, weight decay {num(o.get('weight_decay'), 'g')} (R3 varies it), batch "
        f"{num(o.get('batch_size'), 'g')}, gradient clipping at norm {o.get('grad_clip', '—')}, autocast "
        f"{o.get('precision', '—')}.",
        f"**Schedule**: linear warmup over the first {100 * float(o.get('warmup_frac', 0.05)):g}% of steps, then "
        "cosine decay to 0.",
        f"**Learning rate per method** (peak; as run): {lr_txt}.",
        ("**LoRA**: PEFT on the vision tower, targets " + str(lora.get("targets", "qv")) + f", rank per run, alpha "
         f"{alpha}, dropout {lora.get('dropout', '—')}; the projection and head train too."
         if lora else "**LoRA**: no LoRA runs."),
        "**APR** (R1): `L = CE + λ · mean_l mean_(b,h) KL(a_l ‖ a_l⁰)`, `a_l⁰` the frozen pretrained tower's "
        "renormalised [CLS]→patch row on the same batch.",
        f"**Entropy floor** (R2): `L = CE + λ · Σ_l mean_(b,h) relu({floor:g}·H_l⁰ − H_l)`, `H_l⁰` the pretrained "
        "per-layer entropy on the eval subset.",
        f"**Zero-shot**: prompt `{prompt}`, cosine similarity of unit image and text features, top-1, on the "
        "best-accuracy checkpoint, under three protocols: as trained (fine-tuned tower and projection, adapters "
        "active), frozen pretrained projection (fine-tuned tower, pretrained projection: the reports' full-FT "
        "protocol) and adapters off (LoRA only: pretrained tower and projection: the reports' LoRA protocol).",
    ]
    return [("list", items)]


REFERENCES = [
    "Attention Collapse in CLIP Fine-tuning: LoRA vs Full Adaptation — English Report (the study's report 000) "
    "and Experiment Report (report 001); code: github.com/xiaruize0911/Attention_Collapse_in_CLIP_Fine-tuning_repo.",
    "A. Radford et al. Learning Transferable Visual Models From Natural Language Supervision (CLIP). ICML 2021.",
    "E. J. Hu et al. LoRA: Low-Rank Adaptation of Large Language Models. ICLR 2022.",
    "M. Wortsman et al. Robust fine-tuning of zero-shot models (WiSE-FT). CVPR 2022.",
    "P. Helber et al. EuroSAT: A Novel Dataset and Deep Learning Benchmark for Land Use and Land Cover "
    "Classification. IEEE JSTARS 2019.",
    "O. M. Parkhi et al. Cats and Dogs (Oxford-IIIT Pets). CVPR 2012.",
    "A. Krizhevsky. Learning Multiple Layers of Features from Tiny Images (CIFAR-100). 2009.",
    "B. L. Welch. The generalization of 'Student's' problem when several different population variances are "
    "involved. Biometrika 1947.",
    "H. B. Mann, D. R. Whitney. On a test of whether one of two random variables is stochastically larger than "
    "the other. Ann. Math. Stat. 1947.",
    "S. Holm. A simple sequentially rejective multiple test procedure. Scand. J. Stat. 1979.",
    "J. Cohen. Statistical Power Analysis for the Behavioral Sciences. 1988.",
]
"""The report's references: the reproduced study, the methods and data sets it uses, the tests."""


def references() -> list[Block]:
    return [("list", list(REFERENCES))]  # the list numbers them
