"""gated-sae: train and evaluate sparse autoencoders on language-model activations."""

from .errors import ConfigError, DataError, GatedSAEError
from .saes import ARCHITECTURES, SAE, architecture_options, create_sae, load_sae

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "ConfigError",
    "DataError",
    "GatedSAEError",
    "architecture_options",
    "create_sae",
    "load_sae",
]
