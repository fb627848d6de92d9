r"""The optimization engine: algorithms as tensor-state step functions, their presets, torch.optim adapters.

* :mod:`~phasetorch.optim.engine` — the :class:`Algorithm` protocol (``init_state`` / ``step``
  over a dict of tensors), :class:`StepContext`, :class:`StepResult`;
* algorithms — :class:`GradientAlgorithm` (any :mod:`~phasetorch.optim.steps` rule: :class:`Constant`,
  :class:`Schedule`, :class:`WFRamp`, :class:`Armijo`, :class:`BarzilaiBorwein`),
  :class:`LBFGSAlgorithm`, :class:`ErrorReduction`, :class:`HybridInputOutputAlgorithm`;
* :data:`PRESETS` — the named algorithms of :func:`phasetorch.reconstruct`, the one place for defaults;
* ``torch.optim.Optimizer`` adapters (:mod:`~phasetorch.optim.adapter`) for your own loops:
  :class:`GradientDescent`, :class:`WirtingerFlow`, :class:`TruncatedWirtingerFlow`,
  :class:`ReshapedWirtingerFlow`, :class:`AmplitudeFlow`, :class:`TruncatedAmplitudeFlow`,
  :class:`ReweightedAmplitudeFlow`, :class:`LBFGS`, :class:`GerchbergSaxton`, :class:`HybridInputOutput`
  (μ is ``param_groups[0]["lr"]``; state is tensors; schedulers work).
"""

from .adapter import (LBFGS, AmplitudeFlow, GerchbergSaxton, GradientDescent, HybridInputOutput, PhaseOptimizer,
                      ReshapedWirtingerFlow, ReweightedAmplitudeFlow, TruncatedAmplitudeFlow, TruncatedWirtingerFlow,
                      WirtingerFlow)
from .base import backtracking
from .engine import Algorithm, StepContext, StepResult
from .gradient import GradientAlgorithm
from .lbfgs import LBFGSAlgorithm
from .presets import PRESETS, Preset, get_preset, rwf_truncation
from .projections import Constraint, ErrorReduction, HybridInputOutputAlgorithm, tight_frame_constant
from .steps import Armijo, BarzilaiBorwein, Constant, Schedule, StepRule, WFRamp, make_step_rule, wf_ramp

__all__ = ["Algorithm", "StepContext", "StepResult", "GradientAlgorithm", "LBFGSAlgorithm", "ErrorReduction",
           "HybridInputOutputAlgorithm", "Constraint", "PhaseOptimizer", "GradientDescent", "WirtingerFlow",
           "TruncatedWirtingerFlow", "AmplitudeFlow", "ReshapedWirtingerFlow", "TruncatedAmplitudeFlow",
           "ReweightedAmplitudeFlow", "LBFGS", "GerchbergSaxton", "HybridInputOutput", "StepRule", "Constant",
           "Schedule", "WFRamp", "Armijo", "BarzilaiBorwein", "make_step_rule", "wf_ramp", "PRESETS", "Preset",
           "get_preset", "rwf_truncation", "backtracking", "tight_frame_constant"]
