"""phasetorch: phase retrieval in PyTorch — measurement models, spectral initialization,
Wirtinger-flow optimizers, and the high-dimensional (DMFT) theory of how they converge."""

from .operators import MeasurementOperator, GaussianMeasurement

__version__ = "0.1.0"
