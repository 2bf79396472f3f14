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
from ..distill import DistillationCallback
from ..engine.spec import DistillSpec, PruningSpec, SparsifySpec, app_fields
from ..sparsify import SparsifyCallback

MODES = ("prune", "sparsify")


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


def _spec_fields(spec: type) -> list[tuple[str, Any, Any]]:
    """The dataclass fields of ``spec``'s app keys, with their defaults."""
    return [
        (name, kind,
         field(default_factory=lambda d=default: list(d)) if isinstance(default, list) else field(default=default))
        for name, (kind, default) in app_fields(spec).items()
    ]


SparsifyConfig = make_dataclass(
    "SparsifyConfig", [*_spec_fields(SparsifySpec), ("compact", bool, field(default=False))]
)
SparsifyConfig.__doc__ = """The ``sparsify`` node (``mode=sparsify``): every SparsifyCallback key from its spec,
:class:`~lightning_prune.engine.spec.SparsifySpec`, and ``compact`` (remove the zeroed channels after fit)."""


DistillConfig = make_dataclass(
    "DistillConfig", [("enabled", bool, field(default=False)), *_spec_fields(DistillSpec)]
)
DistillConfig.__doc__ = """The ``distill`` node: ``distill.enabled=true`` adds a DistillationCallback (teacher: a frozen
copy of the model at fit start, e.g. the pretrained weights) with every key of its spec,
:class:`~lightning_prune.engine.spec.DistillSpec`."""


def _app_config_fields() -> list[tuple[str, Any, Any]]:
    """The app's own keys, then every :class:`~lightning_prune.engine.spec.PruningSpec` field the app exposes."""
    own: list[tuple[str, Any, Any]] = [
        ("mode", str, field(default="prune")),
        ("seed", int, field(default=0)),
        ("epochs", int, field(default=10)),
        ("ckpt_path", str | None, field(default=None)),
        ("label_smoothing", float, field(default=0.0)),
        ("latency_repeats", int, field(default=20)),
        ("overwrite", bool, field(default=False)),
    ]
    spec = _spec_fields(PruningSpec)
    groups: list[tuple[str, Any, Any]] = [
        ("model", Any, field(default=MISSING)),
        ("data", Any, field(default=MISSING)),
        ("schedule", ScheduleConfig, field(default_factory=ScheduleConfig)),
        ("criterion", CriterionConfig, field(default_factory=CriterionConfig)),
        ("sparsify", SparsifyConfig, field(default_factory=SparsifyConfig)),
        ("distill", DistillConfig, field(default_factory=DistillConfig)),
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


def sparsify_spec(cfg: Any) -> SparsifySpec:
    """The SparsifyCallback's spec from a (typed) app config: the ``sparsify`` node and the schedule group."""
    values = {name: getattr(cfg.sparsify, name) for name in app_fields(SparsifySpec)}
    return SparsifySpec(schedule=cfg.schedule.schedule, **values)


def _check_epochs(node: Any, epochs: int, prefix: str = "") -> None:
    start, end = node.start_epoch, node.end_epoch
    _check(0 <= start < epochs, f"{prefix}start_epoch", start, f"lie in [0, {epochs - 1}]")
    allowed = f"be null or lie in [{start}, {epochs - 1}]"
    _check(end is None or start <= end < epochs, f"{prefix}end_epoch", end, allowed)


def validate_values(cfg: Any) -> PruningSpec | SparsifySpec:
    """Range checks Hydra cannot express: the app's own, then the spec of the mode's callback; returns it."""
    _check(cfg.mode in MODES, "mode", cfg.mode, f"be one of {list(MODES)}")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "be >= 1")
    _check(cfg.latency_repeats >= 1, "latency_repeats", cfg.latency_repeats, "be >= 1")
    if cfg.distill.enabled:  # its own checks, named as the distill.* keys
        try:
            DistillSpec(**{name: getattr(cfg.distill, name) for name in app_fields(DistillSpec)})
        except ValueError as err:
            raise ValueError(f"distill.{err}") from err
    if cfg.mode == "sparsify":
        _check_epochs(cfg.sparsify, cfg.epochs, "sparsify.")
        return sparsify_spec(cfg)
    _check_epochs(cfg, cfg.epochs)
    return pruning_spec(cfg)


def validate(cfg: DictConfig) -> PruningSpec | SparsifySpec:
    """Check a composed app config against :data:`TrainConfig` and its value ranges; returns the spec of the
    mode's callback."""
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


def build_sparsify_callback(cfg: DictConfig) -> SparsifyCallback:
    """The app's :class:`~lightning_prune.SparsifyCallback` (``mode=sparsify``): every key of the ``sparsify``
    node but ``compact``, the schedule from its config group."""
    validate(cfg)
    values = {name: cfg.sparsify[name] for name in app_fields(SparsifySpec)}
    values["ignored_layers"] = list(values["ignored_layers"] or [])
    return SparsifyCallback(schedule=instantiate(cfg.schedule), **values)


def build_distill_callbacks(cfg: DictConfig) -> list[DistillationCallback]:
    """``[DistillationCallback(...)]`` when ``distill.enabled``, else ``[]``: the student is the app's
    ``ClassifierModule.model``, the teacher its copy at fit start."""
    if not cfg.distill.enabled:
        return []
    return [DistillationCallback(student="model", **{name: cfg.distill[name] for name in app_fields(DistillSpec)})]


def build_mode_callback(cfg: DictConfig) -> PruningCallback | SparsifyCallback:
    """The callback of the configured ``mode``."""
    return build_sparsify_callback(cfg) if cfg.mode == "sparsify" else build_callback(cfg)


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
