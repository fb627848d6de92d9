"""The physics layer: forward measurement models (``torch.nn.Module``s): ``linear`` (A), ``adjoint`` (Aᴴ), ``forward`` (|A·|²).

==========================  ==============================================  ====================
operator                    model                                           entry_energy E|A_ij|²
==========================  ==============================================  ====================
``GaussianMeasurement``     dense i.i.d. Gaussian A (real or complex)       1
``GaussianEnsemble``        a batch of independent Gaussian matrices        1
``MatrixMeasurement``       any user matrix (e.g. a transmission matrix)    mean |A_ij|² (measured)
``CodedDiffraction``        |F D_l x|², L random masks (CDP)                1/n
``StructuredRandom``        |F D_K ⋯ F D_1 pad(x)|²                         1/N (N padded size)
``OversampledFourier``      |F pad(x)|² (classic CDI)                       1/N (N padded size)
==========================  ==============================================  ====================

``ShardedGaussian``, ``ShardedCodedDiffraction`` and ``ShardedMatrix`` (:mod:`.sharded`) hold one
process's share of the measurements of the first three, for multi-process runs
(:mod:`phasetorch.distributed`).

A :class:`MeasurementModel` composes an operator B with a link f (:mod:`.links`) and a noise
(:mod:`.noise`): y = noise(f(Bx)), per sample; :func:`resolve_model` makes one of any operator.
``save_operator`` / ``load_operator`` persist operators and models; every class registers itself
for loading with ``@register_operator`` (:mod:`.registry`).
"""

from .registry import register_operator
from .base import MeasurementOperator
from .gaussian import GaussianMeasurement
from .matrix import MatrixMeasurement
from .coded_diffraction import CodedDiffraction
from .structured import StructuredRandom
from .fourier import OversampledFourier
from .ensemble import GaussianEnsemble
from .noise import PoissonNoise, GaussianNoise
from .ptychography import Ptychography
from .links import Link
from .model import LinkMeasurement, MeasurementModel, resolve_model
from .io import save_operator, load_operator
from .sharded import ShardedCodedDiffraction, ShardedGaussian, ShardedMatrix, ShardedOperator

__all__ = ["MeasurementOperator", "GaussianMeasurement", "GaussianEnsemble", "MatrixMeasurement", "CodedDiffraction",
           "StructuredRandom", "OversampledFourier", "Link", "LinkMeasurement", "MeasurementModel", "resolve_model",
           "save_operator", "load_operator", "register_operator", "PoissonNoise", "GaussianNoise", "Ptychography",
           "ShardedOperator", "ShardedGaussian", "ShardedCodedDiffraction", "ShardedMatrix"]
