"""Structured configs (schemas) of the Hydra app, registered in Hydra's ConfigStore.

Types are checked by Hydra at compose time (``epochs=abc`` fails there, naming the key); unknown group
options fail there too (``schedule=nope``). Hydra has no range checks, so :func:`validate` turns the
composed config into these dataclasses, whose ``__post_init__`` rejects out-of-range values
(``ratio=1.5``) with the key and the allowed range, before anything is built.

>>> register_configs()
>>> validate_values(TrainConfig(ratio=0.5))
>>> validate_values(TrainConfig(ratio=1.5))
Traceback (most recent call last):
...
ValueError: ratio=1.5 is invalid; it must lie in [0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .budget import TARGETS
from .criteria import CRITERIA
from .safety import ON_UNSAFE
from .schedules import SCHEDULES


@dataclass
class ScheduleConfig:
    """``schedule`` group: a schedule by name, bound by ``lightning_prune.get_schedule``."""

    _target_: str = "lightning_prune.get_schedule"
    schedule: str = "agp"
    n_steps: int | None = None


@dataclass
class CriterionConfig:
    """``criterion`` group: an importance by name, built by ``lightning_prune.get_criterion``."""

    _target_: str = "lightning_prune.get_criterion"
    criterion: str = "l2"
    seed: int = 0


@dataclass
class TrainConfig:
    """Top-level keys of ``conf/train.yaml``; groups are typed by their own schemas or left open."""

    ratio: float = 0.4
    context: str = "global"
    seed: int = 0
    epochs: int = 10
    ckpt_path: str | None = None
    start_epoch: int = 0
    end_epoch: int | None = None
    round_to: int | None = None
    max_layer_ratio: float = 0.9
    label_smoothing: float = 0.0
    latency_repeats: int = 20
    target: str = "channels"
    budget: float | None = None
    ratio_overrides: Any = None  # a mapping of pattern -> ratio; open so that a command line can set it whole
    on_unsafe: str = "ignore"
    graph_build_warn_s: float = 60.0
    model: Any = MISSING
    data: Any = MISSING
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    trainer: Any = MISSING
    optimizer: Any = MISSING
    lr_scheduler: Any = MISSING
    pruning: Any = MISSING


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid; it must {allowed}")


def validate_values(cfg: TrainConfig) -> None:
    """Range checks Hydra cannot express; the message names the key and the allowed values."""
    _check(0.0 <= cfg.ratio < 1.0, "ratio", cfg.ratio, "lie in [0, 1)")
    _check(cfg.context in ("global", "local"), "context", cfg.context, "be one of ['global', 'local']")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "be >= 1")
    _check(0 <= cfg.start_epoch < cfg.epochs, "start_epoch", cfg.start_epoch, f"lie in [0, {cfg.epochs - 1}]")
    _check(
        cfg.end_epoch is None or cfg.start_epoch <= cfg.end_epoch < cfg.epochs,
        "end_epoch",
        cfg.end_epoch,
        f"be null or lie in [{cfg.start_epoch}, {cfg.epochs - 1}]",
    )
    _check(0.0 < cfg.max_layer_ratio <= 1.0, "max_layer_ratio", cfg.max_layer_ratio, "lie in (0, 1]")
    _check(cfg.round_to is None or cfg.round_to >= 1, "round_to", cfg.round_to, "be null or >= 1")
    _check(cfg.latency_repeats >= 1, "latency_repeats", cfg.latency_repeats, "be >= 1")
    _check(cfg.target in TARGETS, "target", cfg.target, f"be one of {list(TARGETS)}")
    _check(cfg.budget is None or 0.0 < cfg.budget < 1.0, "budget", cfg.budget, "be null or lie in (0, 1)")
    _check(
        (cfg.budget is None) == (cfg.target == "channels"),
        "budget",
        cfg.budget,
        "be set (in (0, 1)) exactly when target is macs, params or latency",
    )
    for pattern, value in (cfg.ratio_overrides or {}).items():
        _check(0.0 <= value < 1.0, f"ratio_overrides[{pattern!r}]", value, "lie in [0, 1)")
    _check(cfg.on_unsafe in ON_UNSAFE, "on_unsafe", cfg.on_unsafe, f"be one of {list(ON_UNSAFE)}")
    _check(cfg.graph_build_warn_s > 0, "graph_build_warn_s", cfg.graph_build_warn_s, "be seconds > 0")
    _check(cfg.schedule.schedule in SCHEDULES, "schedule", cfg.schedule.schedule, f"be one of {sorted(SCHEDULES)}")
    _check(
        cfg.criterion.criterion in CRITERIA, "criterion", cfg.criterion.criterion, f"be one of {sorted(CRITERIA)}"
    )


def validate(cfg: DictConfig) -> None:
    """Check a composed app config against :class:`TrainConfig` and its value ranges."""
    schema = OmegaConf.structured(TrainConfig)
    typed = OmegaConf.to_object(OmegaConf.merge(schema, cfg))
    validate_values(typed)


def ddp_strategy_for(mode: object) -> str:
    """The DDP strategy for a Hydra run mode: ``ddp`` normally, ``ddp_spawn`` inside a multirun.

    Lightning's ``ddp`` re-launches the script for every rank with the command line's overrides; inside a
    Hydra multirun the re-launched ranks get the wrong run directory and the whole sweep's arguments
    (broken upstream), while spawned ranks stay in the job's process tree.

    >>> ddp_strategy_for("RunMode.MULTIRUN"), ddp_strategy_for("RUN")
    ('ddp_spawn', 'ddp')
    """
    return "ddp_spawn" if "MULTIRUN" in str(mode) else "ddp"


def register_configs() -> None:
    """Register the schemas so that ``conf/`` can name them in its defaults lists, and the app's resolver."""
    if not OmegaConf.has_resolver("lp_ddp_strategy"):
        OmegaConf.register_new_resolver("lp_ddp_strategy", ddp_strategy_for)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="schedule", name="schedule_schema", node=ScheduleConfig)
    store.store(group="criterion", name="criterion_schema", node=CriterionConfig)
