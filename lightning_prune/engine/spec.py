"""The one specification of :class:`~lightning_prune.PruningCallback`'s parameters.

Each field is declared once here, with its default and its check. The callback validates its arguments by
building a :class:`PruningSpec`; the Hydra app derives its top-level config keys from the fields that carry
an ``app`` type in their metadata (:func:`app_fields`). A new parameter is added here (plus the docs).

>>> spec = PruningSpec(ratio=0.5, schedule="linear")
>>> spec.prunes_anything, spec.goal()
(True, '50% of channels')
>>> PruningSpec(ratio=1.5)
Traceback (most recent call last):
...
ValueError: ratio=1.5 is invalid; it must lie in [0, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .budget import BUDGET_TARGETS, TARGETS
from .criteria import CRITERIA, Importance
from .safety import ON_UNSAFE
from .schedules import SCHEDULES, Schedule

CONTEXTS = ("global", "local")
OPTIMIZER_STATES = ("slice", "reset")


def _app(kind: Any) -> dict[str, Any]:
    """Field metadata: the field is a top-level key of the Hydra app, of OmegaConf type ``kind``."""
    return {"app": kind}


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _invalid(name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is invalid; it must {allowed}")


@dataclass
class PruningSpec:
    """What to prune, when and how: the arguments of :class:`~lightning_prune.PruningCallback`, checked.

    See the callback's docstring for the meaning of each field.
    """

    ratio: float = field(default=0.4, metadata=_app(float))
    schedule: str | Schedule = "agp"  # the app builds it from its ``schedule`` config group
    criterion: str | Importance = "l2"  # the app builds it from its ``criterion`` config group
    context: str = field(default="global", metadata=_app(str))
    start_epoch: int = field(default=0, metadata=_app(int))
    end_epoch: int | None = field(default=None, metadata=_app(int | None))
    example_inputs: Any = None
    ignored_layers: Sequence[str] = field(default=(), metadata=_app(list[str]))
    round_to: int | None = field(default=None, metadata=_app(int | None))
    max_layer_ratio: float = field(default=0.9, metadata=_app(float))
    seed: int | None = None  # the app seeds everything with its own ``seed`` key
    pruner_kwargs: dict[str, Any] | None = None
    verbose: bool = field(default=True, metadata=_app(bool))
    target: str = field(default="channels", metadata=_app(str))
    budget: float | None = field(default=None, metadata=_app(float | None))
    ratio_overrides: Mapping[str, float] | None = field(default=None, metadata=_app(Any))
    on_unsafe: str = field(default="ignore", metadata=_app(str))
    graph_build_warn_s: float = field(default=60.0, metadata=_app(float))
    optimizer_state: str = field(default="slice", metadata=_app(str))

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_numbers()
        self._check_budget()
        if self.ratio_overrides is not None and not isinstance(self.ratio_overrides, Mapping):
            raise _invalid("ratio_overrides", self.ratio_overrides, "map module-name patterns to ratios")
        for pattern, value in (self.ratio_overrides or {}).items():
            if not isinstance(pattern, str) or not _number(value) or not 0.0 <= value < 1.0:
                raise ValueError(
                    f"ratio_overrides[{pattern!r}]={value!r} is invalid; patterns must be strings and ratios "
                    "must lie in [0, 1)"
                )
        if isinstance(self.ignored_layers, str):
            self.ignored_layers = [self.ignored_layers]
        if not all(isinstance(p, str) for p in self.ignored_layers):
            raise _invalid("ignored_layers", self.ignored_layers, "be a list of module-name patterns (strings)")
        # normalised copies: plain types, never the caller's objects
        self.ratio = float(self.ratio)
        self.max_layer_ratio = float(self.max_layer_ratio)
        self.graph_build_warn_s = float(self.graph_build_warn_s)
        self.budget = None if self.budget is None else float(self.budget)
        self.ignored_layers = [str(p) for p in self.ignored_layers]
        self.ratio_overrides = {str(k): float(v) for k, v in (self.ratio_overrides or {}).items()}
        self.pruner_kwargs = dict(self.pruner_kwargs or {})

    def _check_choices(self) -> None:
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(f"optimizer_state={self.optimizer_state!r} is unknown; choose 'slice' or 'reset'")
        if not callable(self.schedule) and self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule={self.schedule!r} is unknown; choose one of {sorted(SCHEDULES)} or a callable"
            )
        if not isinstance(self.criterion, Importance) and self.criterion not in CRITERIA:
            raise ValueError(
                f"criterion={self.criterion!r} is unknown; choose one of {sorted(CRITERIA)} "
                "or a torch_pruning.importance.Importance instance"
            )
        if self.context not in CONTEXTS:
            raise ValueError(f"context={self.context!r} is unknown; choose one of {list(CONTEXTS)}")
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r} is unknown; choose one of {list(TARGETS)}")
        if self.on_unsafe not in ON_UNSAFE:
            raise ValueError(f"on_unsafe={self.on_unsafe!r} is unknown; choose one of {list(ON_UNSAFE)}")

    def _check_numbers(self) -> None:
        if not _number(self.ratio) or not 0.0 <= self.ratio < 1.0:
            raise _invalid("ratio", self.ratio, "lie in [0, 1)")
        if isinstance(self.start_epoch, bool) or not isinstance(self.start_epoch, int) or self.start_epoch < 0:
            raise _invalid("start_epoch", self.start_epoch, "be an integer >= 0")
        if self.end_epoch is not None and (
            isinstance(self.end_epoch, bool) or not isinstance(self.end_epoch, int) or self.end_epoch < self.start_epoch
        ):
            raise _invalid("end_epoch", self.end_epoch, f"be an integer >= start_epoch ({self.start_epoch})")
        if not _number(self.max_layer_ratio) or not 0.0 < self.max_layer_ratio <= 1.0:
            raise _invalid("max_layer_ratio", self.max_layer_ratio, "lie in (0, 1]")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise _invalid("round_to", self.round_to, "be None or an integer >= 1")
        if not _number(self.graph_build_warn_s) or not self.graph_build_warn_s > 0:
            raise _invalid("graph_build_warn_s", self.graph_build_warn_s, "be seconds > 0")

    def _check_budget(self) -> None:
        if self.budget is not None and (not _number(self.budget) or not 0.0 < self.budget < 1.0):
            raise _invalid("budget", self.budget, f"lie in (0, 1), a fraction of the dense model's {self.target}")
        if self.target == "channels" and self.budget is not None:
            raise ValueError(
                f"budget={self.budget!r} needs a budget target; set target to one of {list(BUDGET_TARGETS)} "
                "(target='channels' prunes to ratio)"
            )
        if self.target != "channels" and self.budget is None:
            raise ValueError(
                f"target={self.target!r} needs budget in (0, 1), e.g. budget=0.5 for half the dense model's "
                f"{self.target}; got budget=None"
            )

    # -- derived ----------------------------------------------------------------------------------
    @property
    def by_fraction(self) -> bool:
        """Whether progress is the schedule's value rather than a channel ratio (budgets, overrides)."""
        return self.budget is not None or bool(self.ratio_overrides)

    @property
    def prunes_anything(self) -> bool:
        """False for a setting that would prune nothing (``ratio=0`` with no override or budget)."""
        return self.by_fraction or self.ratio > 0

    def goal(self) -> str:
        """The final goal in words, for logs."""
        if self.budget is None:
            return f"{self.ratio:.0%} of channels"
        return f"{self.budget:.0%} of dense {self.target}"


def app_fields() -> dict[str, Any]:
    """The fields the Hydra app exposes as top-level keys: name -> (OmegaConf type, default).

    >>> app_fields()["ratio"]
    (<class 'float'>, 0.4)
    """
    return {
        f.name: (f.metadata["app"], list(f.default) if isinstance(f.default, tuple) else f.default)
        for f in fields(PruningSpec)
        if "app" in f.metadata
    }
