"""Sweep summary: a Hydra callback that tabulates a multirun and plots accuracy against MACs.

After ``python scripts/train.py -m data=digits ratio=0.2,0.4,0.6 criterion=l1,taylor`` the sweep directory
gets ``sweep_summary.csv`` (one row per job: its overrides, val accuracy, params, MACs and latency ratios,
or its error) and ``sweep_pareto.png`` (val accuracy against MACs ratio, one series per criterion).
Hydra's multirun does the sweeping; this adds only the table and the plot it lacks.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

COLUMNS = [
    "job", "overrides", "criterion", "setting", "val_acc", "params_ratio", "macs_ratio", "latency_ratio", "error"
]


def job_row(job_dir: Path) -> dict[str, Any]:
    """One CSV row from a job directory's ``.hydra/overrides.yaml`` and ``summary.json``."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
    row: dict[str, Any] = {column: "" for column in COLUMNS}
    row["job"] = job_dir.name
    row["overrides"] = " ".join(overrides or [])
    summary_file = job_dir / "summary.json"
    if not summary_file.exists():
        row["error"] = "no summary.json (the job did not finish)"
        return row
    summary = json.loads(summary_file.read_text())
    if "error" in summary:
        row["error"] = summary["error"]
        return row
    latency = summary["cpu_latency"]
    largest_batch = max(latency, key=lambda k: int(k.split("_")[1]))
    config = summary["config"]
    target = config.get("target", "channels")
    row.update(
        criterion=config["criterion"]["criterion"],
        setting=f"ratio={config['ratio']}" if target == "channels" else f"{target} budget={config['budget']}",
        val_acc=summary["val_acc"],
        params_ratio=summary["params"]["ratio"],
        macs_ratio=summary["macs"]["ratio"],
        latency_ratio=latency[largest_batch]["ratio"],
    )
    return row


def write_sweep_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``sweep_summary.csv`` and ``sweep_pareto.png`` for the jobs under ``sweep_dir``; return the rows."""
    job_dirs = sorted(
        (p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: (len(p.name), p.name)
    )
    rows = [job_row(d) for d in job_dirs]
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_pareto(rows, sweep_dir / "sweep_pareto.png")
    return rows


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> None:
    """Save :func:`pareto_figure` to ``path`` (needs matplotlib: the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'lightning-prune[plot]'); %s not written", path)
        return
    fig = pareto_figure(rows, path.parent.name)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pareto_figure(rows: list[dict[str, Any]], name: str) -> Any:
    """Val accuracy against MACs ratio, one series per criterion, each point labelled with its setting; the
    dense MACs (ratio 1) and, when a job pruned nothing, the dense accuracy as reference lines."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    done = [r for r in rows if not r["error"]]
    for criterion in sorted({r["criterion"] for r in done}):
        points = sorted((r["macs_ratio"], r["val_acc"], r["setting"]) for r in done if r["criterion"] == criterion)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=criterion)
        for x, y, setting in points:
            ax.annotate(setting, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="dense (MACs ratio 1)")
    dense = [r["val_acc"] for r in done if r["macs_ratio"] >= 1.0 - 1e-9]
    if dense:  # a job that pruned nothing is the dense reference
        ax.axhline(max(dense), color="grey", linestyle=":", linewidth=1, label="dense accuracy")
    ax.set_title(f"{name}: val accuracy against compute ({len(done)} of {len(rows)} jobs)")
    ax.set_xlabel("MACs ratio (pruned / dense, fraction)")
    ax.set_ylabel("val accuracy (fraction correct)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="criterion", fontsize=8)
    fig.tight_layout()
    return fig


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write the sweep's CSV table and Pareto plot."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = write_sweep_summary(sweep_dir)
            log.info("sweep summary of %d jobs written to %s", len(rows), sweep_dir / "sweep_summary.csv")
            if (sweep_dir / "sweep_pareto.png").exists():
                log.info("sweep plot written to %s", sweep_dir / "sweep_pareto.png")
