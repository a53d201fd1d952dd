"""Where activations come from: a model's site, read on the windows of a corpus.

A cache records its source in its manifest; an SAE records the source it was trained on as
SAELens metadata; evaluation reads held-out windows of the same corpus through the same model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .corpus import DEFAULT_CONTEXT_SIZE, DEFAULT_DATASET, describe_dataset


def model_label(name: str) -> str:
    """A model name as recorded: a local path made absolute, any other name as given."""
    return os.path.abspath(name) if os.path.exists(name) else name


@dataclass
class ActivationSource:
    """A model, a site in it, and the corpus windows it reads. Names are kept as recorded:
    `model` by `model_label`, `dataset` by `describe_dataset`."""

    model: str
    site: str
    dataset: str = DEFAULT_DATASET
    context_size: int = DEFAULT_CONTEXT_SIZE
    text_field: str = "text"

    def __post_init__(self):
        self.model = model_label(self.model)
        self.dataset = describe_dataset(self.dataset)

    @classmethod
    def of_cache(cls, manifest: dict[str, Any]) -> ActivationSource:
        """The source recorded in an activation cache's manifest."""
        return cls(manifest["model"], manifest["site"], manifest["dataset"],
                   manifest["context_size"], manifest["config"]["text_field"])

    def check_agrees(self, where: str, **settings: Any) -> None:
        """ConfigError naming both values if a given setting (model, site, dataset or
        context_size; None = not given) differs from this source, described by `where`."""
        for key, value in settings.items():
            if value is None:
                continue
            given = ActivationSource(**{**vars(self), key: value})  # recorded as a source is
            if getattr(given, key) != getattr(self, key):
                raise ConfigError(f"{key} {value!r} conflicts with {where}, which holds {key} "
                                  f"{getattr(self, key)!r}; leave {key} out or give that value")

    def sae_metadata(self, **extra: Any) -> dict[str, Any]:
        """The SAELens `metadata` of an SAE trained on these activations, with `extra` keys."""
        return {
            "model_name": self.model,
            "hook_name": self.site,
            "context_size": self.context_size,
            "dataset_path": self.dataset,
            "prepend_bos": True,
            **extra,
        }
