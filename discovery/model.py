"""Loading models and recording what was loaded.

``load_model(spec)`` accepts

- a local Hugging Face directory (config + weights + tokenizer), offline;
- a hub name such as ``gpt2`` (for users with a model hub; here it fails with a message saying so);
- ``ref:NAME``, a reference model this project trains itself (trained into the cache on first use).

Every model is wrapped as a TransformerLens ``TransformerBridge`` (its hooks are what a notebook
would use, and what the tests' reference implementation uses) and identified by name,
architecture and a sha256 of its weights, so a stored score names exactly the weights it came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from discovery.circuit import ModelShape
from discovery.errors import UsageError

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel",)


@dataclass(frozen=True)
class ModelIdentity:
    """What a score's model is: the spec it was loaded by, its architecture, and its weights' digest."""

    name: str
    architecture: str
    weight_hash: str
    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    vocab_size: int

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.n_layers, self.n_heads)


@dataclass(eq=False)
class LoadedModel:
    """A model ready to evaluate: the HF module, its TransformerLens bridge, tokenizer and identity."""

    hf_model: Any
    tokenizer: Any
    identity: ModelIdentity
    device: torch.device
    source_dir: Path | None = None
    _bridge: Any = field(default=None, repr=False)

    @property
    def shape(self) -> ModelShape:
        return self.identity.shape

    @property
    def bridge(self) -> Any:
        """The TransformerLens ``TransformerBridge`` around the same weights (built on first use)."""
        if self._bridge is None:
            import copy

            from transformer_lens.model_bridge import TransformerBridge

            # on a copy: booting wraps the HF modules in place, which would change hf_model's
            # state dict (and so its weight hash, save_pretrained output and GPT2Weights)
            self._bridge = TransformerBridge.boot_transformers(
                str(self.source_dir) if self.source_dir else self.identity.name,
                hf_model=copy.deepcopy(self.hf_model),
                tokenizer=self.tokenizer,
                device=str(self.device),
            )
            self._bridge.eval()
        return self._bridge

    @cached_property
    def weights(self) -> Any:
        from discovery.weights import GPT2Weights

        return GPT2Weights.from_hf(self.hf_model)


def weight_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, in name order (identical weights -> identical hash)."""
    digest = hashlib.sha256()
    state = model.state_dict()
    seen: set[int] = set()
    for name in sorted(state):
        tensor = state[name]
        if tensor.data_ptr() in seen:  # tied weights (GPT-2's lm_head is wte) hash once
            continue
        seen.add(tensor.data_ptr())
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _identity(name: str, hf_model: Any) -> ModelIdentity:
    cfg = hf_model.config
    architecture = type(hf_model).__name__
    return ModelIdentity(
        name=name,
        architecture=architecture,
        weight_hash=weight_hash(hf_model),
        n_layers=cfg.n_layer,
        n_heads=cfg.n_head,
        d_model=cfg.n_embd,
        d_mlp=cfg.n_inner or 4 * cfg.n_embd,
        vocab_size=cfg.vocab_size,
    )


def _check_architecture(hf_model: Any, name: str) -> None:
    architecture = type(hf_model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise UsageError(
            f"model {name!r} is a {architecture}; the evaluator supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    cfg = hf_model.config
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False):
        raise UsageError(
            f"model {name!r}: GPT-2 attention variants (scale_attn_by_inverse_layer_idx, "
            "reorder_and_upcast_attn) are not supported"
        )
    if cfg.activation_function not in ("gelu_new", "gelu", "relu", "gelu_pytorch_tanh"):
        raise UsageError(f"model {name!r}: activation {cfg.activation_function!r} is not supported")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for but torch sees no CUDA device here")
    return dev


def load_model(
    spec: str, device: str | torch.device | None = "cpu", progress: Callable[[int, int | None, str], None] | None = None
) -> LoadedModel:
    """Load ``spec`` (a local HF directory, a hub name, or ``ref:NAME``) onto ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the library prints nothing; progress goes through the callback
    dev = resolve_device(device)
    source: Path | None = None
    if spec.startswith("ref:"):
        from discovery.reference import ensure_reference_model

        source = Path(ensure_reference_model(spec[len("ref:") :], progress=progress))
        location = str(source)
    elif Path(spec).expanduser().is_dir():
        source = Path(spec).expanduser().resolve()
        location = str(source)
    elif Path(spec).expanduser().exists():
        raise UsageError(f"model {spec!r} is a file; pass the Hugging Face directory that holds config.json")
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UsageError(f"model directory {spec!r} does not exist")
    else:
        location = spec
    if source is not None and not (source / "config.json").is_file():
        raise UsageError(f"model directory {str(source)!r} has no config.json: not a Hugging Face model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        hf_model = AutoModelForCausalLM.from_pretrained(location)
    except OSError as e:
        raise UsageError(
            f"could not load model {spec!r}: {e.__class__.__name__}: {str(e).splitlines()[0]}. "
            "A hub name needs network access to a model hub; offline, pass a local directory "
            "(--model PATH) or a reference model (--model ref:sequences)."
        ) from e
    _check_architecture(hf_model, spec)
    hf_model = hf_model.to(dev).eval()
    return LoadedModel(hf_model, tokenizer, _identity(spec, hf_model), dev, source)


GPT2_ASSETS = Path(__file__).resolve().parent / "assets" / "gpt2"
"""GPT-2 small's real tokenizer (vocab.json, merges.txt) and config, shipped as package data."""


def gpt2_tokenizer() -> Any:
    """GPT-2's real byte-level BPE tokenizer (50,257 tokens), from the package's own copy (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GPT2_ASSETS))


def random_gpt2(
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 64,
    seed: int = 0,
    n_positions: int = 128,
    device: str | torch.device = "cpu",
    name: str | None = None,
    tokenizer: Any = None,
    full_size: bool = False,
) -> LoadedModel:
    """A randomly initialised GPT-2-architecture model built in-process (no model files).

    ``full_size=True`` gives GPT-2 small's exact shape and cost (the packaged ``assets/gpt2/config.json``).
    Weights are random: use it for tests and benchmarks, never for findings.
    """
    from transformers import AutoConfig, GPT2Config, GPT2LMHeadModel

    tokenizer = tokenizer or gpt2_tokenizer()
    if full_size:
        config = AutoConfig.from_pretrained(str(GPT2_ASSETS))
    else:
        config = GPT2Config(
            n_layer=n_layers,
            n_head=n_heads,
            n_embd=d_model,
            n_positions=n_positions,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    torch.manual_seed(seed)
    hf_model = GPT2LMHeadModel(config).to(resolve_device(device)).eval()
    label = name or (
        f"random-gpt2-small-seed{seed}"
        if full_size
        else f"random-gpt2-L{config.n_layer}H{config.n_head}D{config.n_embd}-seed{seed}"
    )
    return LoadedModel(hf_model, tokenizer, _identity(label, hf_model), resolve_device(device))
