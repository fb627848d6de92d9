r"""High-dimensional theory of spectral-initialised gradient descent for phase retrieval.

Proportional limit n, m → ∞ with δ = m/n fixed, Gaussian measurements, ‖x*‖ = 1 (theory.md;
Chen & Shen 2025, arXiv 2509.23527; Lu & Li 2017; Mondelli & Montanari 2018; Luo, Alghamdi & Lu 2019):

* :func:`spectral_limits`, :func:`spectral_overlap`, :func:`spectral_threshold` — the spectral
  estimator (Lu–Li formulas by quadrature);
* :func:`dmft` → :class:`Prediction` — the whole GD trajectory (dynamical mean-field theory);
* :func:`fixed_point` — its long-time limit;
* :func:`simulate` — finite-d simulations (many seeds in one batch) to check it against;
* :func:`overlay` (figure) and :func:`compare` (gaps, z-scores, success rate, verdict), which first
  refuses logs the prediction does not describe (:func:`check_describes`).

The DMFT is split into :mod:`.model` (single-index models, the start's law), :mod:`.fields`
(Gaussian fields and their basis), :mod:`.responses` (exact pathwise responses) and :mod:`.solver`
(the time-stepping solver, :func:`~phasetorch.theory.solver.solve_dmft` and :func:`dmft`).
"""

from .spectral import SpectralLimits, spectral_limits, spectral_overlap, spectral_threshold, rank_threshold
from .fixed_point import FixedPoint, fixed_point
from .prediction import Prediction
from .solver import dmft
from .simulate import simulate
from .compare import Comparison, check_describes, compare
from .overlay import overlay

__all__ = ["spectral_limits", "spectral_overlap", "spectral_threshold", "rank_threshold", "SpectralLimits",
           "fixed_point", "FixedPoint", "dmft", "Prediction", "simulate", "overlay", "compare", "Comparison",
           "check_describes"]
