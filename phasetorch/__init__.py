"""phasetorch: phase retrieval in PyTorch — measurement models, spectral initialization,
Wirtinger-flow optimizers, and the high-dimensional (DMFT) theory of how they converge.

Conventions (one for the whole library): E|A_ij|² = 1 for Gaussian sensing so E y = ‖x‖²;
``op.entry_energy`` gives E|A_ij|² for every operator and ‖x‖² ≈ mean(y)/entry_energy; leading
dimensions are batch dimensions and everything is per sample; errors and overlaps are taken
modulo the global phase (sign for real signals). See the README's "Conventions" section.
"""

from .physics import (Ptychography, MeasurementOperator, GaussianMeasurement, GaussianEnsemble, MatrixMeasurement,
                        CodedDiffraction, StructuredRandom, OversampledFourier, LinkMeasurement, MeasurementModel,
                        resolve_model, save_operator, load_operator, ShardedGaussian, ShardedCodedDiffraction,
                        ShardedMatrix)
from .physics.noise import PoissonNoise, GaussianNoise
from .init.spectral import spectral_init, SpectralInfo
from .errors import DivergenceError
from .logs import TrainingLog
from .solve import reconstruct, Reconstruction, Status
from .ptycho import reconstruct_ptycho, PtychoResult
from .ptycho_data import load_ptycho
from . import physics, init, metrics, losses, optim, logs, io, phantoms, theory, distributed

__version__ = "0.1.0"

__all__ = ["Ptychography", "MeasurementOperator", "GaussianMeasurement", "GaussianEnsemble", "MatrixMeasurement",
           "CodedDiffraction", "StructuredRandom", "OversampledFourier", "LinkMeasurement", "MeasurementModel",
           "resolve_model", "save_operator",
           "load_operator", "PoissonNoise", "GaussianNoise", "spectral_init", "SpectralInfo", "DivergenceError",
           "TrainingLog", "reconstruct", "Reconstruction", "Status", "reconstruct_ptycho", "PtychoResult", "load_ptycho", "physics", "init", "metrics", "losses", "optim", "logs",
           "io", "phantoms", "theory", "distributed", "ShardedGaussian", "ShardedCodedDiffraction", "ShardedMatrix"]
