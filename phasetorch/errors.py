"""Exceptions raised by phasetorch's solvers."""

from __future__ import annotations

from typing import Any, Optional


class DivergenceError(RuntimeError):
    """An iterative solver blew up: a non-finite loss or iterate, or a loss above 10⁶ × its initial value.

    The message names the step size to reduce. Attributes (``None`` where unknown):

    ``algorithm``: the preset name; ``iteration``: the iteration at which the blow-up was detected;
    ``sample``: the flat index of the first offending sample of the batch; ``step``: the step
    parameter in force (a number, a rule name, or a description of the schedule); ``loss``,
    ``initial_loss``: that sample's values; ``log``: the :class:`phasetorch.logs.TrainingLog`
    recorded up to the failure; ``x``: the last finite iterate (batch) before the blow-up.
    """

    def __init__(self, message: str, *, algorithm: Optional[str] = None, iteration: Optional[int] = None,
                 sample: Optional[int] = None, step: Any = None, loss: Optional[float] = None,
                 initial_loss: Optional[float] = None, log: Any = None, x: Any = None) -> None:
        super().__init__(message)
        self.algorithm = algorithm
        self.iteration = iteration
        self.sample = sample
        self.step = step
        self.loss = loss
        self.initial_loss = initial_loss
        self.log = log
        self.x = x


__all__ = ["DivergenceError"]
