"""Structured configs (schemas) of the Hydra app, registered in Hydra's ConfigStore.

The callback's keys are not declared here: they come from its one spec,
:class:`~lightning_prune.engine.spec.PruningSpec` (every field with an ``app`` type is a top-level key).
Types are checked by Hydra at compose time (``epochs=abc`` fails there, naming the key); unknown group
options fail there too (``schedule=nope``). Hydra has no range checks, so :func:`validate` builds the spec,
whose checks reject out-of-range values (``ratio=1.5``) with the key and the allowed range, before anything
is built.

>>> register_configs()
>>> validate_values(TrainConfig(ratio=0.5)).ratio
0.5
>>> validate_values(TrainConfig(ratio=1.5))
Traceback (most recent call last):
...
ValueError: ratio=1.5 is invalid; it must lie in [0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from ..callback import PruningCallback
from ..engine.spec import PruningSpec, app_fields


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


def _app_config_fields() -> list[tuple[str, Any, Any]]:
    """The app's own keys, then every :class:`~lightning_prune.engine.spec.PruningSpec` field the app exposes."""
    own: list[tuple[str, Any, Any]] = [
        ("seed", int, field(default=0)),
        ("epochs", int, field(default=10)),
        ("ckpt_path", str | None, field(default=None)),
        ("label_smoothing", float, field(default=0.0)),
        ("latency_repeats", int, field(default=20)),
        ("overwrite", bool, field(default=False)),
    ]
    spec = [
        (name, kind,
         field(default_factory=lambda d=default: list(d)) if isinstance(default, list) else field(default=default))
        for name, (kind, default) in app_fields().items()
    ]
    groups: list[tuple[str, Any, Any]] = [
        ("model", Any, field(default=MISSING)),
        ("data", Any, field(default=MISSING)),
        ("schedule", ScheduleConfig, field(default_factory=ScheduleConfig)),
        ("criterion", CriterionConfig, field(default_factory=CriterionConfig)),
        ("trainer", Any, field(default=MISSING)),
        ("optimizer", Any, field(default=MISSING)),
        ("lr_scheduler", Any, field(default=MISSING)),
    ]
    return own + spec + groups


TrainConfig = make_dataclass("TrainConfig", _app_config_fields())
TrainConfig.__doc__ = """Top-level keys of ``conf/train.yaml``: the app's own, the callback's, the groups."""


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid; it must {allowed}")


def pruning_spec(cfg: Any) -> PruningSpec:
    """The callback's spec from a (typed) app config; its checks name the bad key and the allowed values."""
    values = {name: getattr(cfg, name) for name in app_fields()}
    if values["ratio_overrides"] is not None:
        values["ratio_overrides"] = dict(values["ratio_overrides"])
    return PruningSpec(schedule=cfg.schedule.schedule, criterion=cfg.criterion.criterion, **values)


def validate_values(cfg: Any) -> PruningSpec:
    """Range checks Hydra cannot express: the app's own, then the callback's spec; returns the spec."""
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "be >= 1")
    _check(0 <= cfg.start_epoch < cfg.epochs, "start_epoch", cfg.start_epoch, f"lie in [0, {cfg.epochs - 1}]")
    _check(
        cfg.end_epoch is None or cfg.start_epoch <= cfg.end_epoch < cfg.epochs,
        "end_epoch",
        cfg.end_epoch,
        f"be null or lie in [{cfg.start_epoch}, {cfg.epochs - 1}]",
    )
    _check(cfg.latency_repeats >= 1, "latency_repeats", cfg.latency_repeats, "be >= 1")
    return pruning_spec(cfg)


def validate(cfg: DictConfig) -> PruningSpec:
    """Check a composed app config against :data:`TrainConfig` and its value ranges; returns the callback's spec."""
    known = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:  # e.g. a mistyped `+ignored_layer=[...]`: Hydra accepts any key added with +
        raise ValueError(f"unknown top-level key(s) {unknown}; the keys are {known}")
    schema = OmegaConf.structured(TrainConfig)
    typed = OmegaConf.to_object(OmegaConf.merge(schema, cfg))
    return validate_values(typed)


def build_callback(cfg: DictConfig) -> PruningCallback:
    """The app's :class:`~lightning_prune.PruningCallback`: every spec field from its top-level key, the
    schedule and criterion from their config groups."""
    validate(cfg)
    values = {name: cfg[name] for name in app_fields()}
    values["ignored_layers"] = list(values["ignored_layers"] or [])
    if values["ratio_overrides"] is not None:
        values["ratio_overrides"] = OmegaConf.to_container(values["ratio_overrides"])
    return PruningCallback(schedule=instantiate(cfg.schedule), criterion=instantiate(cfg.criterion), **values)


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
    # schemas live in their own group, so that Hydra's lists of schedule and criterion choices hold only options
    store.store(group="lp_schema", name="schedule", node=ScheduleConfig)
    store.store(group="lp_schema", name="criterion", node=CriterionConfig)
