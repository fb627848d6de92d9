r"""High-dimensional theory of spectral-initialised gradient descent for phase retrieval.

Proportional limit n, m → ∞ with δ = m/n fixed, Gaussian measurements (real or complex), ‖x*‖ = 1 (theory.md, docs/theory.md;
Chen & Shen 2025, arXiv 2509.23527; Lu & Li 2017; Mondelli & Montanari 2018; Luo, Alghamdi & Lu 2019):

* :func:`spectral_limits`, :func:`spectral_overlap`, :func:`spectral_threshold` — the spectral
  estimator (Lu–Li formulas by quadrature);
* :class:`SingleIndexModel` (link y = f(s, ε), loss ℓ(r; y), real or complex field; derivatives given
  or by autograd, :func:`single_index_model`) and the shipped models :func:`phase_retrieval`
  (intensity loss, real/complex), :func:`amplitude_phase_retrieval`, :func:`linear_regression`,
  :func:`logistic_classification`, :func:`relu_regression`;
* :func:`dmft` → :class:`Prediction` — the whole GD trajectory (dynamical mean-field theory), for
  the real and the complex field (``field=``) and any model (``model=``);
* :func:`fixed_point` — its long-time limit;
* :func:`simulate` — finite-d simulations (many seeds in one batch) to check it against;
* :func:`overlay` (figure) and :func:`compare` (gaps, z-scores, success rate, verdict), which first
  refuses logs the prediction does not describe (:func:`check_describes`).

The DMFT is split into :mod:`.model` (single-index models, the start's law), :mod:`.fields`
(Gaussian fields and their basis), :mod:`.responses` (exact pathwise responses) and :mod:`.solver`
(the time-stepping solver, :func:`~phasetorch.theory.solver.solve_dmft` and :func:`dmft`).
"""

from .model import (SingleIndexModel, amplitude_phase_retrieval, linear_regression, logistic_classification, relu_regression,
                    phase_retrieval, single_index_model)
from .spectral import SpectralLimits, spectral_limits, spectral_overlap, spectral_threshold, rank_threshold
from .fixed_point import FixedPoint, fixed_point
from .prediction import Prediction
from .solver import dmft
from .simulate import simulate
from .compare import Comparison, check_describes, compare
from .overlay import overlay

__all__ = ["SingleIndexModel", "single_index_model", "phase_retrieval", "amplitude_phase_retrieval",
           "linear_regression", "logistic_classification", "relu_regression", "spectral_limits", "spectral_overlap", "spectral_threshold", "rank_threshold", "SpectralLimits",
           "fixed_point", "FixedPoint", "dmft", "Prediction", "simulate", "overlay", "compare", "Comparison",
           "check_describes"]
