"""Loading models and recording what was loaded.

``load_model(spec)`` accepts

- a local Hugging Face directory (config + weights + tokenizer), offline;
- a hub name such as ``gpt2`` (for users with a model hub; here it fails with a message saying so);
- ``ref:NAME``, a reference model this project trains itself (trained into the cache on first use).

Every model is wrapped as a TransformerLens ``TransformerBridge`` (its hooks are what a notebook
would use, and what the tests' reference implementation uses; its TL-layout weights are what the
engine runs on) and identified by name, architecture, the engine's architecture flags and a
sha256 of its weights, so a stored score names exactly the weights it came from.

Architectures: those in :data:`discovery.engine.FAST_PATH` run on the engine's own forward; any
other architecture TransformerLens can boot is scored through the bridge's hooks (node level,
slow); anything else is refused at load with an error naming the architecture.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from discovery.engine.architectures import FAST_PATH
from discovery.types.circuit import ModelShape
from discovery.types.errors import UsageError
from discovery.types.identity import ModelIdentity

if TYPE_CHECKING:
    from discovery.engine import Engine

log = logging.getLogger("discovery")

SUPPORTED_ARCHITECTURES = tuple(FAST_PATH)
"""HF classes the engine's own forward runs; other TransformerLens architectures take the hooked slow path."""


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
        """The TransformerLens ``TransformerBridge`` around the same weights (booted at load)."""
        if self._bridge is None:
            self._bridge = _boot_bridge(self.hf_model, self.identity.name, self.tokenizer, self.device)
        return self._bridge

    @property
    def fast_path(self) -> bool:
        """Whether the engine's own forward runs this model (else the hooked slow path)."""
        from discovery.engine import has_fast_path

        return has_fast_path(self.hf_model)

    @cached_property
    def engine(self) -> Engine:
        """The one forward's weights and flags (TL layout, read off the bridge); fast-path models only."""
        from discovery.engine import Engine

        if not self.fast_path:
            raise UsageError(
                f"model {self.identity.name!r} ({self.identity.architecture}) runs on the hooked slow path, "
                "which scores node-level circuits only; edge-level scoring, attribution and path patching "
                "need an architecture with the engine's fast path"
            )
        return Engine.from_bridge(self.hf_model, self.bridge)


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


def architecture_supported(architecture: str) -> bool:
    """Whether a model of this HF class can be scored: the engine's fast path, or TransformerLens's hooks."""
    if architecture in FAST_PATH:
        return True
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES as TL_SUPPORTED

    return architecture in TL_SUPPORTED


def _config_sizes(cfg: Any) -> dict[str, int]:
    """Layer/head/width sizes under transformers' standard attribute names (every config maps them)."""
    d_model = int(cfg.hidden_size)
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
    return {
        "n_layers": int(cfg.num_hidden_layers),
        "n_heads": int(cfg.num_attention_heads),
        "d_model": d_model,
        "d_mlp": int(d_mlp),
        "vocab_size": int(cfg.vocab_size),
    }


def _identity(name: str, hf_model: Any, bridge: Any) -> ModelIdentity:
    from discovery.engine import flags_for, has_fast_path

    architecture = type(hf_model).__name__
    if has_fast_path(hf_model):
        flags = flags_for(hf_model, bridge.cfg)
        described, parallel = flags.describe(), flags.parallel_attn_mlp
    else:
        described, parallel = "hooked slow path (TransformerLens hook_z)", False
    return ModelIdentity(
        name=name,
        architecture=architecture,
        weight_hash=weight_hash(hf_model),
        flags=described,
        parallel_attn_mlp=parallel,
        **_config_sizes(hf_model.config),
    )


def _boot_bridge(hf_model: Any, name: str, tokenizer: Any, device: torch.device) -> Any:
    """A TransformerLens bridge around a copy of ``hf_model``, or a one-line error naming the architecture.

    On a copy of the module tree that shares the parameter tensors: booting wraps the HF modules in
    place, which would change hf_model's state dict (its weight hash, its save_pretrained output),
    while shared tensors keep one copy of the weights in memory, and an in-place change to
    hf_model's weights (a planted circuit) reaches the engine, which reads them on first use."""
    import copy

    from transformer_lens.model_bridge import TransformerBridge

    architecture = type(hf_model).__name__
    shared: dict[int, Any] = {id(t): t for t in (*hf_model.parameters(), *hf_model.buffers())}
    try:
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=copy.deepcopy(hf_model, shared), tokenizer=tokenizer, device=str(device)
        )
    except Exception as e:  # TransformerLens raises several types for an unknown architecture
        reason = (str(e).splitlines() or [""])[0]
        reason = reason if len(reason) <= 100 else reason[:100] + "..."
        raise UsageError(
            f"model {name!r} is a {architecture}, which neither the engine nor TransformerLens supports "
            f"({type(e).__name__}: {reason})"
        ) from e
    bridge.eval()
    return bridge


def _loaded(hf_model: Any, tokenizer: Any, name: str, device: torch.device, source: Path | None) -> LoadedModel:
    """Wrap an HF model: boot its bridge (which refuses what TransformerLens cannot run) and record it."""
    from discovery.engine import has_fast_path

    bridge = _boot_bridge(hf_model, str(source) if source else name, tokenizer, device)
    if not has_fast_path(hf_model):
        log.warning(
            "model %r (%s) has no fast path in the engine: scoring through TransformerLens hooks "
            "(correct, one hooked forward per circuit, slow; node level only)",
            name,
            type(hf_model).__name__,
        )
    return LoadedModel(hf_model, tokenizer, _identity(name, hf_model, bridge), device, source, bridge)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for but torch sees no CUDA device here")
    return dev


def load_model(
    spec: str,
    device: str | torch.device | None = "cpu",
    progress: Callable[[int, int | None, str], None] | None = None,
    *,
    name: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (a local HF directory or a hub name) onto ``device``; it is stored under ``name``
    (default: ``spec``). ``ref:NAME`` specs go through :func:`discovery.reference.load_model`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the library prints nothing; progress goes through the callback
    dev = resolve_device(device)
    source: Path | None = None
    if spec.startswith("ref:"):
        raise UsageError(f"{spec!r} is a reference model: load it with cd.load_model or discovery.reference.load_model")
    if Path(spec).expanduser().is_dir():
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
        hf_model: Any = AutoModelForCausalLM.from_pretrained(location)
    except OSError as e:
        raise UsageError(
            f"could not load model {spec!r}: {e.__class__.__name__}: {str(e).splitlines()[0]}. "
            "A hub name needs network access to a model hub; offline, pass a local directory "
            "(--model PATH) or a reference model (--model ref:sequences)."
        ) from e
    hf_model = hf_model.to(dev).eval()
    return _loaded(hf_model, tokenizer, name or spec, dev, source)


GPT2_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "gpt2"
"""GPT-2 small's real tokenizer (vocab.json, merges.txt) and config, shipped as package data."""


def gpt2_tokenizer() -> Any:
    """GPT-2's real byte-level BPE tokenizer (50,257 tokens), from the package's own copy (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GPT2_ASSETS))


def wrap_model(
    hf_model: Any, tokenizer: Any, name: str | None = None, device: str | torch.device | None = None
) -> LoadedModel:
    """A Hugging Face causal LM already in memory, ready to score (its identity hashes its weights now)."""
    dev = resolve_device(device) if device is not None else next(hf_model.parameters()).device
    label = name or getattr(hf_model.config, "_name_or_path", "") or f"in-memory-{type(hf_model).__name__}"
    return _loaded(hf_model.to(dev).eval(), tokenizer, label, dev, None)
