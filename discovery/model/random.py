"""Randomly initialised models of any supported architecture, built in-process from transformers configs.

Their cost is the real model's; their scores mean nothing. For tests and benchmarks, never for findings.
"""

from __future__ import annotations

from typing import Any

import torch

from discovery.model.loading import GPT2_ASSETS, LoadedModel, _loaded, gpt2_tokenizer, resolve_device
from discovery.types.errors import UsageError

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
