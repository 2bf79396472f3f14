"""``SessionCallback``: what :class:`~lightning_prune.PruningCallback` and
:class:`~lightning_prune.sparsify.SparsifyCallback` share in Lightning: one engine session per fit, its state
kept until the session exists, and the fit's example inputs and seed.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from .engine.inputs import resolve_example_inputs
from .lightning_compat import first_training_batch


class SessionCallback(Callback):
    """What both callbacks share: one engine session per fit (``self.session``, with ``state_dict`` and
    ``load_state_dict``), its state kept until the session exists, and the fit's example inputs and seed.
    Subclasses set ``self.spec`` (with ``example_inputs`` and ``seed``) and build the session in ``setup``."""

    spec: Any
    session: Any

    def __init__(self) -> None:
        super().__init__()
        self.session = None
        self._state: dict[str, Any] = {}  # loaded before the session exists

    def _fit_inputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """The one-sample example inputs: the argument, ``example_input_array`` or the first training batch."""
        return resolve_example_inputs(
            self.spec.example_inputs, pl_module.example_input_array, partial(first_training_batch, trainer)
        )

    def _fit_seed(self) -> int:
        """The argument's seed, else the seed of ``seed_everything`` (or 0)."""
        return self.spec.seed if self.spec.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    @override
    def state_dict(self) -> dict[str, Any]:
        return self._state if self.session is None else self.session.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = dict(state_dict)
        if self.session is not None:
            self.session.load_state_dict(self._state)
