"""gated-sae: train and evaluate sparse autoencoders on language-model activations.

The public API is this module's names (`__all__`): SAEs, models and activation caches, the
batch streams, training, evaluation, sweeps and reports. Beyond the SAE classes and errors
they load on first use, so `import gated_sae` stays light.
"""

import importlib
import os

# MKL's OpenMP threads otherwise spin for 200 ms after every matmul, and on a small CPU the
# ops that follow it (all of a sparse step's) wait for them: 7-18x slower on 2 cores. Read
# when torch first loads, so it takes effect only if gated_sae is imported before torch.
os.environ.setdefault("KMP_BLOCKTIME", "0")

from .errors import ConfigError, DataError, GatedSAEError, WriteError
from .saes import ARCHITECTURES, SAE, architecture_options, create_sae, load_sae

__version__ = "0.1.0"

# Each lazily loaded name, with the module that defines it.
_LAZY = {
    "LanguageModel": "data.lm",
    "load_model": "data.lm",
    "token_windows": "data.corpus",
    "ActivationCache": "data.cache",
    "build_cache": "data.cache",
    "load_cache": "data.cache",
    "load_activations_file": "data.activations_file",
    "BatchStream": "data.batches",
    "ShuffledBatches": "data.batches",
    "CacheBatches": "data.batches",
    "ModelBatches": "data.batches",
    "cache_batches": "data.batches",
    "model_batches": "data.batches",
    "SyntheticFeatures": "data.synthetic",
    "SAEConfig": "train.trainer",
    "TrainConfig": "train.trainer",
    "Trainer": "train.trainer",
    "activation_metrics": "evaluate.metrics",
    "mmcs": "evaluate.metrics",
    "lm_metrics": "evaluate.lm_metrics",
    "heldout_windows": "evaluate.pipeline",
    "evaluate_saes": "evaluate.pipeline",
    "SweepConfig": "experiments.sweep",
    "Sweep": "experiments.sweep",
    "load_sweep_config": "experiments.sweep",
    "write_report": "experiments.report",
}

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
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gated_sae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
