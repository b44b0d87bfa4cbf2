"""Models: loading a Hugging Face directory or an in-memory model (:mod:`.loading`), and building
random-weight models of any supported architecture (:mod:`.random`).

``ref:NAME`` specs (the project's reference models) are resolved one room up, by
:func:`discovery.reference.load_model`, which trains or builds the model and loads it from here.
"""

from discovery.model.loading import (
    GPT2_ASSETS,
    SUPPORTED_ARCHITECTURES,
    LoadedModel,
    architecture_supported,
    gpt2_tokenizer,
    load_model,
    resolve_device,
    weight_hash,
    wrap_model,
)
from discovery.model.random import RANDOM_ARCHITECTURES, random_gpt2, random_model
from discovery.types.identity import ModelIdentity

__all__ = [
    "GPT2_ASSETS",
    "RANDOM_ARCHITECTURES",
    "SUPPORTED_ARCHITECTURES",
    "LoadedModel",
    "ModelIdentity",
    "architecture_supported",
    "gpt2_tokenizer",
    "load_model",
    "random_gpt2",
    "random_model",
    "resolve_device",
    "weight_hash",
    "wrap_model",
]
