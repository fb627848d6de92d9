r"""Optimizers for phase retrieval (``torch.optim.Optimizer`` subclasses) and the algorithm registry.

* :class:`GradientDescent` and its named variants :class:`WirtingerFlow`,
  :class:`TruncatedWirtingerFlow`, :class:`ReshapedWirtingerFlow`, :class:`AmplitudeFlow`,
  :class:`TruncatedAmplitudeFlow`, :class:`ReweightedAmplitudeFlow` — pair them with the matching
  loss of :mod:`phasetorch.losses`;
* :class:`LBFGS` — batched L-BFGS (per-sample memory and line search);
* :class:`GerchbergSaxton`, :class:`HybridInputOutput` — projection algorithms (need ``op``, ``y``);
* step rules :class:`Constant`, :class:`Schedule`, :class:`WFRamp`, :class:`Armijo`,
  :class:`BarzilaiBorwein` (:mod:`phasetorch.optim.steps`);
* :data:`PRESETS` — the named algorithms of :func:`phasetorch.reconstruct`.

All act on one tensor with ``batch_dims`` leading batch dimensions and keep every step size and
memory per sample. Usage in a plain torch loop::

    x = x0.clone().requires_grad_(True)
    loss = phasetorch.losses.IntensityLoss(op)
    opt = phasetorch.optim.WirtingerFlow([x], batch_dims=1)
    for _ in range(500):
        def closure():
            opt.zero_grad()
            f = loss(x, y)
            f.sum().backward()
            return f
        opt.step(closure)
"""

from .amplitude import AmplitudeFlow, ReshapedWirtingerFlow, ReweightedAmplitudeFlow, TruncatedAmplitudeFlow
from .base import PhaseOptimizer, backtracking
from .gradient import GradientDescent
from .lbfgs import LBFGS
from .presets import PRESETS, Preset, get_preset, rwf_truncation
from .projections import GerchbergSaxton, HybridInputOutput, tight_frame_constant
from .steps import Armijo, BarzilaiBorwein, Constant, Schedule, StepRule, WFRamp, make_step_rule
from .wirtinger import TruncatedWirtingerFlow, WirtingerFlow

__all__ = ["PhaseOptimizer", "GradientDescent", "WirtingerFlow", "TruncatedWirtingerFlow", "AmplitudeFlow",
           "ReshapedWirtingerFlow", "TruncatedAmplitudeFlow", "ReweightedAmplitudeFlow", "LBFGS",
           "GerchbergSaxton", "HybridInputOutput", "StepRule", "Constant", "Schedule", "WFRamp", "Armijo",
           "BarzilaiBorwein", "make_step_rule", "PRESETS", "Preset", "get_preset", "rwf_truncation",
           "backtracking", "tight_frame_constant"]
