"""Spectral initialisation: preprocessing functions T(y), matrix-free eigensolvers, ``spectral_init``."""

from . import eigensolvers, preprocessing
from .spectral import SpectralInfo, spectral_init, spectral_matrix

__all__ = ["SpectralInfo", "spectral_init", "spectral_matrix", "eigensolvers", "preprocessing"]
