"""Forward measurement models (``torch.nn.Module``s): ``linear`` (A), ``adjoint`` (Aᴴ), ``forward`` (|A·|²)."""

from .base import MeasurementOperator
from .gaussian import GaussianMeasurement

__all__ = ["MeasurementOperator", "GaussianMeasurement"]
