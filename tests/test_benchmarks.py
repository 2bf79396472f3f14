"""The benchmark scripts' smoke modes run (so the scripts never rot), and their JSON is sane.

Each script runs once per module in a subprocess (the scripts quiet loggers and warnings globally), into
``tmp_path``; the tests check structure and internal consistency, never timings against targets.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_prune.engine.latency import pairwise_latencies, pairwise_ratio

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_smoke(script: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), "--smoke", "--out", str(out), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|" in proc.stdout  # a markdown table was printed
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def latency(tmp_path_factory) -> dict:
    return run_smoke("bench_latency.py", tmp_path_factory.mktemp("lat") / "latency.json")


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory) -> dict:
    return run_smoke("bench_accuracy.py", tmp_path_factory.mktemp("acc") / "accuracy.json")


@pytest.fixture(scope="module")
def overhead(tmp_path_factory) -> dict:
    return run_smoke("bench_overhead.py", tmp_path_factory.mktemp("ovh") / "overhead.json")


def check_machine(result: dict) -> None:
    machine = result["machine"]
    assert machine["threads"] >= 1 and machine["torch"] == torch.__version__ and machine["date"].endswith("UTC")
    if platform.libc_ver()[0] == "glibc":  # timed as a long-running process runs: no page faults per pass
        assert machine["allocator"].startswith("steady")


# -- latency -----------------------------------------------------------------------------------------
def test_latency_rows_cover_the_grid_and_are_consistent(latency):
    check_machine(latency)
    cfg = latency["config"]
    rows = latency["rows"]
    grid = {
        (b, c, r, q) for b in cfg["batches"] for c in cfg["contexts"] for r in cfg["round_to"] for q in cfg["ratios"]
    }
    assert {(r["batch"], r["context"], r["round_to"], r["ratio"]) for r in rows} == grid
    for row in rows:
        assert 0 < row["macs_ratio"] < 1 and 0 < row["params_ratio"] < 1
        assert row["latency_ratio"] > 0 and row["latency_ratio_q1"] <= row["latency_ratio"] <= row["latency_ratio_q3"]
        assert row["efficiency"] == pytest.approx(row["macs_ratio"] / row["latency_ratio"])
        assert row["pairs"] >= 3 and row["dense_ms"] > 0 and row["pruned_ms"] > 0
    local = {r["ratio"]: r["channel_ratio"] for r in rows if r["context"] == "local" and r["round_to"] is None}
    assert local[0.5] > local[0.3]  # more pruning asked, more done


def test_latency_at_2x_picks_the_closest_row_per_setting(latency):
    rows, picked = latency["rows"], latency["at_2x"]
    assert len(picked) == len({(r["batch"], r["context"], r["round_to"]) for r in rows})
    for p in picked:
        key = (p["batch"], p["context"], p["round_to"])
        same = [r for r in rows if (r["batch"], r["context"], r["round_to"]) == key]
        assert abs(p["macs_ratio"] - 0.5) == min(abs(r["macs_ratio"] - 0.5) for r in same)


# -- accuracy ----------------------------------------------------------------------------------------
def test_accuracy_has_every_arm_with_sane_values(accuracy):
    check_machine(accuracy)
    cfg = accuracy["config"]
    arms = {(a["arm"], a["level"]) for a in accuracy["arms"]}
    expected = {("dense", None)}
    for level in cfg["levels"]:
        expected |= {(f"ours/{s}/{c}", level) for s in cfg["schedules"] for c in cfg["criteria"]}
        expected |= {("modelpruning/l1_unstructured", level), ("modelpruning/ln_structured", level)}
        expected |= {("prune_once/l2", level)} | {(f"ablation/reset/{s}", level) for s in cfg["ablation_schedules"]}
    assert arms == expected
    for arm in accuracy["arms"]:
        assert len(arm["acc"]) == len(cfg["seeds"]) and all(0.0 <= a <= 1.0 for a in arm["acc"])
        assert arm["acc_mean"] == pytest.approx(sum(arm["acc"]) / len(arm["acc"]))
        assert arm["acc_std"] >= 0 and arm["latency_ratio"] > 0
        if arm["family"] in ("ours", "prune_once", "ablation_reset"):
            assert 0 < arm["macs_ratio"] < 1 and 0 < arm["params_ratio"] < 1
        else:  # dense, and masked models keep dense shapes
            assert arm["macs_ratio"] == pytest.approx(1.0)


def test_accuracy_reports_calibration_plot_and_modelpruning_default_failure(accuracy, tmp_path_factory):
    for level, fraction in accuracy["config"]["levels"].items():
        for criterion, found in accuracy["calibration"][level].items():
            assert 0 < found["ratio"] < 1 and found["macs_ratio"] <= fraction + 1e-9, (level, criterion)
    assert accuracy["modelpruning_default_error"].startswith(
        "ValueError: Structured pruning can only be applied to multidimensional tensors"
    )
    assert accuracy["plot"] == "accuracy.png"


# -- overhead ----------------------------------------------------------------------------------------
def test_overhead_rows(overhead):
    check_machine(overhead)
    (row,) = overhead["rows"]
    assert row["graph_build_s"] > 0 and row["event_s"] > 0 and len(row["prune_steps_s"]) == 4
    assert 0 < row["hook_share"] < 1
    assert set(row["event_breakdown_s"]) == {"prune_to", "count_macs_params", "forward_check"}
    assert all(v > 0 for v in row["fit_s"].values())
    e = overhead["config"]["epochs"]
    assert row["expected_fit_s"] == pytest.approx((row["fit_s"]["dense"] + (e - 1) * row["fit_s"]["final_arch"]) / e)
    assert row["fit_slowdown"] == pytest.approx(row["fit_s"]["callback"] / row["expected_fit_s"] - 1)
    assert row["callback_macs_ratio"] < 1 and row["final_arch_macs_ratio"] < 1


# -- README ------------------------------------------------------------------------------------------
def test_update_readme_rewrites_only_between_markers(tmp_path, latency, accuracy, overhead):
    sys.path.insert(0, str(SCRIPTS))
    import update_benchmark_docs as upd

    results = tmp_path / "results"
    results.mkdir()
    for name, data in (("latency", latency), ("accuracy", accuracy), ("overhead", overhead)):
        (results / f"{name}.json").write_text(json.dumps(data))
    (results / "notes.md").write_text("Findings: NOTE-TEXT")
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nintro text\n\n## Results\n\n", "\n\n## Development\n\nkept\n"
    readme.write_text(f"{before}{upd.START}\nold stuff\n{upd.END}{after}")
    upd.main(["--results", str(results), "--out", str(readme)])
    text = readme.read_text()
    assert text.startswith(before + upd.START) and text.endswith(upd.END + after)
    assert "old stuff" not in text and "### Targets" in text and "NOTE-TEXT" in text
    assert "### Accuracy on digits" in text and "### Latency" in text and "### Overhead" in text
    dense = next(a for a in accuracy["arms"] if a["arm"] == "dense")
    assert f"{100 * dense['acc_mean']:.2f}" in text  # figures come from the JSON
    once = readme.read_text()
    upd.main(["--results", str(results), "--out", str(readme)])
    assert readme.read_text() == once  # idempotent


def test_update_readme_needs_markers_and_says_what_was_not_run(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    import update_benchmark_docs as upd

    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="results:start"):
        upd.main(["--results", str(tmp_path), "--out", str(readme)])
    readme.write_text(f"a\n{upd.START}\n{upd.END}\nb\n")
    upd.main(["--results", str(tmp_path / "empty"), "--out", str(readme)])
    assert "Not run (`scripts/bench_latency.py`)" in readme.read_text()


# -- latency helpers ---------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeModel:
    """Advances the fake clock by the next of its ``costs`` on each call and logs the call."""

    def __init__(self, name: str, costs: list[float], clock: FakeClock, log: list[str]) -> None:
        self.name, self.costs, self.clock, self.log, self.calls = name, costs, clock, log, 0

    def __call__(self, inputs):
        self.clock.now += self.costs[self.calls % len(self.costs)]
        self.calls += 1
        self.log.append(self.name)


def test_pairwise_latencies_interleave_and_time_with_the_clock():
    clock, log = FakeClock(), []
    a = FakeModel("a", [9.0, 1.0, 2.0, 3.0], clock, log)  # the first (warm-up) call is not timed
    b = FakeModel("b", [9.0, 0.5, 1.0, 1.5], clock, log)
    times = pairwise_latencies([a, b], torch.zeros(1), repeats=3, warmup=1, clock=clock)
    assert log == ["a", "b"] * 4
    assert times == [[1.0, 2.0, 3.0], [0.5, 1.0, 1.5]]


def test_cpu_latencies_are_timed_with_freed_buffers_kept_in_the_process():
    # a fresh process (the setting is process-wide): glibc's defaults would fault large activations in anew
    code = ("import torch\nfrom lightning_prune.engine.latency import allocator_regime, measure_latency\n"
            "before = allocator_regime()\nmeasure_latency(torch.nn.Linear(4, 4), torch.zeros(1, 4), repeats=1)\n"
            "print(before, '|', allocator_regime())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = (part.strip() for part in out.split("|"))
    assert before == "default"
    assert after.startswith("steady") if platform.libc_ver()[0] == "glibc" else after == "default"


def test_pairwise_latencies_time_in_eval_mode_restore_modes_and_reject_bad_counts():
    class ModeRecorder(torch.nn.Linear):
        def forward(self, x):
            modes.append(self.training)
            return super().forward(x)

    modes = []
    net = ModeRecorder(2, 2).train()
    pairwise_latencies([net], torch.zeros(1, 2), repeats=1, warmup=0)
    assert modes == [False] and net.training  # timed in eval mode, the train mode restored afterwards
    with pytest.raises(ValueError):
        pairwise_latencies([net], torch.zeros(1, 2), repeats=0)


def test_pairwise_ratio_is_the_median_of_pair_ratios_with_quartiles():
    # pair ratios 0.5, 0.5, 0.5, 5.0: a median of ratios ignores the disturbed pair; a ratio of medians
    # (median(b) / median(a) = 1.5 / 1.5) would not
    stats = pairwise_ratio([1.0, 2.0, 4.0, 1.0], [0.5, 1.0, 2.0, 5.0])
    assert stats.median == 0.5 and stats.n == 4
    assert stats.q1 == 0.5 and stats.q3 == pytest.approx(1.625)  # inclusive quartiles: 0.5 + 0.25 * 4.5
    assert stats.spread == pytest.approx(stats.q3 - stats.q1)
    assert pairwise_ratio([2.0], [1.0]).median == 0.5
    with pytest.raises(ValueError):
        pairwise_ratio([1.0], [1.0, 2.0])


def test_interpolated_latency_brackets_half_the_macs():
    sys.path.insert(0, str(SCRIPTS))
    import update_benchmark_docs as upd

    rows = [dict(model="m", macs_ratio=x, latency_ratio=y) for x, y in ((0.7, 0.9), (0.55, 0.7), (0.35, 0.4))]
    assert upd.interpolated_latency(rows, dict(model="m")) == pytest.approx(0.7 - 0.05 / 0.2 * 0.3)
    assert upd.interpolated_latency(rows[:2], dict(model="m")) is None  # nothing at or below 0.5
    assert upd.interpolated_latency(rows, dict(model="other")) is None


# -- frontier (bench_frontier.py): its pure pieces, no fastai and no archive needed ------------------------
def frontier_modules():
    sys.path.insert(0, str(SCRIPTS))
    import bench_common
    import bench_frontier
    import update_benchmark_docs

    return bench_common, bench_frontier, update_benchmark_docs


def test_bisect_ratio_lands_on_the_budget_from_below():
    common, _, _ = frontier_modules()
    calls = []

    def macs_left(ratio):  # a staircase, as channel counts make it: non-increasing, flat steps
        calls.append(ratio)
        return 1.0 - round(ratio * 20) / 20

    ratio, value = common.bisect_ratio(macs_left, 0.5)
    assert value <= 0.5 and value == macs_left(ratio)
    assert macs_left(ratio - 0.03) > 0.5  # the smallest ratio that meets the budget, to the bisection's resolution
    assert len(calls) <= 16
    assert common.bisect_ratio(lambda r: 0.9, 0.5) == (0.95, 0.9)  # unreachable: the upper bound, reported as is


def test_calibrate_on_fits_moves_a_dry_guess_that_overshoots_to_the_target():
    common, _, _ = frontier_modules()

    def trained_macs(ratio):  # training prunes far more than the dry guess expected (fasterai on CIFAR, 3x)
        return max(0.0, 1.0 - 1.6 * ratio) ** 1.5

    ratio, tried = common.calibrate_on_fits(trained_macs, 1 / 3, 0.78)
    assert tried[0] == (0.78, trained_macs(0.78)) and tried[0][1] < 0.2  # the dry guess lands at 6x, not 3x
    assert abs(trained_macs(ratio) - 1 / 3) <= 0.01 and len(tried) <= 6
    assert ratio == min(tried, key=lambda t: abs(t[1] - 1 / 3))[0]
    ratio, tried = common.calibrate_on_fits(trained_macs, 1 / 3, 0.32)  # near enough already: one fit
    assert len(tried) == 1 and ratio == 0.32


def test_time_hooks_records_each_call_and_keeps_results():
    common, _, _ = frontier_modules()

    class Callback:
        def on_epoch_end(self, x):
            return 2 * x

    cb = Callback()
    times = common.time_hooks(cb, ["on_epoch_end"])
    assert cb.on_epoch_end(3) == 6 and cb.on_epoch_end(1) == 2
    assert len(times["on_epoch_end"]) == 2 and all(t >= 0 for t in times["on_epoch_end"])


def fake_frontier() -> dict:
    def arm(name, system, level, acc, macs, lat):
        return {"arm": name, "system": system, "level": level, "seeds": [0, 1], "acc": [acc, acc],
                "acc_mean": acc, "acc_std": 0.0, "macs_ratio": macs, "params_ratio": macs, "latency_ratio_b1": lat,
                "latency_ratio_b32": lat, "fit_s": 10.0, "prune_s": 0.5, "epochs_trained": 3}

    arms = [arm("dense", "dense", None, 0.99, 1.0, 1.0),
            arm("ours/agp/l2", "ours", "2x", 0.97, 0.5, 0.8), arm("fasterai", "fasterai", "2x", 0.98, 0.49, 0.7),
            arm("torch_pruning/once", "torch_pruning", "2x", 0.96, 0.5, 0.75),
            arm("modelpruning/ln_structured", "modelpruning", "2x", 0.95, 1.0, 1.0),
            arm("ours/agp/l2", "ours", "fasterai", 0.985, 0.75, 0.6),
            arm("fasterai", "fasterai", "fasterai", 0.97, 0.75, 0.9)]
    machine = {"cpu": "CPU", "cpu_count": 2, "threads": 1, "torch": "t", "lightning": "l", "torch_pruning": "tp",
               "cuda": None, "date": "2026-01-01 00:00 UTC"}
    config = {"seeds": [0, 1], "epochs": 3, "optimizer": "adamw", "lr": 0.003, "batch_size": 64, "prune_start": 0,
              "prune_end": 1, "schedules": ["agp"], "criteria": ["l2"], "tp_steps": 3}
    return {"benchmark": "frontier", "config_name": "fake/net", "protocol": "cpu-fake", "machine": machine,
            "config": config, "levels": {"2x": 0.5, "fasterai": 0.75},
            "fasterai": {"fasterai": "0.4.1", "fastai": "2.8"}, "errors": ["fasterai: FAKE-ERROR"], "arms": arms}


def test_frontier_leaders_pick_per_level_by_accuracy_and_by_latency():
    _, _, upd = frontier_modules()
    arms = fake_frontier()["arms"]
    lead = upd.frontier_leaders(arms, "2x")
    assert lead["accuracy"]["arm"] == "fasterai" and lead["latency"]["arm"] == "fasterai"
    lead = upd.frontier_leaders(arms, "fasterai")
    assert lead["accuracy"]["arm"] == "ours/agp/l2" and lead["latency"]["arm"] == "ours/agp/l2"
    assert upd.frontier_leaders(arms, "3x") == {"accuracy": None, "latency": None, "latency_usable": None}
    arms[2]["latency_ratio_b32"] = None  # untimed arms never lead in latency
    assert upd.frontier_leaders(arms, "2x")["latency"]["arm"] == "torch_pruning/once"
    arms[0]["acc_mean"], arms[3]["acc_mean"] = 0.975, 0.10  # a collapsed arm leads in latency
    lead = upd.frontier_leaders(arms, "2x")
    assert lead["latency"]["arm"] == "torch_pruning/once" and lead["latency_usable"]["arm"] == "ours/agp/l2"


def test_frontier_section_is_generated_from_the_json(tmp_path):
    _, _, upd = frontier_modules()
    results = tmp_path / "results"
    results.mkdir()
    (results / "frontier_fake.json").write_text(json.dumps(fake_frontier()))
    (results / "frontier_fake.partial.json").write_text("{not json")  # a cut-short run is skipped
    doc = tmp_path / "bench.md"
    doc.write_text(f"x\n{upd.START}\n{upd.END}\n")
    text = upd.main(["--results", str(results), "--out", str(doc)])
    assert "### Frontier: fake/net (cpu-fake)" in text and "fasterai 0.4.1" in text and "FAKE-ERROR" in text
    assert "**2x fewer MACs** (MACs target 0.500)" in text and "fasterai's own point" in text
    assert "| fasterai | 98.00 ± 0.00 | -1.00 | 0.490 |" in text
    assert "- 2x fewer MACs: accuracy led by `fasterai` (98.00%), batch-32 latency by `fasterai` (0.700" in text
    assert "accuracy led by `ours/agp/l2` (98.50%)" in text
    assert "within 1 point of dense" not in text  # every latency leader here is within it


def test_frontier_arms_are_summarized_and_matched(tmp_path):
    _, fr, _ = frontier_modules()
    runs = [{"seed": s, "acc": a, "macs_ratio": m, "params_ratio": 0.4, "fit_s": 2.0, "prune_s": 0.1,
             "epochs_trained": 6, "latency_ratio_b1": 0.9 if s == 0 else None,
             "latency_ratio_b32": 0.8 if s == 0 else None} for s, a, m in ((0, 0.9, 0.5), (1, 0.8, 0.48))]
    arm = fr.summarize("torch_pruning/once", "torch_pruning", "2x", runs, {"steps": 1})
    assert arm["acc_mean"] == pytest.approx(0.85) and arm["acc_std"] == pytest.approx(0.0707, abs=1e-4)
    assert arm["macs_ratio"] == pytest.approx(0.49) and arm["latency_ratio_b32"] == 0.8  # seed 0's timing
    assert arm["epochs_trained"] == 6 and arm["steps"] == 1 and arm["seeds"] == [0, 1]
    args = fr.parse_args(["--config", "cifar10", "--full", "--model", "resnet56", "--out", str(tmp_path / "f.json")])
    assert (args.epochs, args.optimizer, args.lr, args.train_per_class) == (200, "sgd", 0.1, None)
    assert args.config_name == "cifar10/resnet56/full" and args.protocol == "full"
    args = fr.parse_args(["--config", "digits32", "--epochs", "3"])
    assert args.epochs == 3 and args.model == "resnet18" and set(args.levels) == {"2x", "3x"}


def test_frontier_cifar_resnets():
    sys.path.insert(0, str(SCRIPTS))
    import frontier_pieces as pieces

    net = pieces.make_model("resnet20")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 19 + 2  # 19 3x3 convs, 2 shortcuts
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        pieces.make_model("vgg")


def test_frontier_cifar_loader_reads_a_tiny_archive(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    import tarfile

    import frontier_pieces as pieces
    from PIL import Image

    root = tmp_path / "cifar"
    for split, n in (("train", 3), ("test", 2)):
        for c, cls in enumerate(("airplane", "cat")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), (40 * c, 10 * i, 0)).save(folder / f"{i:04d}.jpg")
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    data = pieces.cifar10(archive, train_per_class=2, val_per_class=None)
    assert data["train_x"].shape == (4, 3, 32, 32) and data["val_x"].shape == (4, 3, 32, 32)
    assert data["train_y"].tolist() == [0, 0, 1, 1] and data["val_y"].tolist() == [0, 0, 1, 1]


def test_frontier_smoke_runs_every_arm_but_fasterai(tmp_path):
    result = run_smoke("bench_frontier.py", tmp_path / "frontier.json")
    check_machine(result)
    arms = {(a["arm"], a["level"]) for a in result["arms"]}
    assert arms == {("dense", None), ("ours/agp/l2", "2x"), ("torch_pruning/once", "2x"),
                    ("torch_pruning/iterative", "2x"), ("modelpruning/ln_structured", "2x"),
                    ("modelpruning/l1_unstructured", "2x"), ("ours/finetune_distill", "2x")}
    for arm in result["arms"]:
        assert len(arm["acc"]) == 2 and arm["latency_ratio_b1"] > 0 and arm["latency_ratio_b32"] > 0
        assert isinstance(arm["load_1min"], float) and arm["load_1min"] >= 0  # what ran beside the timing
        if arm["system"] in ("ours", "torch_pruning"):
            assert 0 < arm["macs_ratio"] < 1 and arm["prune_s"] > 0
            widths = arm["widths"]  # seed 0's model's (the timed one's); the tiny model is 16 and 32 wide
            assert set(widths) == {"c1", "c2", "fc"} and widths["fc"] == 10 and widths["c1"] + widths["c2"] < 48
        else:
            assert arm["macs_ratio"] == pytest.approx(1.0)
    assert result["fasterai"] is None and result["leaders"]["2x"]["accuracy"] is not None
    assert result["plot"] == "frontier.png" and (tmp_path / "frontier.png").is_file()
    assert next(a for a in result["arms"] if a["arm"] == "torch_pruning/once")["epochs_trained"] == 4
    recipe = next(a for a in result["arms"] if a["arm"] == "ours/finetune_distill")
    assert recipe["epochs_trained"] == 4 and recipe["options"] == {"criterion": "l2", "from_dense": True,
                                                                   "distill": True}


def test_frontier_recipes_set_their_own_schedule_or_prune_before_fine_tuning(tmp_path):
    result = run_smoke("bench_frontier.py", tmp_path / "frontier.json", "--skip-peers", "--skip-fasterai",
                       "--recipes", "finetune_once", "pruned_first", "sparse_first")
    arms = {a["arm"]: a for a in result["arms"] if a["level"] == "2x"}
    assert set(arms) == {"ours/agp/l2", "ours/finetune_once", "ours/pruned_first", "ours/sparse_first"}
    once, first, sparse = arms["ours/finetune_once"], arms["ours/pruned_first"], arms["ours/sparse_first"]
    assert once["schedule"] == first["schedule"] == "one_shot" and once["options"]["end_epoch"] == 0
    assert first["options"]["prune_on_fit_start"] is True  # the callback prunes the trained model at fit start
    assert sparse["options"]["sparse_training"] > 0  # the dense fit again, regularised, pruned at its end
    for arm in (once, first, sparse):  # pruned to the 2x budget, trained as long again as the dense model
        assert 0 < arm["macs_ratio"] <= 0.5 + 1e-6 and arm["epochs_trained"] == 4 and arm["prune_s"] > 0


def test_frontier_recipe_rows_compare_each_of_our_arms_with_the_best_and_fastest_peer():
    _, _, upd = frontier_modules()
    arm = lambda name, system, acc, lat, **kw: dict(arm=name, system=system, level="3x", acc_mean=acc,  # noqa: E731
                                                    macs_ratio=0.33, latency_ratio_b32=lat, epochs_trained=3, **kw)
    arms = [arm("ours/agp/l2", "ours", 0.90, 0.66), arm("ours/distill", "ours", 0.93, 0.70, options={"distill": True}),
            arm("torch_pruning/once", "torch_pruning", 0.92, 0.60), arm("fasterai", "fasterai", 0.50, 0.55),
            dict(arm="modelpruning/l1_unstructured", system="modelpruning", level="3x", acc_mean=0.94,
                 macs_ratio=1.0, latency_ratio_b32=1.0, epochs_trained=3)]
    rows = {r[0]: r for r in upd.recipe_rows(arms, ["3x"])}
    assert set(rows) == {"ours/agp/l2", "ours/distill"}
    distill = rows["ours/distill"]
    # masked ModelPruning (dense MACs) is not a peer at equal MACs: the most accurate is Torch-Pruning's arm
    assert distill[4] == "torch_pruning/once (92.00)" and distill[5] == "yes"
    assert rows["ours/agp/l2"][5] == "no"
    assert distill[7] == "fasterai (0.550)" and distill[8] == "no"
    assert distill[9] == "+3.00" and distill[10] == pytest.approx(0.33 / 0.70) and distill[2] == "distill=True"


# -- widths (bench_widths.py): what hand-set ResNet-20 widths cost ------------------------------------------
def test_widths_smoke_times_hand_set_resnet20_widths(tmp_path):
    result = run_smoke("bench_widths.py", tmp_path / "widths.json")
    check_machine(result)
    assert {(k["size"], k["channels"]) for k in result["kernels"]} == {(32, 4), (32, 8), (16, 8), (16, 12),
                                                                       (8, 12), (8, 16)}
    assert all(k["ms"] > 0 for k in result["kernels"])
    half, slim = result["configs"]  # every width halved; 3/4 of every width
    assert half["stream"] == half["inner"] == [8, 16, 32] and slim["inner"] == [12, 24, 48]
    assert 0.25 < half["macs_ratio"] < 0.27  # convs at a quarter; the stem and the head at a half
    assert 0.5625 < slim["macs_ratio"] < 0.58
    for row in (half, slim):
        assert row["latency_ratio"] > 0 and row["efficiency"] == pytest.approx(row["macs_ratio"] / row["latency_ratio"])
    assert result["plot"] == "widths.png" and (tmp_path / "widths.png").is_file()


def test_thinned_resnet20_has_the_widths_asked_and_runs():
    sys.path.insert(0, str(SCRIPTS))
    from bench_widths import thinned_resnet20

    net = thinned_resnet20((12, 24, 40), (4, 8, 16))
    assert [b.conv1.out_channels for b in net.layer3] == [16, 16, 16]
    assert [b.conv2.out_channels for b in net.layer2] == [24, 24, 24]
    assert net.layer2[0].downsample[0].in_channels == 12 and net.layer2[0].conv1.stride == (2, 2)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


# -- costs (bench_costs.py): are timed channel costs repeatable? ---------------------------------------------
def test_costs_smoke_reports_each_calls_cost_per_layer(tmp_path):
    result = run_smoke("bench_costs.py", tmp_path / "costs.json")
    check_machine(result)
    assert result["kind"] == "latency_per_mac" and result["unit"] == 8 and result["spans"] == "shares"
    layers = {row["layer"]: row for row in result["layers"]}
    assert set(layers) == {"c1", "c2", "fc"}  # the tiny model's conv and linear layers
    for row in layers.values():
        assert len(row["out_us"]) == 2 and all(v > 0 for v in row["out_us"])
        assert row["spread"] == pytest.approx(max(row["out_us"]) / min(row["out_us"]))
        assert all(v is not None and v > 0 for v in row["out_ps_per_mac"])
    assert result["median_spread"] >= 1 and result["plot"] == "costs.png" and (tmp_path / "costs.png").is_file()
