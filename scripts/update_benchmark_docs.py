"""Regenerate the benchmark tables of ``docs/benchmarks.md`` (the part between ``<!-- results:start -->`` and
``<!-- results:end -->``) from the benchmark JSON files in ``scripts/results/``, so that no figure is typed by
hand. The text outside the markers is kept as it is.

    python scripts/update_benchmark_docs.py [--results scripts/results] [--out docs/benchmarks.md]

Missing JSON files are reported as "not run". ``notes.md`` in the results folder, if present, is appended
verbatim (the analysis of missed targets; it should cite figures from the tables, not new ones). An ``--out``
file that does not exist yet is created with a title and the markers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import LATENCY_HEADERS, RESULTS_DIR, fmt, latency_cells, markdown_table  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
ROOT = Path(__file__).resolve().parents[1]

TARGET_ACC = {"2x": 0.5, "3x": 1.5}  # points below dense
TARGET_EFFICIENCY = 0.8
TARGET_OVERHEAD = 0.03
TARGET_SPEEDUP = 1.8


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ""
    return (f"{m['cpu']} ({m['cpu_count']} cores, {m['threads']} thread(s) used){gpu}; torch {m['torch']}, "
            f"lightning {m['lightning']}, torch-pruning {m['torch_pruning']}; run {m['date']}")


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


# -- accuracy ----------------------------------------------------------------------------------------
def dense_arm(acc: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in acc["arms"] if a["family"] == "dense")


def best_ours(acc: dict[str, Any], level: str) -> dict[str, Any] | None:
    ours = [a for a in acc["arms"] if a["family"] == "ours" and a["level"] == level]
    return max(ours, key=lambda a: a["acc_mean"]) if ours else None


def plot_file(acc: dict[str, Any], folder: Path) -> Path | None:
    """The accuracy plot in ``folder``: the one the JSON names, else ``accuracy.png`` (the name
    ``bench_accuracy.py`` gives the plot of ``accuracy.json``); None if neither exists."""
    for name in (acc.get("plot"), "accuracy.png"):
        if name and (folder / name).is_file():
            return folder / name
    return None


def accuracy_section(
    acc: dict[str, Any], folder: Path = RESULTS_DIR, link_from: Path = ROOT
) -> tuple[str, list[list[str]]]:
    """``folder``: where the plot is looked for; ``link_from``: the folder the plot's link is relative to."""
    dense = dense_arm(acc)
    out = [f"### Accuracy on digits\n\n{machine_line(acc)}.\n"]
    cfg = acc["config"]
    out.append(
        f"SmallCNN (width {cfg['width']}) on digits at {cfg['size']}x{cfg['size']}, {cfg['epochs']} epochs for "
        f"every arm (AdamW, lr {cfg['lr']}), pruning from epoch {cfg['prune_start']} to {cfg['prune_end']}, "
        f"seeds {cfg['seeds']}. Accuracy is the final validation accuracy (mean ± std over seeds); Δ is in "
        f"points against dense ({100 * dense['acc_mean']:.2f} ± {100 * dense['acc_std']:.2f}). Latency ratio: "
        f"final model against the dense model at batch {cfg['latency_batch']}, timed interleaved on CPU "
        "(seed 0). Masked models (ModelPruning) keep dense shapes, so their MACs count as dense.\n"
    )
    dense_info = acc.get("dense", {})
    if dense_info.get("latency_ms"):
        rate = dense_info["macs"] * cfg["latency_batch"] / (dense_info["latency_ms"] / 1e3) / 1e9
        out.append(f"The dense SmallCNN has {dense_info['macs'] / 1e6:.2f}M MACs per image and runs batch "
                   f"{cfg['latency_batch']} in {dense_info['latency_ms']:.2f} ms: {rate:.2f} GMAC/s.\n")
    png = plot_file(acc, folder)
    if png is not None:
        out.append(f"![accuracy against MACs]({Path(os.path.relpath(png, link_from)).as_posix()})\n")
    levels = list(cfg["levels"])
    for level in levels:
        arms = [a for a in acc["arms"] if a["level"] == level]
        out.append(f"**{level} fewer MACs** (target MACs ratio {cfg['levels'][level]:.3f})\n")
        out.append(markdown_table(
            ["arm", "accuracy %", "Δ points", "MACs ratio", "params ratio", "latency ratio"],
            [[a["arm"], f"{100 * a['acc_mean']:.2f} ± {100 * a['acc_std']:.2f}",
              f"{100 * (a['acc_mean'] - dense['acc_mean']):+.2f}", a["macs_ratio"], a["params_ratio"],
              a["latency_ratio"]] for a in arms],
        ) + "\n")
    resets = [a for a in acc["arms"] if a["family"] == "ablation_reset"]
    if resets:
        rows = []
        for reset in resets:
            sliced = next((a for a in acc["arms"] if a["family"] == "ours" and a["level"] == reset["level"]
                           and a.get("schedule") == reset["schedule"]
                           and a.get("criterion") == reset["criterion"]), None)
            if sliced is None:
                continue
            rows.append([reset["schedule"], reset["criterion"], reset["level"],
                         f"{100 * sliced['acc_mean']:.2f} ± {100 * sliced['acc_std']:.2f}",
                         f"{100 * reset['acc_mean']:.2f} ± {100 * reset['acc_std']:.2f}",
                         f"{100 * (sliced['acc_mean'] - reset['acc_mean']):+.2f}"])
        out.append("**Optimizer-state carry-over** (AdamW state of pruned parameters sliced, the default, "
                   "against reset at each prune)\n")
        out.append(markdown_table(["schedule", "criterion", "level", "sliced %", "reset %", "sliced − reset"],
                                  rows) + "\n")
    if acc.get("modelpruning_default_error"):
        out.append("`ModelPruning(\"ln_structured\", pruning_norm=2, pruning_dim=0)` with its default "
                   "`parameters_to_prune` (every module's `weight`) fails on BatchNorm's 1-D weights:\n\n"
                   f"    {acc['modelpruning_default_error']}\n\nso the structured arm restricts it to conv "
                   "weights.\n")
    targets = []
    for level, allowed in TARGET_ACC.items():
        if level not in levels:
            continue
        ours = [a for a in acc["arms"] if a["family"] == "ours" and a["level"] == level]
        within = [a for a in ours if 100 * (dense["acc_mean"] - a["acc_mean"]) <= allowed]
        best = best_ours(acc, level)
        default = next((a for a in ours if a.get("schedule") == "agp" and a.get("criterion") == "l2"), None)
        figure = (f"best {best['arm']}: {100 * (best['acc_mean'] - dense['acc_mean']):+.2f} points at MACs "
                  f"{best['macs_ratio']:.3f}; {len(within)}/{len(ours)} arms within")
        if default:
            figure += f"; agp/l2: {100 * (default['acc_mean'] - dense['acc_mean']):+.2f}"
        targets.append([f"accuracy at {level} fewer MACs within {allowed} points of dense", figure,
                        met(bool(default) and default in within)])
    for level in levels:
        for mp in (a for a in acc["arms"] if a["family"] == "modelpruning" and a["level"] == level):
            ours = [a for a in acc["arms"] if a["family"] == "ours" and a["level"] == level]
            matched = [a for a in ours if a["acc_mean"] >= mp["acc_mean"] - 0.005]
            which = "within 0.5 points of" if matched else "(none within 0.5 points) against"
            matched = matched or ours
            latency = statistics.median(a["latency_ratio"] for a in matched)
            speedup = mp["latency_ratio"] / latency
            targets.append([
                f"{level}: ours ≥ {TARGET_SPEEDUP}x faster than {mp['arm']} (masked) at matched accuracy",
                f"{speedup:.2f}x: median latency of the {len(matched)} arms of ours {which} its "
                f"{100 * mp['acc_mean']:.2f}% (median MACs {statistics.median(a['macs_ratio'] for a in matched):.3f})",
                met(speedup >= TARGET_SPEEDUP)])
    return "\n".join(out), targets


# -- latency -------------------------------------------------------------------------------------------
def interpolated_latency(rows: list[dict[str, Any]], setting: dict[str, Any], macs: float = 0.5) -> float | None:
    """Latency ratio at MACs ratio ``macs`` for the setting of ``setting`` (model, size, batch, backend,
    context, round_to), linear between the two rows that bracket it; None if no pair brackets it.

    >>> rows = [dict(m=1, macs_ratio=0.6, latency_ratio=0.8), dict(m=1, macs_ratio=0.4, latency_ratio=0.6)]
    >>> round(interpolated_latency(rows, dict(m=1)), 3)
    0.7
    """
    keys = [k for k in ("model", "size", "batch", "backend", "context", "round_to") if k in setting] or ["m"]
    same = sorted((r for r in rows if all(r[k] == setting[k] for k in keys)), key=lambda r: r["macs_ratio"])
    for lo, hi in zip(same, same[1:]):
        if lo["macs_ratio"] <= macs <= hi["macs_ratio"] and hi["macs_ratio"] > lo["macs_ratio"]:
            w = (macs - lo["macs_ratio"]) / (hi["macs_ratio"] - lo["macs_ratio"])
            return lo["latency_ratio"] + w * (hi["latency_ratio"] - lo["latency_ratio"])
    return None


def latency_section(lat: dict[str, Any]) -> tuple[str, list[list[str]]]:
    out = [f"### Latency\n\n{machine_line(lat)}.\n",
           "Pruned copies of randomly initialised ResNets (37 classes, `l2`, head kept), timed interleaved "
           "with the dense model after warm-up in inference mode; latency ratio = median of the pairwise "
           "pruned/dense ratios (quartiles in brackets); efficiency = MACs ratio / latency ratio.\n",
           "**Rows closest to 2x fewer MACs**\n",
           markdown_table(LATENCY_HEADERS, latency_cells(lat["at_2x"])) + "\n",
           "<details><summary>All rows</summary>\n",
           markdown_table(LATENCY_HEADERS, latency_cells(lat["rows"])) + "\n",
           "</details>\n"]
    groups: dict[tuple, list[float]] = {}
    for r in lat["rows"]:
        key = (r["model"], r["size"], r["batch"], r["backend"])
        groups.setdefault(key, [])
    columns = [(c, q) for c in ("global", "local") for q in (None, 8)]
    summary = []
    for key in groups:
        cells = []
        for context, round_to in columns:
            effs = [r["efficiency"] for r in lat["rows"] if (r["model"], r["size"], r["batch"], r["backend"]) == key
                    and r["context"] == context and r["round_to"] == round_to]
            cells.append(statistics.median(effs) if effs else None)
        summary.append([*key, *cells])
    out.insert(3, "**Median efficiency over the ratios, per setting** (where `round_to` and the ranking scope "
               "help)\n\n" + markdown_table(
                   ["model", "input", "batch", "backend", *(f"{c} round_to={q or '—'}" for c, q in columns)],
                   summary) + "\n")
    if not any(r["backend"] == "cuda" for r in lat["rows"]):
        out.append("No GPU rows: the machine that ran this had no CUDA device (the script adds them where "
                   "there is one).\n")
    if lat.get("errors"):
        out.append("Errors: " + "; ".join(f"`{e}`" for e in lat["errors"]) + "\n")
    targets, interp_rows = [], []
    for r in lat["at_2x"]:
        latency = interpolated_latency(lat["rows"], r)
        efficiency = 0.5 / latency if latency else None
        interp_rows.append([r["model"], r["size"], r["batch"], r["backend"], r["context"], r["round_to"] or "—",
                            latency, efficiency, f"{1 / latency:.2f}x" if latency else None,
                            f"{r['efficiency']:.3f} at MACs {r['macs_ratio']:.3f}"])
        if r["batch"] == 32 and r["backend"] == "eager":
            value = efficiency if efficiency is not None else r["efficiency"]
            how = "interpolated at MACs 0.5" if efficiency is not None else f"at MACs {r['macs_ratio']:.3f}"
            targets.append([
                f"CPU batch-32 efficiency ≥ {TARGET_EFFICIENCY} at 2x fewer MACs: {r['model']} {r['size']}px "
                f"{r['context']} round_to={r['round_to']}",
                f"{value:.3f} ({how}; nearest row {r['efficiency']:.2f} at MACs {r['macs_ratio']:.3f}, "
                f"{1 / r['latency_ratio']:.2f}x faster than a dense-shaped masked model)",
                met(value >= TARGET_EFFICIENCY)])
    out.insert(2, "**Efficiency at exactly 2x fewer MACs** (latency ratio interpolated linearly between the two "
               "rows whose MACs ratios bracket 0.5; the grid's ratios rarely land on it)\n\n" + markdown_table(
                   ["model", "input", "batch", "backend", "context", "round_to", "latency ratio @0.5",
                    "efficiency @0.5", "speed-up vs masked @0.5", "nearest row"], interp_rows) + "\n")
    return "\n".join(out), targets


# -- overhead ------------------------------------------------------------------------------------------
def overhead_section(ovh: dict[str, Any], others: list[dict[str, Any]] = ()) -> tuple[str, list[list[str]]]:
    """``others``: further runs (``overhead_*.json``, e.g. shorter fits) shown in the same table."""
    cfg = ovh["config"]
    rows = [[r["model"], run["config"]["train_batches"], r["graph_build_s"], r["setup_s"], r["event_s"],
             " / ".join(f"{v:.3f}" for v in r.get("event_breakdown_s", {}).values()) or "—",
             f"{100 * r['hook_share']:.2f}%",
             r["fit_s"]["dense"], r["fit_s"]["final_arch"], r["fit_s"]["callback"], r["expected_fit_s"],
             f"{100 * r['fit_slowdown']:+.1f}%"] for run in (ovh, *others) for r in run["rows"]]
    out = [f"### Overhead\n\n{machine_line(ovh)}.\n",
           f"Digits at {cfg['size']}x{cfg['size']}, batch {cfg['batch_size']}, {cfg['train_batches']} training "
           f"batches x {cfg['epochs']} epochs (other rows: the batches per epoch shown), median of "
           f"{cfg['repeats']} interleaved repeats; the callback "
           f"prunes {cfg['ratio']:.0%} of channels (`{cfg['criterion']}`, one_shot) at the end of epoch 0. "
           "Hook share: time inside the callback's hooks / fit time. Fit slowdown: fit with the callback "
           "against the same epochs without it at equal architecture (dense epoch 0, final architecture after; "
           "see `scripts/bench_overhead.py`). The event parts are timed outside the trainer.\n",
           markdown_table(["model", "batches/epoch", "graph build s", "setup s", "event s",
                           "event parts s: prune_to / count MACs / forward check", "hook share", "fit dense s",
                           "fit final-arch s", "fit callback s", "expected s", "fit slowdown"], rows) + "\n"]
    targets = [[f"pruning adds < {TARGET_OVERHEAD:.0%} to fit time: {r['model']}",
                f"hook share {100 * r['hook_share']:.2f}%, fit slowdown {100 * r['fit_slowdown']:+.1f}%",
                met(r["hook_share"] < TARGET_OVERHEAD)] for r in ovh["rows"]]
    return "\n".join(out), targets


# -- frontier (bench_frontier.py) --------------------------------------------------------------------
USABLE_POINTS = 1.0  # "usable" latency leader: within this many points of dense accuracy
FRONTIER_HEADERS = ["arm", "accuracy %", "Δ points", "MACs ratio", "params ratio", "latency b1", "latency b32",
                    "epochs", "fit s", "prune s"]


def frontier_leaders(arms: list[dict[str, Any]], level: str) -> dict[str, dict[str, Any] | None]:
    """The arms at ``level`` that lead in accuracy (highest mean) and in batch-32 latency (lowest ratio), and
    the fastest of those within ``USABLE_POINTS`` of dense accuracy (``latency_usable``).

    >>> arms = [dict(arm="a", level="2x", acc_mean=0.9, latency_ratio_b32=0.8),
    ...         dict(arm="b", level="2x", acc_mean=0.8, latency_ratio_b32=0.6),
    ...         dict(arm="c", level="3x", acc_mean=1.0, latency_ratio_b32=0.1)]
    >>> {k: v["arm"] for k, v in frontier_leaders(arms, "2x").items()}
    {'accuracy': 'a', 'latency': 'b', 'latency_usable': 'b'}
    """
    here = [a for a in arms if a["level"] == level]
    timed = [a for a in here if a.get("latency_ratio_b32") is not None]
    dense = next((a for a in arms if a.get("system") == "dense"), None)
    usable = [a for a in timed if dense is None or a["acc_mean"] >= dense["acc_mean"] - USABLE_POINTS / 100]
    fastest = lambda rows: min(rows, key=lambda a: a["latency_ratio_b32"]) if rows else None  # noqa: E731
    return {"accuracy": max(here, key=lambda a: a["acc_mean"]) if here else None, "latency": fastest(timed),
            "latency_usable": fastest(usable)}


PEER_SYSTEMS = ("fasterai", "torch_pruning", "modelpruning")
RECIPE_HEADERS = ["arm", "level", "options", "accuracy %", "best peer (accuracy %)", "≥ it", "latency b32",
                  "fastest peer (latency)", "≤ it", "vs plain (points)", "efficiency", "epochs"]


def recipe_rows(arms: list[dict[str, Any]], levels: list[str]) -> list[list[Any]]:
    """One row per arm of ours at each level: against the best peer in accuracy and the fastest in latency,
    and the gain over our plain ``agp``/``l2`` arm.

    >>> arms = [dict(arm="ours/agp/l2", system="ours", level="2x", acc_mean=0.9, macs_ratio=0.5,
    ...              latency_ratio_b32=0.8, epochs_trained=3),
    ...         dict(arm="ours/x", system="ours", level="2x", acc_mean=0.95, macs_ratio=0.5, latency_ratio_b32=0.5,
    ...              epochs_trained=3, options={"criterion": "large_final"}),
    ...         dict(arm="fasterai", system="fasterai", level="2x", acc_mean=0.93, macs_ratio=0.5,
    ...              latency_ratio_b32=0.6, epochs_trained=3)]
    >>> [r[0] for r in recipe_rows(arms, ["2x"])], recipe_rows(arms, ["2x"])[1][5:10]
    (['ours/agp/l2', 'ours/x'], ['yes', 0.5, 'fasterai (0.600)', 'yes', '+5.00'])
    """
    rows = []
    for level in levels:
        here = [a for a in arms if a["level"] == level]
        # peers at equal MACs: masked ModelPruning keeps the dense MACs (and speed), so it is not one of them
        peers = [a for a in here if a["system"] in PEER_SYSTEMS and a["macs_ratio"] < 0.999]
        timed = [a for a in peers if a.get("latency_ratio_b32") is not None]
        best = max(peers, key=lambda a: a["acc_mean"], default=None)
        fastest = min(timed, key=lambda a: a["latency_ratio_b32"], default=None)
        plain = next((a for a in here if a["arm"] == "ours/agp/l2"), None)
        for a in (a for a in here if a["system"] == "ours"):
            lat = a.get("latency_ratio_b32")
            options = ", ".join(f"{k}={v}" for k, v in (a.get("options") or {}).items()) or "agp, l2"
            rows.append([
                a["arm"], level, options, f"{100 * a['acc_mean']:.2f}",
                f"{best['arm']} ({100 * best['acc_mean']:.2f})" if best else "—",
                "—" if best is None else "yes" if a["acc_mean"] >= best["acc_mean"] else "no",
                lat, f"{fastest['arm']} ({fastest['latency_ratio_b32']:.3f})" if fastest else "—",
                "—" if fastest is None or lat is None else "yes" if lat <= fastest["latency_ratio_b32"] else "no",
                f"{100 * (a['acc_mean'] - plain['acc_mean']):+.2f}" if plain else "—",
                None if not lat else a["macs_ratio"] / lat, a["epochs_trained"],
            ])
    return rows


def frontier_section(fr: dict[str, Any], folder: Path = RESULTS_DIR, link_from: Path = ROOT) -> str:
    cfg, dense = fr["config"], next(a for a in fr["arms"] if a["system"] == "dense")
    out = [f"### Frontier: {fr['config_name']} ({fr['protocol']})\n\n{machine_line(fr)}.\n"]
    fa = fr.get("fasterai") or {}
    versions = f" fasterai {fa['fasterai']}, fastai {fa['fastai']};" if fa else " fasterai did not run;"
    out.append(
        f"What ran: seeds {cfg['seeds']}, {cfg['epochs']} epochs per arm ({cfg['optimizer']}, lr {cfg['lr']}, "
        f"one-cycle, batch {cfg['batch_size']}), our pruning from epoch {cfg['prune_start']} to "
        f"{cfg['prune_end']} (schedules {cfg['schedules']}, criteria {cfg['criteria']});{versions} "
        f"Torch-Pruning arms prune the trained dense model and fine-tune {cfg['epochs']} more epochs (iterative: "
        f"{cfg['tp_steps']} steps). Accuracy: mean ± std over seeds, evaluated by the same function for every "
        f"system (dense {100 * dense['acc_mean']:.2f} ± {100 * dense['acc_std']:.2f}). Latency: seed 0's model "
        "against dense, interleaved, on a CPU shared with other jobs, so the ratios are noisy (a few percent). "
        "Prune s: time inside the pruning callback's hooks (Torch-Pruning: its ratio search and steps). "
        "Masked ModelPruning keeps dense shapes, so its MACs count as dense.\n")
    png = folder / (fr.get("plot") or "")
    if fr.get("plot") and png.is_file():
        out.append(f"![frontier]({Path(os.path.relpath(png, link_from)).as_posix()})\n")
    closing = []
    for level, fraction in fr["levels"].items():
        arms = [a for a in fr["arms"] if a["level"] == level]
        title = "fasterai's own point (pruning_ratio 0.4)" if level == "fasterai" else f"{level} fewer MACs"
        out.append(f"**{title}** (MACs target {fraction:.3f})\n")
        out.append(markdown_table(FRONTIER_HEADERS, [
            [a["arm"], f"{100 * a['acc_mean']:.2f} ± {100 * a['acc_std']:.2f}",
             f"{100 * (a['acc_mean'] - dense['acc_mean']):+.2f}", a["macs_ratio"], a["params_ratio"],
             a.get("latency_ratio_b1"), a.get("latency_ratio_b32"), a["epochs_trained"], f"{a['fit_s']:.0f}",
             f"{a['prune_s']:.2f}"] for a in arms]) + "\n")
        lead = frontier_leaders(fr["arms"], level)
        if lead["accuracy"] is not None:
            acc, lat = lead["accuracy"], lead["latency"]
            line = f"- {title}: accuracy led by `{acc['arm']}` ({100 * acc['acc_mean']:.2f}%)"
            if lat is not None:
                line += f", batch-32 latency by `{lat['arm']}` ({lat['latency_ratio_b32']:.3f} of dense)"
            use = lead["latency_usable"]
            if use is not lat:
                line += (f"; within {USABLE_POINTS:g} point of dense accuracy, by `{use['arm']}` "
                         f"({use['latency_ratio_b32']:.3f})" if use else
                         f"; no arm within {USABLE_POINTS:g} point of dense accuracy was timed")
            closing.append(line)
    out.append("**Who leads** (measured, per MACs level)\n\n" + "\n".join(closing) + "\n")
    rows = recipe_rows(fr["arms"], list(fr["levels"]))
    if rows:
        out.append("**Our arms against the peers at equal MACs** (per level: the most accurate and the fastest "
                   "(batch 32) peer arm that reduces MACs, so masked ModelPruning, at dense MACs, is left out here; "
                   "and our plain `agp`/`l2` arm; efficiency = MACs ratio / batch-32 latency ratio)\n")
        out.append(markdown_table(RECIPE_HEADERS, rows) + "\n")
    if fr.get("errors"):
        out.append("Errors: " + "; ".join(f"`{e}`" for e in fr["errors"]) + "\n")
    return "\n".join(out)


def render(folder: Path, link_from: Path = ROOT) -> str:
    """The generated part: targets, then the accuracy, latency and overhead sections, then ``notes.md``.
    ``link_from``: the folder of the file it goes into (links are relative to it)."""
    sections, targets = [], []
    for name, fn in (("accuracy", accuracy_section), ("latency", latency_section), ("overhead", overhead_section)):
        result = load(folder, name)
        if result is None:
            sections.append(f"### {name.capitalize()}\n\nNot run (`scripts/bench_{name}.py`).\n")
            continue
        if name == "overhead":
            others = [json.loads(p.read_text()) for p in sorted(folder.glob("overhead_*.json"))]
            text, rows = fn(result, others)
        elif name == "accuracy":
            text, rows = fn(result, folder, link_from)
        else:
            text, rows = fn(result)
        sections.append(text)
        targets.extend(rows)
    for path in sorted(folder.glob("frontier_*.json")):
        if not path.name.endswith(".partial.json"):
            sections.append(frontier_section(json.loads(path.read_text()), folder, link_from))
    head = ("_Generated by `scripts/update_benchmark_docs.py` from `scripts/results/*.json`; rerun the "
            "`scripts/bench_*.py` scripts and then it, never edit by hand._\n")
    parts = [head, "### Targets\n", markdown_table(["target", "figure", "status"], targets) + "\n", *sections]
    notes = folder / "notes.md"
    if notes.exists():
        parts.append(notes.read_text().strip() + "\n")
    return "\n".join(parts)


def rewrite(path: Path, body: str) -> str:
    """The text of ``path`` with only the part between the markers replaced by ``body`` (a new file: a title
    and the markers)."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{path} must contain {START} and then {END}, once each")
    before, rest = text.split(START)
    _, after = rest.split(END)
    return f"{before}{START}\n{body.strip()}\n{END}{after}"


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default=str(RESULTS_DIR))
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"), help="the Markdown file to update")
    args = p.parse_args(argv)
    out = Path(args.out)
    text = rewrite(out, render(Path(args.results), out.resolve().parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


if __name__ == "__main__":
    main()

__all__ = ["fmt", "main", "render", "rewrite"]
