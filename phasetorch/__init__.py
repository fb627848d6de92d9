"""phasetorch: phase retrieval in PyTorch — measurement models, spectral initialization,
Wirtinger-flow optimizers, and the high-dimensional (DMFT) theory of how they converge."""

from .operators import MeasurementOperator, GaussianMeasurement
from .operators import (MatrixMeasurement, CodedDiffraction, StructuredRandom, OversampledFourier,
                        LinkMeasurement, save_operator, load_operator)
from .noise import PoissonNoise, GaussianNoise
from . import metrics, noise
from .spectral import spectral_init, SpectralInfo
from . import spectral

from .errors import DivergenceError
from .logs import TrainingLog
from .solve import reconstruct, Reconstruction
from . import losses, optim, logs
from . import theory

__version__ = "0.1.0"
