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

from discovery.circuit import ModelShape
from discovery.engine.architectures import FAST_PATH
from discovery.errors import UsageError

if TYPE_CHECKING:
    from discovery.engine import Engine

log = logging.getLogger("discovery")

SUPPORTED_ARCHITECTURES = tuple(FAST_PATH)
"""HF classes the engine's own forward runs; other TransformerLens architectures take the hooked slow path."""


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
    flags: str = ""
    """The engine's architecture flags in words (``ArchitectureFlags.describe``), or the slow path's notice."""
    parallel_attn_mlp: bool = False

    @property
    def shape(self) -> ModelShape:
        return ModelShape(self.n_layers, self.n_heads, self.parallel_attn_mlp)


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
        hf_model: Any = AutoModelForCausalLM.from_pretrained(location)
    except OSError as e:
        raise UsageError(
            f"could not load model {spec!r}: {e.__class__.__name__}: {str(e).splitlines()[0]}. "
            "A hub name needs network access to a model hub; offline, pass a local directory "
            "(--model PATH) or a reference model (--model ref:sequences)."
        ) from e
    hf_model = hf_model.to(dev).eval()
    return _loaded(hf_model, tokenizer, spec, dev, source)


GPT2_ASSETS = Path(__file__).resolve().parent / "assets" / "gpt2"
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


RANDOM_ARCHITECTURES = ("gpt2", "gpt-neox", "llama", "qwen2", "gemma")


def _random_config(architecture: str, n_layers: int, n_heads: int, d_model: int, n_positions: int, vocab: int) -> Any:
    """A tiny transformers config of ``architecture`` (rotary families: partial rotary / GQA as their real models)."""
    import transformers as tf

    common: dict[str, Any] = dict(
        num_hidden_layers=n_layers, num_attention_heads=n_heads, hidden_size=d_model, vocab_size=vocab
    )
    if architecture == "gpt2":
        return tf.GPT2Config(
            n_layer=n_layers, n_head=n_heads, n_embd=d_model, n_positions=n_positions, vocab_size=vocab
        )
    kv = max(1, n_heads // 2)
    if architecture == "gpt-neox":  # Pythia: parallel attention + MLP, a quarter of each head rotated
        # GPTNeoXConfig's default rotary_pct is Pythia's 0.25
        return tf.GPTNeoXConfig(**common, intermediate_size=4 * d_model, max_position_embeddings=n_positions)
    if architecture == "llama":  # Llama-3 style: grouped-query attention, gated SiLU, llama3 rope scaling
        return tf.LlamaConfig(
            **common,
            num_key_value_heads=kv,
            intermediate_size=2 * d_model,
            max_position_embeddings=n_positions,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )
    if architecture == "qwen2":  # q/k/v biases, GQA, tied embeddings as Qwen2.5-0.5B
        return tf.Qwen2Config(
            **common,
            num_key_value_heads=kv,
            intermediate_size=2 * d_model,
            max_position_embeddings=n_positions,
            tie_word_embeddings=True,
        )
    if architecture == "gemma":  # multi-query attention, (1 + w) RMSNorm, sqrt(d) embedding scale
        return tf.GemmaConfig(
            **common,
            num_key_value_heads=1,
            head_dim=d_model // n_heads,
            intermediate_size=2 * d_model,
            max_position_embeddings=n_positions,
        )
    raise UsageError(f"unknown architecture {architecture!r}; choose one of: {', '.join(RANDOM_ARCHITECTURES)}")


FULL_SIZE_LABEL = {"gpt2": "small", "gpt-neox": "pythia-160m-shape"}
"""Name part of a full-size random model: the real model whose shape it has (else ``12x12x768``)."""


def random_model(
    architecture: str = "gpt2",
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
    """A randomly initialised model of ``architecture`` built in-process from a transformers config.

    ``full_size=True`` gives the real model's shape and cost: GPT-2 small (the packaged config),
    Pythia-160m (12 layers x 12 heads, width 768, its 50,304-token vocabulary), and for the other
    families a model of GPT-2 small's width and depth. Every family uses GPT-2's tokenizer (ids fit
    every vocabulary here). Weights are random: for tests and benchmarks, never for findings.
    """
    import transformers as tf

    tokenizer = tokenizer or gpt2_tokenizer()
    vocab = len(tokenizer)
    if full_size and architecture == "gpt2":
        config = tf.AutoConfig.from_pretrained(str(GPT2_ASSETS))
    elif full_size:
        config = _random_config(architecture, 12, 12, 768, 2048, 50304 if architecture == "gpt-neox" else vocab)
        if architecture == "gpt-neox":
            config.intermediate_size = 3072
    else:
        config = _random_config(architecture, n_layers, n_heads, d_model, n_positions, vocab)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    hf_model = tf.AutoModelForCausalLM.from_config(config).to(resolve_device(device)).eval()
    if full_size:
        label = name or f"random-{architecture}-{FULL_SIZE_LABEL.get(architecture, '12x12x768')}-seed{seed}"
    else:
        label = name or f"random-{architecture}-L{n_layers}H{n_heads}D{d_model}-seed{seed}"
    return _loaded(hf_model, tokenizer, label, resolve_device(device), None)


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
    """``random_model("gpt2", ...)``: a random GPT-2 (``full_size``: GPT-2 small's exact shape and cost)."""
    return random_model("gpt2", n_layers, n_heads, d_model, seed, n_positions, device, name, tokenizer, full_size)
