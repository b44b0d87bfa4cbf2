"""Planted circuits: GPT-2-architecture models whose weights are set by hand, so their circuit is known.

A planted model is an ordinary ``GPT2LMHeadModel`` (10 layers x 8 heads, or 12 x 12, d_model 128
or 144) that the evaluator runs like any other. Its task: a prompt of random words with one
``mark`` somewhere; the answer is the word right after the ``mark`` (a corrupted prompt has another
word there, which is the wrong answer of the logit difference). The mechanism, by construction:

- one **previous-token head** in layer 0 writes a flag "the previous token is ``mark``" at each
  position (its query and key read the position embedding, its value the ``mark`` feature);
- ``n_chains`` **mover heads** in layer 1 attend, from the query position, to where that flag is set
  (their *key* reads the previous-token head's output: K-composition) and copy the word there;
- each mover starts a **chain of relay heads**, one per later layer (chains interleave: chain c uses
  layers 2 + c, 2 + c + n_chains, ...); each relay attends to its own position and copies the
  previous link's output into a fresh subspace (its *value* reads the previous head: V-composition);
  the last relay of each chain writes ``1 / n_chains`` of the answer into the unembedding's subspace;
- every other head is a **distractor**: random queries, keys and values that read the whole residual
  stream (the circuit's subspaces included), and write large outputs into a subspace that no circuit
  head and no logit reads. MLPs output zero.

So the circuit (nodes, and the edges between heads and to the logits) comes from the construction,
listed in :attr:`PlantedModel.circuit` and in the saved ``reference.json``; ablating any circuit
head costs the metric, ablating any distractor costs nothing.

Layer norm is made (to within 1e-4) linear: every feature is a direction orthogonal to the all-ones
vector (so centring leaves it alone), and the position embedding adds a constant component of norm
``BIG`` that dominates the residual norm, so each layer norm divides by nearly the same number,
which its weight undoes. Features live in a random orthonormal basis, not on the coordinate axes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discovery.tasks.words import INDUCTION_WORDS

BIG = 1000.0
"""Norm of the constant residual component that makes layer norm (nearly) linear."""
CODE_DIM = 8
"""Dimension of each word-code subspace (content words get random unit codes in it)."""
PROMPT_LEN = 10
"""Words per prompt (the BOS makes it 11 tokens); the query position is the last."""
CONTENT_WORDS: tuple[str, ...] = tuple(
    "apple river stone cloud tiger piano ocean lemon candle forest rocket violin garden mirror silver thunder".split()
)
MARK = "mark"
QUERY = "then"
ATTENTION_MARGIN = 40.0
"""Attention logit gap between a circuit head's intended position and every other one."""


@dataclass(frozen=True)
class PlantedSpec:
    """Everything that determines a planted model (bump ``version`` when the construction changes)."""

    name: str
    description: str
    version: int
    n_layer: int
    n_head: int
    d_model: int
    n_chains: int
    seed: int = 0
    words: tuple[str, ...] = CONTENT_WORDS + (MARK, QUERY)
    n_prompts: int = 400
    default_seed: int = 0
    targets: dict[str, float] = field(default_factory=lambda: {"task top-1": 0.95})
    n_positions: int = PROMPT_LEN + 1
    builder: str = "chains"
    """``chains`` (the planted task above) or ``induction`` (:func:`build_induction`)."""


PLANTED_CHAINS = PlantedSpec(
    name="planted-chains",
    description="10 layers x 8 heads, planted: previous-token head -> 2 movers (K-composition) -> 2 relay "
    "chains (V-composition) -> logits; 69 distractor heads",
    version=1,
    n_layer=10,
    n_head=8,
    d_model=128,
    n_chains=2,
)
PLANTED_WIDE = PlantedSpec(
    name="planted-wide",
    description="12 layers x 12 heads, planted: previous-token head -> 3 movers (K-composition) -> 3 relay "
    "chains (V-composition) -> logits; 130 distractor heads",
    version=1,
    n_layer=12,
    n_head=12,
    d_model=144,
    n_chains=3,
)
INDUCTION_BUILT = PlantedSpec(
    name="induction",
    description="2 layers x 4 heads, width 256, set by hand: a previous-token head (layer 0) and two "
    "induction heads (layer 1, K-composition); 5 distractor heads",
    version=2,
    n_layer=2,
    n_head=4,
    d_model=256,
    n_chains=0,
    words=INDUCTION_WORDS,
    n_positions=64,
    builder="induction",
    targets={"repeated-half (worst cell)": 0.95, "induction": 0.9},
)
PLANTED: dict[str, PlantedSpec] = {s.name: s for s in (PLANTED_CHAINS, PLANTED_WIDE, INDUCTION_BUILT)}


@dataclass(frozen=True)
class PlantedModel:
    hf_model: Any
    tokenizer: Any
    nodes: tuple[str, ...]
    """The circuit's heads, ``LAYER.HEAD``."""
    edges: tuple[str, ...]
    """The circuit's edges between heads and to the logits, ``SENDER->RECEIVER.INPUT``."""
    roles: dict[str, str]
    """Head -> its role (previous-token, mover c, relay c.i)."""

    @property
    def circuit(self) -> Any:
        from discovery.types.circuit import Circuit

        return Circuit.of(self.nodes)


class _Basis:
    """Hands out orthonormal feature directions, all orthogonal to the all-ones vector."""

    def __init__(self, d_model: int, rng: np.random.Generator) -> None:
        raw = np.concatenate([np.ones((d_model, 1)), rng.standard_normal((d_model, d_model - 1))], axis=1)
        q, _ = np.linalg.qr(raw)
        self.columns = q[:, 1:]  # drop the ones direction
        self.used = 0

    def take(self, k: int) -> np.ndarray:
        if self.used + k > self.columns.shape[1]:
            raise ValueError(f"planted model: d_model too small ({self.used} + {k} > {self.columns.shape[1]})")
        out = self.columns[:, self.used : self.used + k]
        self.used += k
        return out

    def rest(self) -> np.ndarray:
        out = self.columns[:, self.used :]
        self.used = self.columns.shape[1]
        return out


def _layout(spec: PlantedSpec, rng: np.random.Generator) -> dict[str, Any]:
    """Which head does what: the previous-token head, the movers, the relay chains (random head indices)."""
    heads_of = {layer: list(rng.permutation(spec.n_head)) for layer in range(spec.n_layer)}
    prev = (0, int(heads_of[0].pop()))
    movers = [(1, int(heads_of[1].pop())) for _ in range(spec.n_chains)]
    chains: list[list[tuple[int, int]]] = []
    for c in range(spec.n_chains):
        chains.append([(layer, int(heads_of[layer].pop())) for layer in range(2 + c, spec.n_layer, spec.n_chains)])
    if any(not chain for chain in chains):
        raise ValueError(f"planted model {spec.name}: too few layers for {spec.n_chains} chains")
    return {"previous": prev, "movers": movers, "chains": chains}


def build_planted(spec: PlantedSpec, seed: int | None = None) -> PlantedModel:
    """Construct ``spec``'s model (deterministic in ``seed``, default ``spec.seed``); nothing is trained."""
    from discovery.reference.tokenizer import build_tokenizer

    seed = spec.seed if seed is None else seed
    if spec.builder == "induction":
        return build_induction(spec, seed)
    rng = np.random.default_rng([seed, 1616])
    tokenizer = build_tokenizer(spec.words)
    d, n_head = spec.d_model, spec.n_head
    dh = d // n_head
    n_pos = PROMPT_LEN + 1
    if dh < n_pos:
        raise ValueError(f"planted model {spec.name}: d_head {dh} must hold {n_pos} position codes")
    basis = _Basis(d, rng)
    u = basis.take(1)[:, 0]  # the constant component
    word_space = basis.take(CODE_DIM)
    mark_dir = basis.take(1)[:, 0]
    pos_space = basis.take(n_pos)
    flag_dir = basis.take(1)[:, 0]
    layout = _layout(spec, rng)
    n_links = sum(len(c) for c in layout["chains"])
    link_spaces = [basis.take(CODE_DIM) for _ in range(n_links)]  # mover outputs and relay outputs but the last
    out_space = basis.take(CODE_DIM)
    junk_space = basis.rest()
    if junk_space.shape[1] < 8:
        raise ValueError(f"planted model {spec.name}: d_model leaves only {junk_space.shape[1]} distractor dimensions")

    codes = rng.standard_normal((len(CONTENT_WORDS), CODE_DIM))
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)

    model = _gpt2(tokenizer, spec.n_layer, n_head, d, n_pos, seed)

    # embeddings: a word's code (bare and spaced forms alike), the mark feature; positions: BIG u + a one-hot code
    wte = np.zeros((len(tokenizer), d))
    vocab = tokenizer.get_vocab()
    for i, w in enumerate(CONTENT_WORDS):
        for form in (w, "\u0120" + w):
            wte[vocab[form]] = word_space @ codes[i]
    for form in (MARK, "\u0120" + MARK):
        wte[vocab[form]] = mark_dir
    wpe = BIG * u[None, :] + pos_space.T  # [n_pos, d]
    # every layer norm sees ||x|| ~ BIG, so weight BIG / sqrt(d) makes it the identity (to ~1e-4)
    ln_weight = np.full(d, BIG / np.sqrt(d))

    # per-head weights in [d, d_head] form (HF's Conv1D: x @ W)
    Wq = np.zeros((spec.n_layer, n_head, d, dh))
    Wk = np.zeros_like(Wq)
    Wv = np.zeros_like(Wq)
    Wo = np.zeros((spec.n_layer, n_head, dh, d))
    scale = ATTENTION_MARGIN * np.sqrt(dh)  # q.k / sqrt(dh) = margin where intended
    eye = np.eye(dh)

    def attend_by_position(layer: int, h: int, shift: int) -> None:
        # query at position i: pos code i; key at position j: pos code j + shift; they match when j = i - shift
        Wq[layer, h] = pos_space @ (eye[:n_pos] * scale)
        shifted = np.zeros((n_pos, dh))
        for j in range(n_pos):
            if 0 <= j + shift < n_pos:
                shifted[j, j + shift] = 1.0
        if shift:  # position 0 has nothing before it: let it attend to itself
            shifted[0, 0] = 1.0
        Wk[layer, h] = pos_space @ shifted

    def copy(layer: int, h: int, src: np.ndarray, dst: np.ndarray, gain: float = 1.0) -> None:
        k = src.shape[1]
        Wv[layer, h] = src @ eye[:k]  # value = the source subspace's coordinates
        Wo[layer, h] = eye[:k].T @ dst.T * gain

    roles: dict[str, str] = {}
    edges: list[str] = []

    def name(node: tuple[int, int]) -> str:
        return f"{node[0]}.{node[1]}"

    prev = layout["previous"]
    attend_by_position(prev[0], prev[1], shift=1)
    Wv[prev[0], prev[1]] = np.outer(mark_dir, eye[0])
    Wo[prev[0], prev[1]] = np.outer(eye[0], flag_dir)
    roles[name(prev)] = "previous-token"

    link = 0
    for c, (mover, chain) in enumerate(zip(layout["movers"], layout["chains"])):
        # query: the constant component (so every position asks); key: the flag the previous-token head wrote
        Wq[mover[0], mover[1]] = np.outer(u, eye[0]) * (scale / BIG)
        Wk[mover[0], mover[1]] = np.outer(flag_dir, eye[0])
        copy(mover[0], mover[1], word_space, link_spaces[link])
        roles[name(mover)] = f"mover {c}"
        edges.append(f"{name(prev)}->{name(mover)}.k")
        sender, source = mover, link_spaces[link]
        for i, relay in enumerate(chain):
            attend_by_position(relay[0], relay[1], shift=0)
            last = i == len(chain) - 1
            if last:
                copy(relay[0], relay[1], source, out_space, gain=1.0 / spec.n_chains)
            else:
                link += 1
                copy(relay[0], relay[1], source, link_spaces[link])
            roles[name(relay)] = f"relay {c}.{i}"
            edges.append(f"{name(sender)}->{name(relay)}.v")
            sender, source = relay, link_spaces[link]
        edges.append(f"{name(sender)}->logits")
        link += 1

    # distractors: queries and keys read everything but the constant (junk included), values the
    # circuit's features; outputs go to the junk subspace only, scaled so they are large (norm ~1-3
    # each, as large as the circuit's own signals) yet bounded (values do not read junk: no feedback)
    features = np.concatenate([word_space, mark_dir[:, None], pos_space, flag_dir[:, None]] + link_spaces, axis=1)
    features = np.concatenate([features, out_space], axis=1)
    everything = np.concatenate([features, junk_space], axis=1)
    r_all, r_feat, n_junk = everything.shape[1], features.shape[1], junk_space.shape[1]
    for layer in range(spec.n_layer):
        for h in range(n_head):
            if f"{layer}.{h}" in roles:
                continue
            Wq[layer, h] = everything @ rng.standard_normal((r_all, dh)) * (4.0 / np.sqrt(r_all))
            Wk[layer, h] = everything @ rng.standard_normal((r_all, dh)) * (4.0 / np.sqrt(r_all))
            Wv[layer, h] = features @ rng.standard_normal((r_feat, dh)) * (2.0 / np.sqrt(r_feat))
            Wo[layer, h] = rng.standard_normal((dh, n_junk)) @ junk_space.T * (1.0 / np.sqrt(dh))

    unembed = np.zeros((len(tokenizer), d))
    for i, w in enumerate(CONTENT_WORDS):  # answers follow a space: only the spaced form is predicted
        unembed[vocab["\u0120" + w]] = out_space @ codes[i] * 10.0

    _load_weights(model, wte, wpe, ln_weight, Wq, Wk, Wv, Wo, unembed)
    nodes = tuple(sorted(roles, key=lambda s: tuple(int(x) for x in s.split("."))))
    return PlantedModel(model, tokenizer, nodes, tuple(edges), roles)


def _load_weights(
    model: Any,
    wte: np.ndarray,
    wpe: np.ndarray,
    ln_weight: np.ndarray,
    Wq: np.ndarray,
    Wk: np.ndarray,
    Wv: np.ndarray,
    Wo: np.ndarray,
    unembed: np.ndarray,
) -> None:
    """Write per-head weights ([layer, head, d, d_head]; W_O [layer, head, d_head, d]) into a GPT-2 model:
    biases zero, MLPs zero, every layer norm the same (nearly identity) scaling."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float32)

    with torch.no_grad():
        tr = model.transformer
        tr.wte.weight.copy_(t(wte))
        tr.wpe.weight.copy_(t(wpe))
        for layer, block in enumerate(tr.h):
            block.ln_1.weight.copy_(t(ln_weight))
            block.ln_1.bias.zero_()
            block.ln_2.weight.copy_(t(ln_weight))
            block.ln_2.bias.zero_()
            # HF's Conv1D computes x @ W with W [d, 3d]: q, k, v blocks, heads side by side in each
            qkv = np.concatenate([np.concatenate(list(W[layer]), axis=1) for W in (Wq, Wk, Wv)], axis=1)
            block.attn.c_attn.weight.copy_(t(qkv))
            block.attn.c_attn.bias.zero_()
            block.attn.c_proj.weight.copy_(t(np.concatenate(list(Wo[layer]), axis=0)))
            block.attn.c_proj.bias.zero_()
            for p in block.mlp.parameters():
                p.zero_()
        tr.ln_f.weight.copy_(t(ln_weight))
        tr.ln_f.bias.zero_()
        model.lm_head.weight.copy_(t(unembed))


def _gpt2(tokenizer: Any, n_layer: int, n_head: int, d: int, n_pos: int, seed: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_pos,
        n_embd=d,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


INDUCTION_CODE_DIM = 48
"""Dimension of the induction model's word codes (128 words: random unit codes, |cos| mostly < 0.5)."""


def build_induction(spec: PlantedSpec, seed: int) -> PlantedModel:
    """The textbook two-layer induction circuit, set by hand in a 2-layer, 4-head GPT-2 (width 256).

    Layer 0 head A is a previous-token head (query and key read the position code, one apart; its
    value copies the token's code into a "previous token" subspace). Layer 1 heads B and C are
    induction heads: the query reads the current token's code, the key the previous-token subspace
    (K-composition with A), so they attend to the token after an earlier occurrence of the current
    token, and their values copy that token's code to the unembedding's subspace (half each). The
    other heads are distractors (random, writing to a subspace nothing reads). Works at every
    position of the context, with or without BOS, for any half length: nothing depends on where the
    repeat is.
    """
    from discovery.reference.data import bare_ids, spaced_ids
    from discovery.reference.tokenizer import build_tokenizer

    rng = np.random.default_rng([seed, 2929])
    tokenizer = build_tokenizer(spec.words)
    d, n_head, n_pos = spec.d_model, spec.n_head, spec.n_positions
    dh = d // n_head
    k = INDUCTION_CODE_DIM
    if dh < max(n_pos, k):
        raise ValueError(f"induction model {spec.name}: d_head {dh} must hold {n_pos} positions and {k}-dim codes")
    basis = _Basis(d, rng)
    u = basis.take(1)[:, 0]
    word_space, pos_space, prev_space, out_space = basis.take(k), basis.take(n_pos), basis.take(k), basis.take(k)
    junk_space = basis.rest()
    n_words = len(spec.words)
    codes = rng.standard_normal((n_words, k))
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)

    wte = np.zeros((len(tokenizer), d))
    for ids in (bare_ids(n_words), spaced_ids(n_words)):
        wte[ids] = codes @ word_space.T
    wpe = BIG * u[None, :] + pos_space.T
    ln_weight = np.full(d, BIG / np.sqrt(d))
    Wq = np.zeros((spec.n_layer, n_head, d, dh))
    Wk, Wv = np.zeros_like(Wq), np.zeros_like(Wq)
    Wo = np.zeros((spec.n_layer, n_head, dh, d))
    eye = np.eye(dh)
    heads_of = {layer: list(rng.permutation(n_head)) for layer in range(spec.n_layer)}
    prev = (0, int(heads_of[0].pop()))
    inductions = [(1, int(heads_of[1].pop())) for _ in range(2)]
    # previous-token head: query position i matches key position i - 1
    scale = ATTENTION_MARGIN * np.sqrt(dh)
    Wq[prev] = pos_space @ (eye[:n_pos] * scale)
    shifted = np.zeros((n_pos, dh))
    for j in range(n_pos - 1):
        shifted[j, j + 1] = 1.0
    shifted[0, 0] = 1.0  # position 0 attends to itself
    Wk[prev] = pos_space @ shifted
    Wv[prev] = word_space @ eye[:k]
    Wo[prev] = eye[:k].T @ prev_space.T
    # induction heads: query = current token's code, key = previous token's code (same coordinates)
    match = 2.0 * ATTENTION_MARGIN * np.sqrt(dh)  # a full match gains this much over a cos-0.5 near miss
    for head in inductions:
        Wq[head] = word_space @ (eye[:k] * match)
        Wk[head] = prev_space @ eye[:k]
        Wv[head] = word_space @ eye[:k]
        Wo[head] = eye[:k].T @ out_space.T * (1.0 / len(inductions))
    roles = {f"{prev[0]}.{prev[1]}": "previous-token"}
    roles.update({f"{l}.{h}": "induction" for l, h in inductions})
    features = np.concatenate([word_space, pos_space, prev_space], axis=1)
    for layer in range(spec.n_layer):
        for h in range(n_head):
            if f"{layer}.{h}" in roles:
                continue
            r = features.shape[1]
            Wq[layer, h] = features @ rng.standard_normal((r, dh)) * (4.0 / np.sqrt(r))
            Wk[layer, h] = features @ rng.standard_normal((r, dh)) * (4.0 / np.sqrt(r))
            Wv[layer, h] = features @ rng.standard_normal((r, dh)) * (2.0 / np.sqrt(r))
            Wo[layer, h] = rng.standard_normal((dh, junk_space.shape[1])) @ junk_space.T * (1.0 / np.sqrt(dh))
    unembed = np.zeros((len(tokenizer), d))
    unembed[spaced_ids(n_words)] = codes @ out_space.T * 20.0  # words after a space are what is predicted
    model = _gpt2(tokenizer, spec.n_layer, n_head, d, n_pos, seed)
    _load_weights(model, wte, wpe, ln_weight, Wq, Wk, Wv, Wo, unembed)
    edges = [f"{prev[0]}.{prev[1]}->{l}.{h}.k" for l, h in inductions]
    edges += [f"{l}.{h}->logits" for l, h in inductions]
    nodes = tuple(sorted(roles, key=lambda s: tuple(int(x) for x in s.split("."))))
    return PlantedModel(model, tokenizer, nodes, tuple(edges), roles)


def task_examples(spec: PlantedSpec, n: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """The planted task's prompts (``file:``-task rows): random words, one ``mark``, the query word last."""
    rng = np.random.default_rng([spec.seed, seed, 77])
    rows = []
    for _ in range(n or spec.n_prompts):
        words = [str(w) for w in rng.choice(CONTENT_WORDS, PROMPT_LEN - 1)]
        at = int(rng.integers(0, PROMPT_LEN - 3))  # the mark, then the answer, before the query
        words[at] = MARK
        answer = words[at + 1]
        wrong = str(rng.choice([w for w in CONTENT_WORDS if w != answer]))
        corrupt = list(words)
        corrupt[at + 1] = wrong
        rows.append(
            {
                "clean": " ".join(words + [QUERY]),
                "corrupt": " ".join(corrupt + [QUERY]),
                "answer": " " + answer,
                "wrong": " " + wrong,
            }
        )
    return rows


def save_planted(spec: PlantedSpec, out_dir: Path, seed: int | None = None) -> dict[str, Any]:
    """Write ``spec``'s model as a Hugging Face directory, its task file ``task.json`` (the chains
    builder; the induction model uses the ``induction`` task) and ``reference.json`` (which records
    the circuit: nodes, edges, roles). Returns that record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    planted = build_planted(spec, seed)
    planted.hf_model.save_pretrained(out_dir, safe_serialization=True)
    planted.tokenizer.save_pretrained(out_dir)
    if spec.builder == "induction":
        from discovery.reference.specs import induction_accuracy

        accuracy = induction_accuracy(planted.hf_model, planted.tokenizer, spec.seed if seed is None else seed)
        task = "induction"
    else:
        (out_dir / "task.json").write_text(json.dumps({"examples": task_examples(spec)}, indent=1) + "\n")
        accuracy = {"task top-1": task_accuracy(planted, spec)}
        task = "file:task.json (in this directory)"
    record = {
        "accuracy": accuracy,
        "name": spec.name,
        "kind": "planted",
        "version": spec.version,
        "seed": spec.seed if seed is None else seed,
        "circuit": {"nodes": list(planted.nodes), "edges": list(planted.edges), "roles": planted.roles},
        "task": task,
    }
    (out_dir / "reference.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


@torch.no_grad()
def task_accuracy(planted: PlantedModel, spec: PlantedSpec) -> float:
    """Top-1 accuracy of the planted model on its task's clean prompts (a plain HF forward)."""
    rows = task_examples(spec)
    tok = planted.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok(r["clean"], add_special_tokens=False)["input_ids"] for r in rows])
    answers = torch.tensor([tok(r["answer"], add_special_tokens=False)["input_ids"][0] for r in rows])
    logits = planted.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
    return float((logits.argmax(-1) == answers).float().mean())


def planted_truth(model_dir: Path) -> dict[str, Any]:
    """The circuit recorded in a saved planted model's ``reference.json``: ``{"nodes", "edges", "roles"}``."""
    record = json.loads((Path(model_dir) / "reference.json").read_text())
    if record.get("kind") != "planted":
        raise ValueError(f"{model_dir} is not a planted model")
    return dict(record["circuit"])
