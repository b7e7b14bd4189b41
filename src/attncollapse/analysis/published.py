"""The study's published numbers, as data for a reproduction scorecard.

`published.yaml` (packaged next to this module) transcribes both reports in `seeds/`:
000, the English summary (formulas, statistical tests), and 001, the full experiment
report (every results table). Numbers are exactly as printed; percentages are in percent.

Schema (top-level keys):
    source: the two reports, keyed "000" and "001": file, title, what each gives.
    definitions: layers, heads, patches, tokens, erf_mass, and the entropy log base each
        report states (they disagree; see its note).
    defaults: the training configuration every run shares unless its settings say
        otherwise (optimizer, lr, weight_decay, batch_size, epochs per dataset, ...).
    baseline_E1: the pretrained model. `eurosat`: mean, range ([min, max]) and per_layer
        (12 values, layer 1 first) of each metric; `pets`: mean only;
        `zeroshot_cifar100`: acc_pct, protocol (`pretrained`).
    runs: the 21 fine-tuning runs keyed by the ids `configs/paper.yaml` expands to (E2,
        A1-lr1e-06, R1-apr0.01, ...), each with `label` (the row name as 001 prints it),
        dataset, method (full | lora), settings (what the reports state for that run:
        lr, epochs, lora_rank, lora_targets, freeze_layers, regularizer, reg_lambda,
        weight_decay), best_acc_pct, one mapping per metric (entropy, erf, gini,
        head_diversity) with initial, final and delta_pct where printed, and
        zeroshot_cifar100 (acc_pct, change_pct, protocol) for the runs the reports evaluated.
        `protocol` names how the reports' code measured it (PROTOCOLS), always on the best
        checkpoint; the scorecard compares it with exactly that column of ours.
    statistics: one entry per test: test, what it compares, the printed statistics
        (t, p, cohens_d, r, rho, p_gt for a printed bound), `rows` (run ids) where known;
        `methods` lists the tests 000 names, with those it prints no value for.
    summaries: averages and ranges the reports quote in prose, with the `runs` and
        `quantity` they summarise.
    claims: the orderings and comparisons the findings state in words (`check`: below,
        decreasing, smaller_than, only_significant; the runs or tests and quantity each
        rests on), scored by `report.claims`.

Besides the two seed reports, `source.original_report` is the authors' own
experiment_report.md (commit 5ee6260 of their repository): the exact test values behind the
seeds' rounded headlines (statistics anova_E2, anova_E5, mannwhitney_*, regularizer_*).

Every entry of baseline_E1, runs, statistics, summaries and claims carries `table`: where its
numbers are printed, as "<report> §<section> <title>" (report 000, 001 or original_report;
several joined by "; "). A `note`
records a disagreement between or inside the reports, or an inference, and says which.
Anything a report does not print is absent, never estimated.

Imports yaml only, no torch: the scorecard and report stages use it on any machine.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

_FILE = "published.yaml"

PROTOCOLS = {
    "pretrained": "the pretrained model (E1)",
    "frozen_projection": "fine-tuned vision tower + pretrained visual projection (the original loads only the "
                         "best checkpoint's `vision_model.` keys into a fresh pretrained CLIP)",
    "base_only": "LoRA adapters off + pretrained projection, i.e. the pretrained model (a PEFT checkpoint's keys "
                 "start with `base_model.`, so the original loads none of them)",
    "as_trained": "fine-tuned tower and trained projection, LoRA adapters active",
}
"""Zero-shot protocols a published number can name (published.yaml `protocol`), and what each is."""


def load_published(as_printed: bool = False) -> dict[str, Any]:
    """The whole packaged transcription, freshly parsed (callers may mutate it).

    Args:
        as_printed: return every scalar as the string printed in the YAML ("99.30",
            "-0.14") instead of a number. The decimals of a printed number give its
            rounding, which float parsing loses (99.30 → 99.3).

    Returns:
        The mapping described in the module docstring.
    """
    text = resources.files("attncollapse.analysis").joinpath(_FILE).read_text(encoding="utf-8")
    # BaseLoader resolves no scalar types, so numbers stay the strings the reports printed.
    return yaml.load(text, Loader=yaml.BaseLoader if as_printed else yaml.SafeLoader)


def published_runs(as_printed: bool = False) -> dict[str, dict[str, Any]]:
    """The 21 published runs keyed by run id (E2, …, R3-wd0.1), as in `load_published`."""
    return load_published(as_printed)["runs"]


def published_statistics(as_printed: bool = False) -> dict[str, dict[str, Any]]:
    """The published statistical tests keyed by name (lr_sweep_pearson, …)."""
    return load_published(as_printed)["statistics"]
