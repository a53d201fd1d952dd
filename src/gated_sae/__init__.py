"""gated-sae: train and evaluate sparse autoencoders on language-model activations."""

import os

# MKL's OpenMP threads otherwise spin for 200 ms after every matmul, and on a small CPU the
# ops that follow it (all of a sparse step's) wait for them: 7-18x slower on 2 cores. Read
# when torch first loads, so it takes effect only if gated_sae is imported before torch.
os.environ.setdefault("KMP_BLOCKTIME", "0")

from .errors import ConfigError, DataError, GatedSAEError, WriteError
from .saes import ARCHITECTURES, SAE, architecture_options, create_sae, load_sae

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "ConfigError",
    "DataError",
    "GatedSAEError",
    "WriteError",
    "architecture_options",
    "create_sae",
    "load_sae",
]
