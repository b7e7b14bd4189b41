"""The `attncollapse` command: parsing and printing only; the work lives in the modules.

    attncollapse run paper [--only E2,A1] [--executor ray] [--set optim.epochs=1]
    attncollapse demo
    attncollapse validate configs/paper.yaml
    attncollapse status runs/paper
    attncollapse report runs/paper
    attncollapse zeroshot runs/paper/E5 --datasets cifar100
    attncollapse baseline --model openai/clip-vit-base-patch32 --data eurosat --out runs/e1
    attncollapse convert ViT-B-32.pt models/vit-b-32
    attncollapse measure tiny digits --limit 64
    attncollapse compare tiny tiny-vit digits --limit 64
    attncollapse maps tiny digits --vs tiny-vit --layers 1 3
    attncollapse reanalyse study2/ --out runs/study2-reanalysis

Imports happen inside the commands, so `attncollapse --help` does not load torch.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _kv(items: list[str] | None) -> dict:
    from .config import ConfigError, parse_assignments

    pairs, errors = parse_assignments(items or [], "--executor-opt")
    if errors:
        raise ConfigError(errors)
    return dict(pairs)


def _positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (argparse prints the usage and exits 2 otherwise)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number ≥ 1")
    return int(text)


def _seed(text: str) -> int:
    """argparse type: a seed numpy's default_rng takes, 0 to 2**32 - 1."""
    if not text.strip().isdigit() or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 0 to {2**32 - 1}")
    return int(text)


def _gpu_list(text: str) -> str:
    """argparse type: a GPU count (2) or ids (0,2); anything else would silently run on the CPU."""
    if not re.fullmatch(r"\d+(,\d+)*", text.replace(" ", "")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count (2) or GPU ids (0,2)")
    return text.replace(" ", "")


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _run(args: argparse.Namespace, matrix_path: str) -> int:
    """Exit 0 when every task is done; 1 when one failed; 3 when none failed but another
    runner still holds some (their ids and owners in one line on stderr)."""
    from .config import prepare
    from .study import held_line, run_matrix

    prep = prepare(matrix_path, args.set or [], need_matrix=True)  # validate's code path; ConfigError → main
    _warn(prep.warnings)
    matrix = prep.matrix
    out = args.out or str(Path("runs") / matrix.name)
    options = _kv(args.executor_opt)
    if getattr(args, "ray_address", None):
        options["address"] = args.ray_address
    summary = run_matrix(matrix, out, only=args.only, executor=args.executor, gpus=args.gpus,
                         runs_per_gpu=args.runs_per_gpu, executor_options=options,
                         analyze=not args.no_analysis)
    from .lab.explore import refresh_pages

    pages = refresh_pages(out)  # each finished run's explore.html (maps over training, one page)
    if pages:
        print(f"explorer pages: {len(pages)} written (e.g. {pages[0]}); open one in a browser")
    if summary.get("analysis", {}).get("report") == "ok":
        print(f"report: {Path(out) / 'report.md'} and report.html")
    held = held_line(summary)
    if held:
        print(f"error: {held}", file=sys.stderr)
    damaged = [o for o in summary["outcomes"] if o.get("damaged_file")]
    for o in damaged:  # a run stopped by a damaged file it cannot repair: the line names it and the fix
        print(f"error: {o['note']}", file=sys.stderr)
    if summary["ok"]:
        return 0
    return 2 if damaged else 1 if summary.get("failed", True) else 3


def _matrix_dir(path: str) -> Path:
    """A matrix directory given on the command line, or a one-line error saying what to give."""
    out = Path(path)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such matrix directory; give the --out of an `attncollapse run` "
                                "(default runs/<matrix name>, e.g. runs/demo)")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args, args.matrix)


def cmd_demo(args: argparse.Namespace) -> int:
    args.out = args.out or "runs/demo"
    return _run(args, "demo")


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import prepare

    prep = prepare(args.file, args.set or [])  # the code path of `run`: same errors, same warnings
    path, matrix, cfg = prep.path, prep.matrix, prep.run
    if matrix is not None:
        runs = matrix.expand()
        print(f"{path}: ok — matrix {matrix.name!r}, {len(runs)} runs"
              + (f" + E1 baseline on {', '.join(matrix.baseline)}" if matrix.baseline else "")
              + (f" for each of its {n} models" if matrix.baseline and (n := len(matrix.models())) > 1 else ""))
        print("  " + " ".join(r.id for r in runs))
    else:
        print(f"{path}: ok — run {cfg.id!r} ({cfg.method} on {cfg.dataset}, model {cfg.model})")
    _warn(prep.warnings)
    _validate_hub(matrix, cfg)
    return 0


def _validate_hub(matrix, cfg) -> None:
    """`run`'s hub check, said plainly instead of failing: the config is valid, but `run`
    stops at once when a hub model or dataset is neither cached nor reachable."""
    from .study import HubUnavailable, check_hub, hub_needs

    if matrix is not None:
        need = hub_needs([(r.id, r.config) for r in matrix.expand()],
                         [(f"E1:{ds}", matrix.baseline_config(ds)) for ds in matrix.baseline])
    else:
        need = hub_needs([(cfg.id, cfg)])
    try:
        check_hub(need, log=lambda line: None)
    except HubUnavailable as exc:
        print(f"but `run` would stop before any work: {exc}")


def cmd_status(args: argparse.Namespace) -> int:
    from .study import format_status, status

    print(format_status(status(_matrix_dir(args.dir))))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .study import matrix_of, run_analysis

    out = _matrix_dir(args.dir)
    matrix = matrix_of(out)  # a missing or damaged matrix.yaml: one line from main
    state = run_analysis(out, matrix=matrix)
    for stage, s in state.items():
        print(f"{stage:>8}: {s}")
    if state.get("report") == "ok":
        print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / 'stats.json'} and {out / 'figures'}/")
    return 1 if any(s.startswith("failed") for s in state.values()) else 0


def _zeroshot_hub_check(run_dir: Path, datasets: list[str] | None) -> None:
    """Fail fast, naming the offline routes, when the hub model or a zero-shot set is
    neither cached nor reachable (else each load retries the hub for ~30 s)."""
    from .config import hub_dataset_id, hub_model_id, read_recorded_config
    from .study import check_hub

    cfg = read_recorded_config(run_dir / "config.yaml")
    need: dict[tuple[str, str], list[str]] = {}
    # The pretrained model (LoRA's adapters-off and frozen-projection protocols) and every set.
    for kind, repo in [("model", hub_model_id(cfg.model)),
                       *[("dataset", hub_dataset_id(d)) for d in (datasets or cfg.zeroshot.datasets)]]:
        if repo is not None:
            need.setdefault((kind, repo), []).append(run_dir.name)
    check_hub(need)


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .train import evaluate_run

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory; give one run's directory inside a matrix "
                                "directory (runs/<matrix>/<run id>; `attncollapse status runs/<matrix>` lists them)")
    if (run_dir / "final.json").is_file() and (run_dir / "config.yaml").is_file():
        _zeroshot_hub_check(run_dir, args.datasets)
    final = evaluate_run(args.run_dir, datasets=args.datasets or None, device=args.device)
    for name, block in (final.get("zeroshot") or {}).items():
        keys = ("acc", "top5", "acc_base_only", "acc_frozen_projection", "knn_acc", "linear_probe_acc")
        print(f"{name:>12}:" + "".join(f"  {k} {block[k]:.4f}" for k in keys if isinstance(block.get(k), (int, float))))
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .train.interpolate import interpolate_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "record.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no record.json; give a finished run of a design: forgetting matrix")
    out = interpolate_run(run_dir, variant=args.variant, alphas=args.alphas, out_dir=args.out, device=args.device)
    print(f"{'alpha':>6} {'test':>7} {'transfer':>9} {'retain %':>9} {'ΔH %':>8} {'CKA':>7} {'emb':>7} {'weights':>8}")
    for r in out["sweep"]:
        print(f"{r['alpha']:>6.2f} {r['test_acc']:>7.4f} {r['transfer_acc']:>9.4f} {r['transfer_retention']:>9.2f} "
              f"{r['delta_entropy_pct']:>+8.3f} {r['cka_mean']:>7.4f} {r['embedding_drift']:>7.4f} "
              f"{r['weight_drift_rel']:>8.5f}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from . import _io
    from .config import DataConfig, EvalConfig, RunConfig, ZeroShotConfig
    from .measure import format_table
    from .study import check_hub, hub_needs
    from .train import baseline

    data_cfg = DataConfig(eval_subset_size=args.eval_images)
    zs_cfg = ZeroShotConfig(datasets=args.zeroshot) if args.zeroshot else ZeroShotConfig(enabled=False)
    cfg = RunConfig(model=args.model, dataset=args.data, data=data_cfg, zeroshot=zs_cfg)
    check_hub(hub_needs([], [(f"E1:{args.data}", cfg)]))  # offline: one message, not 85 lines
    zs_cfg = zs_cfg if args.zeroshot else None
    out = Path(args.out)
    result = baseline(args.model, args.data, data_cfg=data_cfg, eval_cfg=EvalConfig(), out_dir=out,
                      zeroshot_cfg=zs_cfg, device=args.device, out_name="baseline.json")
    if not (out / "baseline.json").exists():
        _io.write_json(out / "baseline.json", result, checksum=True)
    print(f"{args.model} on {args.data}: {result.get('images')} eval images "
          f"(head diversity: {result.get('diversity')})")
    print(format_table(result["layers"]))
    for name, block in (result.get("zeroshot") or {}).items():
        print(f"zero-shot {name}: {block.get('acc')}" + "".join(
            f", {k} {block[k]:.4f}" for k in ("knn_acc", "linear_probe_acc") if block.get(k) is not None))
    if result.get("zeroshot_skipped"):
        print(f"zero-shot: {result['zeroshot_skipped']}")
    from .analysis.figures import baseline_structure

    png = baseline_structure(result, out / "fig2_baseline_structure.png")
    print(f"wrote {out / 'baseline.json'} and {png}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from .models.convert import convert

    try:
        done = convert(args.src, args.out, act=args.act, vision_heads=args.vision_heads,
                       text_heads=args.text_heads, bpe=args.bpe, dtype=getattr(torch, args.dtype))
    except ValueError as exc:  # unsupported architecture or missing setting: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {done['out']}: vision {done['vision']}; text {done['text']}; {done['act']}")
    if done["tokenizer"]:  # why no tokenizer was written
        print(f"no tokenizer written: {done['tokenizer']}; pass --bpe, or copy the tokenizer files "
              f"of the matching hub model (see {done['out']}/README.md)")
    return 0


def _lab_out(args: argparse.Namespace, command: str, *specs: str) -> Path:
    """--out, else runs/<command>/<model(s)>-<images> (names made path-safe); checked, with
    --device and the MODEL arguments' preset names, before any model is loaded."""
    if args.out:
        out = Path(args.out)
    else:
        slug = "-vs-".join(re.sub(r"[^A-Za-z0-9.]+", "_", Path(s).name or s).strip("_") for s in specs)
        images = re.sub(r"[^A-Za-z0-9.]+", "_", Path(args.images).name or args.images).strip("_")
        out = Path("runs") / command / f"{slug}-{images}"
    _lab_preflight(args, command, specs, out)
    return out


def _lab_preflight(args: argparse.Namespace, command: str, specs: tuple[str, ...], out: Path) -> None:
    """What would otherwise fail only after the whole measurement (an --out that cannot be
    written: the CSV and PNG written, the JSON not) or as a bare exception: one line each."""
    import tempfile

    from .config.checks import device_problem
    from .lab import InputError
    from .lab.load import preset_typo
    from .models import PRESETS

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", args.device):
        raise InputError(f"--device {args.device!r}: expected auto, cpu, cuda, cuda:N or mps")
    if args.device != "auto" and (why := device_problem(args.device)) is not None:
        raise InputError(f"--device {why.split('; ')[0]}; use --device auto (CUDA when present, else CPU) or cpu")
    for spec in specs:
        if (typo := preset_typo(spec)) is not None:
            raise InputError(f"MODEL {spec!r}: not a preset, file or directory here; did you mean {typo}? "
                             f"(presets: {', '.join(PRESETS)})")
    where = out.expanduser()
    if where.exists() and not where.is_dir():
        raise InputError(f"--out {out}: an existing file, not a directory; give a directory (it is created)")
    first = next(p for p in [where, *where.absolute().parents] if p.exists())  # the directory it is made in
    if not first.is_dir():
        raise InputError(f"--out {out}: {first} is a file, so {out} cannot be a directory; give another --out")
    try:
        with tempfile.TemporaryFile(dir=first):  # os.access says yes to root even on read-only mounts
            pass
    except OSError as e:
        raise InputError(f"--out {out}: cannot write in {first} ({e.strerror or e}); give a writable --out") from None
    earlier = where / f"{command}.json" if command != "maps" else where / "maps.npz"
    if earlier.is_file():  # the chosen behaviour: replace, and say so up front (docs/FORMATS.md)
        what = ""
        if command != "maps":
            try:
                rec = _json_head(earlier)
                what = f" ({', '.join(str(v) for v in rec if v)})" if any(rec) else ""
            except (OSError, ValueError):
                pass
        print(f"note: {out} already holds a {command} result{what}; this one replaces it "
              f"(give another --out to keep both)", file=sys.stderr)


def _json_head(path: Path) -> list:
    """(model or A/B spec, images spec) an earlier measure.json / compare.json records."""
    import json

    rec = json.loads(path.read_text())
    models = [rec.get("model", {}).get("spec")] if "model" in rec else [rec.get("a", {}).get("spec"),
                                                                       rec.get("b", {}).get("spec")]
    return [" vs ".join(str(m) for m in models if m), f"on {rec.get('images', {}).get('spec')}"]


def _lab_options(args: argparse.Namespace) -> dict:
    return {"limit": args.limit, "seed": args.seed, "batch_size": args.batch_size, "device": args.device,
            "preprocess": args.preprocess, "alpha": args.alpha}


def _lab_hub_check(models: list[str], images: str) -> None:
    """Hub ids among the MODEL and IMAGES arguments: cached or reachable, else one message
    within seconds (else each load retries the hub for ~30 s)."""
    from .config import hub_dataset_id, hub_model_id
    from .study import check_hub

    need: dict[tuple[str, str], list[str]] = {}
    for spec in models:
        if not Path(spec).expanduser().exists() and (repo := hub_model_id(spec)) is not None:
            need.setdefault(("model", repo), []).append("MODEL")
    if not Path(images).expanduser().exists() and (repo := hub_dataset_id(images)) is not None:
        need.setdefault(("dataset", repo), []).append("IMAGES")
    check_hub(need, log=lambda line: print(line, file=sys.stderr))


def _sample_line(record: dict) -> str:
    s = record.get("sample")
    what = f"{record['count']} images"
    return what + (f" (a seeded sample of {record['total']}: --limit {s['limit']} --seed {s['seed']})" if s else "")


def cmd_measure(args: argparse.Namespace) -> int:
    from .lab import format_measure, measure_model

    out = _lab_out(args, "measure", args.model)
    _lab_hub_check([args.model], args.images)
    result = measure_model(args.model, args.images, out=out, per_head=args.per_head, **_lab_options(args))
    print(f"{args.model} on {args.images}: {_sample_line(result['images'])}, "
          f"{result['model']['family']} {result['model']['grid'][0]}x{result['model']['grid'][1]} patches; "
          "mean ± SD over images")
    print(format_measure(result))
    for line in _model_notes(result["model"]):
        print(f"note: {line}")
    print("wrote " + ", ".join(result["files"].values()))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .lab import compare_models, format_compare

    out = _lab_out(args, "compare", args.a, args.b)
    _lab_hub_check([args.a, args.b], args.images)
    result = compare_models(args.a, args.b, args.images, out=out, per_head=args.per_head, **_lab_options(args))
    print(f"A = {args.a}, B = {args.b} on {args.images}: {_sample_line(result['images'])}; "
          "Δ% = 100·(B − A)/A of the means over images; map JS = Jensen-Shannon divergence of the "
          "head-averaged maps, mean ± SD over images")
    print(format_compare(result))
    for line in _model_notes(result["a"], result["b"]):
        print(f"note: {line}")
    print("wrote " + ", ".join(result["files"].values()))
    return 0


def _model_notes(*records: dict) -> list[str]:
    """Caveats about what was measured: an unfinished run's checkpoint, and a comparison of
    a [CLS] row with a family's mean query row (SigLIP has no [CLS])."""
    from .models import FAMILIES

    notes = [f"{r['spec']}: measured its {r['checkpoint']}" for r in records
             if "unfinished" in str(r.get("checkpoint", ""))]
    queries = {r["spec"]: getattr(FAMILIES.get(r.get("family")), "query", None) for r in records}
    if len(set(queries.values()) - {None}) > 1:
        rows = "; ".join(f"{s}: {'the [CLS] row' if q == 'first' else 'the mean row over all queries (no [CLS])'}"
                         for s, q in queries.items())
        notes.append(f"the two models' rows are different quantities ({rows}): their Δ mixes the model change "
                     "with the change of query; compare within a family")
    return notes


def _heads(values: list[str] | None) -> list[int] | None:
    if not values or values == ["mean"]:
        return None
    if not all(v.isdigit() and int(v) >= 1 for v in values):
        from .lab import InputError

        raise InputError(f"--heads {' '.join(values)}: give `mean` or head numbers from 1 (e.g. --heads 1 4)")
    return [int(v) for v in values]


def cmd_reanalyse(args: argparse.Namespace) -> int:
    from .analysis.forgetting import reanalyse

    stats = reanalyse(args.records_dir, args.out, published=args.published)
    for line in stats["record_problems"]:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{stats['n_runs_all_backbones']} run records read ({stats['n_runs']} primary backbone), "
          f"{len(stats['record_problems'])} left out; {len(stats['notes'])} statistic(s) not computed")
    card = stats.get("scorecard")
    if card:
        print(f"scorecard: {card['match']} of {card['compared']} published numbers match, {card['differs']} differ, "
              f"{card['missing_in_ours']} missing ({Path(args.out) / 'scorecard.csv'})")
    print(f"wrote {Path(args.out) / 'report.md'}, report.html, stats.json, run_level.csv and figures/")
    return 0


def cmd_maps(args: argparse.Namespace) -> int:
    from .lab import attention_maps

    from .lab import InputError

    if args.vs and args.extra:
        raise InputError("give the second model once: `maps A B IMAGES` or `maps A IMAGES --vs B`, not both")
    vs = args.vs or (args.images if args.extra else None)
    images = args.extra or args.images
    args.images = images
    out = _lab_out(args, "maps", *([args.model] + ([vs] if vs else [])))
    _lab_hub_check([args.model] + ([vs] if vs else []), images)
    opts = _lab_options(args)
    opts["limit"] = args.limit if args.limit is not None else 4
    result = attention_maps(args.model, images, vs=vs, layers=args.layers, heads=_heads(args.heads), out=out, **opts)
    drawn = result["maps"][:result.get("figure_rows", len(result["names"]))]  # the figure's scale
    print(f"{len(result['names'])} images x {len(result['columns'])} maps ({', '.join(result['columns'])}); "
          f"one colour scale 0 to {float(drawn.max()):.3f}")
    for line in _model_notes(*result["models"]):
        print(f"note: {line}")
    if result.get("figure_rows", 0) < len(result["names"]):
        print(f"maps.png draws the first {result['figure_rows']} of the {len(result['names'])} images "
              "(a taller figure is slow to lay out and not read); maps.npz holds every map")
    print("wrote " + ", ".join(result["files"].values()))
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from .lab.explore import explore_run

    path = explore_run(args.run_dir, args.out)
    print(f"wrote {path}: one self-contained page (no network), open it in a browser")
    return 0


def _add_lab_options(p: argparse.ArgumentParser, *, limit_help: str) -> None:
    p.add_argument("--out", help="output directory (default runs/<command>/<model>-<images>)")
    p.add_argument("--limit", type=_positive_int, help=limit_help)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the --limit sample (default 0)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto: CUDA when available)")
    p.add_argument("--preprocess", choices=["original", "clip"], default="original",
                   help="resize and crop: the study's torchvision-style bilinear (default) or CLIP's bicubic")
    p.add_argument("--alpha", choices=["drop", "white"], default="drop",
                   help="transparent pixels: PIL convert (default) or composited on white")


_MODEL_HELP = ("preset (tiny, vit-b-32-random, ...), model directory (CLIP, CLIPVisionModel, SigLIP/SigLIP 2, "
               "DINOv2 (+registers), ViT), PEFT adapter directory, run directory, OpenAI/OpenCLIP checkpoint "
               "file, or hub id (needs the hub or its cache)")
_IMAGES_HELP = ("folder of images, class-folder tree, list file (one path per line) or dataset source "
                "(synthetic, digits, hf:<dir>, eurosat, ...)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="matrix directory (default runs/<matrix name>)")
    p.add_argument("--only", help="run ids, entries, groups or globs, comma-separated (E2,A1,R*); E1 = baselines")
    p.add_argument("--executor", choices=["local", "ray", "slurm"], default="local",
                   help="where runs execute: this machine (default), a Ray cluster or Slurm "
                        "(pip install -e '.[ray]' / '.[slurm]')")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="with --executor ray: the Ray cluster to join (`ray start --head` prints it; "
                        "default $RAY_ADDRESS, else a Ray started on this machine)")
    p.add_argument("--gpus", type=_gpu_list, help="GPUs: a count (one local worker each) or ids like 0,2")
    p.add_argument("--runs-per-gpu", type=_positive_int, default=1, help="runs sharing one GPU (default 1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field of defaults (optim.lr=1e-4), a run (runs.E3.optim.epochs=1) "
                        "or the matrix (seeds=[1,2]); repeatable")
    p.add_argument("--executor-opt", action="append", metavar="KEY=VALUE",
                   help="executor setting, e.g. slurm_partition=gpu, timeout_min=600, cluster=local; repeatable")
    p.add_argument("--no-analysis", action="store_true", help="skip results.csv, stats, figures and report")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error (for bug reports)")
    parser = argparse.ArgumentParser(
        prog="attncollapse", parents=[common],
        description="Measure, control and report how fine-tuning reshapes the attention of a vision "
                    "transformer (CLIP, SigLIP, DINOv2, ViT).",
        epilog="Start with `attncollapse demo` (offline, CPU, about a minute); "
               "`attncollapse COMMAND --help` describes each command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, parents=[common], **kw)

    p = add("run", "run a matrix (skips finished runs, resumes partial ones)",
            "Validate a matrix exactly as `validate` does, check the hub models and datasets it "
            "needs are cached or reachable, then train every run not finished yet (resuming "
            "interrupted ones), and write results.csv, stats, figures and the report.")
    p.add_argument("matrix", help="matrix YAML, or a packaged config: paper, paper-shapes, demo, families, families-demo")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    p = add("demo", "the whole study in miniature on CPU (runs/demo)",
            "The packaged demo matrix: a tiny random-init CLIP on synthetic and digits images, "
            "every experiment family, about a minute on CPU, offline, written to runs/demo.")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = add("validate", "check a matrix or run config; print every problem",
            "Check a matrix or a single run's config the way `run` does (same code path): "
            "types, sources, local model and data directories, cache_dir; print every problem "
            "with its location, and warnings for legal settings that are likely typos.")
    p.add_argument("file", help="matrix or run config YAML, or a packaged config name "
                                   "(paper, paper-shapes, demo, families, families-demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, as for run")
    p.set_defaults(func=cmd_validate)

    p = add("status", "where a matrix directory stands",
            "One line per task: done, damaged (final.json unreadable: `run` trains it again), "
            "failed, running (host:pid of the runner holding it, seconds since its heartbeat), "
            "stale-lock (why; `run` takes it over), partial or pending, with accuracy and Δentropy.")
    p.add_argument("dir", help="a matrix directory written by `attncollapse run` (runs/<name>)")
    p.set_defaults(func=cmd_status)

    p = add("report", "results.csv, statistics, figures and report of a matrix directory",
            "Rewrite results.csv, stats.json, the figures and report.md/html from the files of "
            "a matrix directory; fails when no run has finished.")
    p.add_argument("dir", help="a matrix directory written by `attncollapse run` (runs/<name>)")
    p.set_defaults(func=cmd_report)

    p = add("zeroshot", "zero-shot evaluation of a finished run",
            "Zero-shot accuracy of a finished run's selected checkpoint on the given sources "
            "(k-NN and linear probe for vision-only models), merged into its final.json.")
    p.add_argument("run_dir", help="a finished run's directory (runs/<matrix>/<run id>)")
    p.add_argument("--datasets", nargs="+", help="zero-shot sources (default: the run's config)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the run's config)")
    p.set_defaults(func=cmd_zeroshot)

    p = add("interpolate", "weight interpolation of a finished forgetting run",
            "θ(α) = (1−α)θ0 + αθ over every weight but the head, for a finished run of a design: "
            "forgetting matrix: test accuracy, transfer retention, ΔH, CKA, embedding and weight drift "
            "per α, written to <matrix>/interpolation/<run id>__<variant>.json (docs/FORGETTING_RUNS.md).")
    p.add_argument("run_dir", help="a finished run's directory (runs/<matrix>/<run id>)")
    p.add_argument("--variant", choices=["exact", "authors"], default="exact",
                   help="LoRA: exact = α·s·B·A (default); authors = A and B interpolated as tensors")
    p.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="interpolation coefficients (0 = pretrained, 1 = the run; default 0 .25 .5 .75 1)")
    p.add_argument("--out", default=None, help="output directory (default: <matrix>/interpolation)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the run's config)")
    p.set_defaults(func=cmd_interpolate)

    p = add("baseline", "E1: attention structure of a pretrained model",
            "Experiment E1: the pretrained model's per-layer attention metrics on a dataset's "
            "fixed eval subset (and zero-shot accuracy), with the baseline figure.")
    p.add_argument("--model", required=True,
                   help="hub id, local directory, or a tiny random preset (tiny, tiny-siglip, tiny-dinov2, "
                        "tiny-dinov2-reg, tiny-vit)")
    p.add_argument("--data", required=True, help="dataset source (eurosat, pets, synthetic, hf:<id>, ...)")
    p.add_argument("--out", required=True, help="directory for baseline.json and fig2_baseline_structure.png")
    p.add_argument("--eval-images", type=_positive_int, default=200, help="fixed eval subset size (reports: 200)")
    p.add_argument("--zeroshot", nargs="*", help="also measure zero-shot accuracy on these sources")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default auto: CUDA when available)")
    p.set_defaults(func=cmd_baseline)

    desc = ("Convert an OpenAI TorchScript ViT-*.pt archive or an OpenCLIP ViT state dict into a "
            "Hugging Face CLIPModel directory (config.json, model.safetensors) for --model. "
            "ResNet, timm-tower and SigLIP checkpoints are refused.")
    p = add("convert", "OpenAI/OpenCLIP checkpoint -> Hugging Face directory", desc)
    p.add_argument("src", help="OpenAI ViT-*.pt, or open_clip_pytorch_model.bin / .safetensors / .pt")
    p.add_argument("out", help="directory to write (config.json, model.safetensors, ...)")
    p.add_argument("--act", choices=["quick_gelu", "gelu"],
                   help="MLP activation (default: open_clip_config.json beside SRC, else the "
                        "TorchScript code; required for a bare OpenCLIP state dict)")
    p.add_argument("--vision-heads", type=int,
                   help="vision attention heads (default: open_clip_config.json, else width // 64; "
                        "16 for OpenCLIP's ViT-H/g/bigG/e widths)")
    p.add_argument("--text-heads", type=int,
                   help="text attention heads (default: open_clip_config.json, else width // 64)")
    p.add_argument("--bpe", help="CLIP's bpe_simple_vocab_16e6.txt.gz, to write the tokenizer "
                                 "(default: the copy in an installed open_clip or clip package)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="dtype of the saved weights (default float32)")
    p.set_defaults(func=cmd_convert)

    p = add("measure", "per-layer attention metrics of any model on any images",
            "The four metrics (entropy, ERF@0.95, Gini, head diversity) of the [CLS]→patch attention of "
            "every image and layer, as mean and SD over images per layer: a table, measure.csv, "
            "measure.json (model, images, preprocessing, versions) and measure.png.")
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("images", help=_IMAGES_HELP)
    _add_lab_options(p, limit_help="measure a seeded sample of N images (default: all)")
    p.add_argument("--per-head", action="store_true",
                   help="also write measure_heads.csv: entropy, ERF, Gini per image, layer and head")
    p.set_defaults(func=cmd_measure)

    p = add("compare", "two models on the same images: metrics, Δ, Δ%% and map drift",
            "The same images through A and B: per layer the four metrics of both, Δ = B − A and "
            "Δ% = 100·(B − A)/A, and the map drift (Jensen-Shannon divergence between A's and B's "
            "head-averaged [CLS]→patch maps, per image: mean and SD); compare.csv/.json/.png. "
            "Refused when A and B have different patch grids or depths.")
    p.add_argument("a", metavar="A", help="the reference model: " + _MODEL_HELP)
    p.add_argument("b", metavar="B", help="the model compared with A (same forms)")
    p.add_argument("images", help=_IMAGES_HELP)
    _add_lab_options(p, limit_help="compare on a seeded sample of N images (default: all)")
    p.add_argument("--per-head", action="store_true",
                   help="also write compare_heads.csv: A, B and Δ of entropy, ERF, Gini per image, layer and head")
    p.set_defaults(func=cmd_compare)

    p = add("maps", "[CLS]→patch attention maps over images (one model, or two side by side)",
            "Heatmaps of where [CLS] looks, per chosen layer and head, over the first column's images; "
            "one colour scale and colour bar per figure. A second model (`maps A B IMAGES` or "
            "`maps A IMAGES --vs B`) stands beside the first on the same scale. Writes maps.png and "
            "maps.npz (the arrays drawn).")
    p.add_argument("model", help=_MODEL_HELP)
    p.add_argument("images", help=_IMAGES_HELP + "; or the second model, then IMAGES")
    p.add_argument("extra", nargs="?", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vs", help="a second model drawn beside the first, same scale")
    p.add_argument("--layers", nargs="+", type=_positive_int, help="layers, from 1 (default first, middle, last)")
    p.add_argument("--heads", nargs="+", help="`mean` (default: mean over heads) or head numbers from 1")
    _add_lab_options(p, limit_help="number of images, a seeded sample (default 4)")
    p.set_defaults(func=cmd_maps)

    p = add("reanalyse", "the forgetting study's analysis on the authors' study2 records",
            "Read per-run forgetting records (the authors' study2/ folder with results/ and intervention/, "
            "or a folder of their JSON records), compute every statistic of their analysis, and write "
            "stats.json, run_level.csv, figures, report.md/html and scorecard.csv (every number of their "
            "summary.json and digest.md against ours) into --out.")
    p.add_argument("records_dir", metavar="RECORDS_DIR", help="study2 folder or a folder of S2_*.json records")
    p.add_argument("--out", required=True, help="folder for the outputs")
    p.add_argument("--published", help="folder with the authors' summary.json and digest.md "
                                       "(default: RECORDS_DIR/analysis or RECORDS_DIR when they are there)")
    p.set_defaults(func=cmd_reanalyse)

    p = add("explore", "a run's attention maps across eval points, layers, heads and images: one HTML page",
            "One self-contained HTML page (sliders and keys; no network) over a run's evalmaps.npz: the "
            "[CLS]→patch maps of a few fixed eval images at every eval point, per layer and head, beside the "
            "pretrained map (step 0) and history.json's metric curves. `run` writes it for each finished run at its end; "
            "`compare` and `maps` write one of their own (compare.html, maps.html).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<matrix>/<run_id>), finished or running")
    p.add_argument("--out", help="the page to write (default RUN_DIR/explore.html)")
    p.set_defaults(func=cmd_explore)
    return parser


def _user_error(exc: BaseException) -> str | None:
    """The one line a user's mistake, a damaged file, a full disk or an unreachable hub
    gets instead of a traceback; None for anything else (a bug)."""
    from . import _io
    from .config import ConfigError
    from .data import DataError
    from .lab import InputError
    from .study import HubUnavailable

    if (full := _io.disk_full_message(exc, Path.cwd())) is not None:
        return full
    if isinstance(exc, (ConfigError, _io.DamagedFile, DataError, HubUnavailable, FileNotFoundError, InputError)):
        return str(exc)
    return None


def _interrupted(func: str) -> str:
    """What Ctrl-C left, said for the command that was interrupted."""
    if func in ("cmd_run", "cmd_demo"):
        return "interrupted (finished runs are kept; `attncollapse run` resumes the rest)"
    lab = func.removeprefix("cmd_")
    if lab in ("measure", "compare", "maps"):
        return (f"interrupted: nothing written ({lab} writes its files only once every image is measured); "
                "rerun it, with --limit N to measure a seeded sample")
    return "interrupted (every file is written whole or not at all: nothing half-written is left)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (tests call it in-process).

    A user's mistake or a damaged file prints one "error: ..." and returns 2; any other
    exception prints one line too, unless `--debug` asks for the traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `attncollapse status runs/x | head`: the reader left, nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        print(_interrupted(getattr(args.func, "__name__", "")), file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        msg = _user_error(exc)
        if msg is not None:
            print(f"error: {msg}", file=sys.stderr)
            return 2
        print(f"error: {type(exc).__name__}: {exc}".splitlines()[0]
              + " (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
