"""Training a reference model: one deterministic loop shared by every spec.

Determinism: the weights are initialised after ``torch.manual_seed(seed)``, the data come from
``numpy.random.default_rng([seed, ...])`` streams, and the loop runs under
``torch.use_deterministic_algorithms(True)`` with dropout off, so the same seed on the same
machine (and torch build, and thread count) gives bit-identical weights. A spec that sets
:attr:`ReferenceSpec.num_threads` trains on that many threads whatever the caller set, so its
weights do not depend on the caller's thread count either.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discovery.reference.data import Batch

ProgressCallback = Callable[[int, "int | None", str], None]
"""``(done, total, message)``, the project's progress convention (:mod:`discovery.types.progress`)."""


@dataclass(frozen=True)
class ReferenceSpec:
    """Everything that determines a reference model (bump ``version`` when any of it changes)."""

    name: str
    description: str
    version: int
    words: tuple[str, ...]
    """The tokenizer's vocabulary (each word bare and after a space, plus the special tokens)."""
    n_layer: int
    n_head: int
    d_model: int
    n_positions: int
    steps: int
    batch_size: int
    lr: float
    make_batch: Callable[[np.random.Generator, Any, int], Batch]
    """``(rng, tokenizer or prepared state, batch_size) -> Batch`` of training data."""
    evaluate: Callable[[Any, Any, int], dict[str, float]]
    """``(model, tokenizer, seed) -> {task: held-out top-1 accuracy}``."""
    targets: dict[str, float]
    """The accuracy each held-out task must reach (checked by the tests, reported by the CLI)."""
    d_mlp: int | None = None
    warmup: int = 100
    weight_decay: float = 0.01
    prepare: Callable[[np.random.Generator, Any, int], Any] | None = None
    """Optional ``(rng, tokenizer, steps) -> state`` computed once before training (a pool of
    texts); then ``make_batch`` receives the state instead of the tokenizer."""
    default_seed: int = 0
    polish_steps: int = 0
    """Extra steps after the main schedule, at ``polish_lr`` decaying linearly to zero: sharpens
    the mechanism the main phase found without the risk of a high learning rate switching it."""
    polish_lr: float = 0.0
    sinusoidal_init: bool = False
    """Initialise the position embeddings with sinusoids instead of noise: positions start
    out related to their neighbours, which a previous-token head needs (it shortens the plateau)."""
    position_scale: float = 1.0
    """Factor on the sinusoidal table (with :attr:`sinusoidal_init`): at ``init_std``'s scale, the
    positions and the tokens weigh alike in the first LayerNorm."""
    freeze_positions: bool = False
    """Keep the position embeddings at their initial (sinusoidal) values: relative offsets are then
    linear maps of the same table at every position, so a previous-token head learnt at one offset
    holds at all of them (``induction-trained``, seed 0, with trained positions: layer-0 heads 3-4
    tokens back, layer-1 induction scores 0.01, top-1 0.57 in the grid's worst cell)."""
    init_std: float | None = None
    """Standard deviation of the attention weights and of the token (and, without
    :attr:`sinusoidal_init`, position) embeddings at initialisation instead of GPT-2's 0.02. At width
    64, 0.02 makes the attention scores so small that the gradients of W_Q and W_K vanish together:
    ``induction-trained`` stayed at the uniform loss (4.85) for 4000 steps; at 0.125 (about
    ``1/sqrt(d_model)``) it leaves it within 500."""
    constant_lr: bool = False
    """Hold the learning rate after the warm-up instead of decaying it linearly to zero: the
    induction phase change comes after a plateau whose length is not known in advance."""
    polish_entropy_penalty: float = 0.0
    """Weight, in the polish phase, of a loss term on the attention patterns' mean entropy (nats,
    over every layer, head and query position): it sharpens the heads towards wherever each already
    attends most, and names no target."""
    attention_only: bool = False
    """Zero and freeze every MLP (a GPT-2 directory still, whose MLPs output exactly zero): the
    two-layer attention-only models in which induction heads are textbook (Olsson et al. 2022)."""
    num_threads: int | None = None
    """Torch threads of the training loop (the caller's setting is restored afterwards); ``None``
    keeps the caller's. 1 suits a tiny model: its matrices are too small to split, and on a busy
    machine OpenMP's threads mostly wait for each other (``induction-trained`` on the shared 2
    cores: 240-330 ms a step on 2 threads, 33-46 ms on 1)."""


@dataclass(frozen=True)
class TrainingReport:
    """What one training run did and reached."""

    name: str
    seed: int
    steps: int
    seconds: float
    heldout_accuracy: dict[str, float]
    out_dir: Path
    final_loss: float = float("nan")
    targets: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = float("nan")
    """CPU time of the training (all threads): unlike ``seconds``, not inflated by a busy machine."""

    @property
    def meets_targets(self) -> bool:
        return all(self.heldout_accuracy.get(k, 0.0) >= v for k, v in self.targets.items())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` for the block, restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers warnings or progress bars for the block (the library prints nothing)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_model(spec: ReferenceSpec, tokenizer: Any, seed: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.d_model,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        n_inner=spec.d_mlp,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    if spec.sinusoidal_init:
        with torch.no_grad():
            pos = torch.arange(spec.n_positions, dtype=torch.float32)[:, None]
            freq = torch.exp(-torch.arange(0, spec.d_model, 2, dtype=torch.float32) * (math.log(1e4) / spec.d_model))
            table = torch.zeros(spec.n_positions, spec.d_model)
            table[:, 0::2] = torch.sin(pos * freq)
            table[:, 1::2] = torch.cos(pos * freq)
            model.transformer.wpe.weight.copy_(table * spec.position_scale)
    if spec.init_std is not None:
        _reinitialise(model, spec.init_std, not spec.sinusoidal_init, torch.Generator().manual_seed(seed + 1000))
    if spec.freeze_positions:
        model.transformer.wpe.weight.requires_grad_(False)
    if spec.attention_only:
        with torch.no_grad():
            for block in model.transformer.h:
                mlp: Any = block.mlp
                for p in mlp.parameters():
                    p.zero_()
                    p.requires_grad_(False)
    return model


@torch.no_grad()
def _reinitialise(model: Any, std: float, positions: bool, generator: torch.Generator) -> None:
    """Attention weights and token (and, if ``positions``, position) embeddings drawn again with
    ``std`` (see :attr:`ReferenceSpec.init_std`)."""
    for block in model.transformer.h:
        for weight in (block.attn.c_attn.weight, block.attn.c_proj.weight):
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
    embeddings = [model.transformer.wte.weight] + ([model.transformer.wpe.weight] if positions else [])
    for weight in embeddings:
        weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def mean_attention_entropy(attentions: Any) -> torch.Tensor:
    """The mean entropy (nats) of attention patterns, a ``[batch, heads, query, key]`` tensor per
    layer as transformers returns them, over every layer, head and query: the polish's loss term."""
    patterns = torch.stack(tuple(attentions))
    return -(patterns * patterns.clamp_min(1e-12).log()).sum(-1).mean()


def train_model(
    spec: ReferenceSpec, tokenizer: Any, seed: int, steps: int | None = None, progress: ProgressCallback | None = None
) -> tuple[Any, float, float]:
    """Train ``spec``'s model; returns ``(model in eval mode, seconds, final loss)``."""
    main_steps = spec.steps if steps is None else steps
    polish = spec.polish_steps if steps is None else 0
    steps = main_steps + polish
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if spec.num_threads is not None:
        torch.set_num_threads(spec.num_threads)
    try:
        model, loss_value = _train_loop(spec, tokenizer, seed, main_steps, polish, progress)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, time.perf_counter() - start, loss_value


def _train_loop(
    spec: ReferenceSpec, tokenizer: Any, seed: int, main_steps: int, polish: int, progress: ProgressCallback | None
) -> tuple[Any, float]:
    steps = main_steps + polish
    with deterministic():
        model = build_model(spec, tokenizer, seed)
        model.train()
        data_rng = np.random.default_rng([seed, 1])
        state = spec.prepare(np.random.default_rng([seed, 2]), tokenizer, steps) if spec.prepare else tokenizer
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=spec.lr, weight_decay=spec.weight_decay
        )
        warmup = min(spec.warmup, max(1, main_steps // 10))

        def schedule(step: int) -> float:
            if step < main_steps:  # linear warm-up, then constant or linear decay to zero
                decay = 1.0 if spec.constant_lr else max(0.0, 1.0 - step / main_steps)
                return min(1.0, (step + 1) / warmup) * decay
            if polish == 0:  # LambdaLR evaluates one step past the end
                return 0.0
            return spec.polish_lr / spec.lr * max(0.0, 1.0 - (step - main_steps) / polish)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        loss_value = float("nan")
        report_every = max(1, steps // 100)
        for step in range(steps):
            batch = spec.make_batch(data_rng, state, spec.batch_size)
            ids = torch.from_numpy(batch.ids)
            mask = torch.from_numpy(batch.loss_mask)
            sharpen = spec.polish_entropy_penalty > 0 and step >= main_steps
            if sharpen and step == main_steps:  # SDPA returns no attention weights (and is faster before)
                model.set_attn_implementation("eager")
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=sharpen)
            logits = out.logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask[:, :-1]], ids[:, 1:][mask[:, :-1]])
            if sharpen:
                loss = loss + spec.polish_entropy_penalty * mean_attention_entropy(out.attentions)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == steps):
                loss_value = float(loss.detach())
                progress(step + 1, steps, f"training {spec.name}: loss {loss_value:.3f}")
        loss_value = float(loss.detach()) if steps else loss_value
    return model, loss_value


def save(model: Any, tokenizer: Any, out_dir: Path, report: TrainingReport) -> None:
    """Write the Hugging Face directory: config, safetensors weights, tokenizer, and our report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    record = report.to_json()
    record.pop("out_dir")  # the directory may be renamed (the cache trains into a temporary one)
    (out_dir / "reference.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
