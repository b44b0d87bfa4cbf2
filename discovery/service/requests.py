"""Job requests: what a job needs, and every check that can be made before anything is stored or queued."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from discovery.types.errors import UsageError
from discovery.types.evaluation import Ablation, AblationChoice

MAX_PROMPTS = 100_000
"""The most prompts a job may ask for (``--n 100000000`` used to hang building the dataset)."""


@dataclass(frozen=True)
class JobRequest:
    """Everything a job needs, JSON-serialisable; validated by :func:`validate_request`."""

    task: str
    method: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    """The search method's parameters (validated against its declared schema)."""
    n: int = 50
    seed: int = 0
    corruption: str | None = None
    task_params: dict[str, Any] = field(default_factory=dict)
    ablation: AblationChoice = AblationChoice()
    """A part left unset is the method's default (``SearchMethodSpec.evaluation``); :meth:`resolved` fills it in."""
    device: str = "cpu"

    def resolved(self) -> JobRequest:
        """The request with every unset evaluation setting replaced by the method's default."""
        return replace(self, ablation=AblationChoice.of(self.resolved_ablation()))

    def resolved_ablation(self) -> Ablation:
        """The ablation the job's evaluator runs under (the method's defaults for what was left unset)."""
        from discovery.search import get_method

        return get_method(self.method).resolve_ablation(self.ablation)

    def settings(self) -> dict[str, Any]:
        """What the job row keeps besides method, params, task and model."""
        return {
            "n": self.n,
            "seed": self.seed,
            "corruption": self.corruption,
            "task_params": self.task_params,
            **ablation_settings(self.ablation),
            "device": self.device,
        }

    @classmethod
    def from_settings(
        cls, task: str, method: str, model: str, params: dict[str, Any], settings: dict[str, Any]
    ) -> JobRequest:
        known = {k: settings[k] for k in ("n", "seed", "corruption", "task_params", "device") if k in settings}
        ablation = ablation_of_settings(settings)
        return cls(task=task, method=method, model=model, params=dict(params or {}), ablation=ablation, **known)


def ablation_settings(ablation: AblationChoice) -> dict[str, Any]:
    """The ablation as a job row's config keeps it: the keys jobs have always been stored under
    (``ablation`` is the kind; None where the method's default was left to the worker)."""
    return {
        "ablation": ablation.kind,
        "ablation_source": ablation.source,
        "ablate_mlps": ablation.ablate_mlps,
        "ablate_embed": ablation.ablate_embed,
    }


def ablation_of_settings(settings: dict[str, Any]) -> AblationChoice:
    """The ablation a job row's config names (the inverse of :func:`ablation_settings`). A job stored
    before ``ablate_embed`` existed, with its ablation resolved, kept the embedding: False, not the
    method's default."""
    embed = settings.get("ablate_embed")
    if "ablation" in settings and "ablate_embed" not in settings:
        embed = False
    return AblationChoice.parse(
        settings.get("ablation"), settings.get("ablation_source", "corrupt"), settings.get("ablate_mlps"), embed
    )


def validate_request(request: JobRequest, *, local_device: bool = True) -> JobRequest:
    """Every check the worker would make, made here so a bad request is refused before anything is
    stored or queued: raise :class:`UsageError` naming the bad input; return the request with the
    method's parameters coerced and defaults filled in.

    Checked: method and its parameters (declared schema; NaN/inf refused; component lists such as
    ``pool`` and ``start`` parsed against the model's layers and heads), ablation, prompt count, task
    and its parameters (unknown keys refused), corruption, device (``local_device``: it must exist on
    this machine), the model directory (config, architecture, weights file readable, tokenizer) and
    the dataset itself (prompts built with the model's tokenizer: no unknown-word tokens, no prompt
    longer than the model's context)."""
    from discovery.search import get_method
    from discovery.tasks import build_dataset, get_task

    spec = get_method(request.method)
    request = request.resolved()
    params = spec.validate(dict(request.params))
    for name, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"method {request.method!r}: parameter {name}={value} is not a finite number")
    if not 1 <= request.n <= MAX_PROMPTS:
        raise UsageError(f"the number of prompts must be between 1 and {MAX_PROMPTS:,}, got {request.n}")
    check_task_params(request.task, request.task_params)
    task = get_task(request.task, **request.task_params)
    task.check_corruption(request.corruption)
    _check_device(request.device, local=local_device)
    tokenizer = check_model_spec(request.model)
    shape, n_ctx = model_shape(request.model)
    if shape is not None:
        _check_components(spec, params, shape, bool(request.ablation.ablate_mlps))
    if tokenizer is not None:
        # the prompts before the model-correctness filter (which needs the model, loaded on the worker)
        unfiltered = get_task(request.task, **{k: v for k, v in request.task_params.items() if k != "filter"})
        dataset = build_dataset(unfiltered, tokenizer, n=request.n, seed=request.seed, corruption=request.corruption)
        _check_tokens(dataset, tokenizer, n_ctx)
    try:
        json.dumps(params)
        json.dumps(request.task_params)
    except TypeError as e:
        raise UsageError(f"job parameters must be JSON values: {e}") from e
    return replace(request, params=params)


def check_task_params(task: str, params: dict[str, Any]) -> None:
    """Refuse task parameters the task does not read (they used to be stored and silently ignored)."""
    from discovery.tasks import TASKS, get_task

    if task.startswith("file:"):
        from discovery.tasks.user_file import FileTask

        accepted = tuple(a for a in FileTask.accepted_params() if a != "path")
    else:
        if task not in TASKS:
            get_task(task)  # raises the unknown-task message
        accepted = TASKS[task].accepted_params()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UsageError(
            f"task {task!r} has no parameter {', '.join(unknown)}; its parameters: {', '.join(accepted) or '(none)'}"
        )


def _check_components(spec: Any, params: dict[str, Any], shape: Any, ablate_mlps: bool) -> None:
    """Component lists (``pool``, ``start``...) parsed against the model, as the search would."""
    from types import SimpleNamespace

    from discovery.search._helpers import parse_nodes

    stub = SimpleNamespace(shape=shape, ablation=SimpleNamespace(ablate_mlps=ablate_mlps))
    for p in spec.params:
        if p.type is list and params.get(p.name):
            parse_nodes(stub, params[p.name], spec.key, p.name)


def _check_tokens(dataset: Any, tokenizer: Any, n_ctx: int | None) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    special = {getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    if unk is not None and unk not in special:  # GPT-2's "unknown" token is its end-of-text/BOS token
        rows = [(ids, ex) for g in dataset.length_groups for ids, ex in zip(g.clean_ids.tolist(), g.examples)]
        for ids, example in rows:
            if unk in ids:
                raise UsageError(
                    f"prompt {example.clean!r} has words the model's tokenizer does not know (they become "
                    f"{tokenizer.unk_token!r}); every score would be meaningless"
                )
    if n_ctx is not None and dataset.seq_len > n_ctx:
        raise UsageError(f"prompts are {dataset.seq_len} tokens long; the model's context is {n_ctx} tokens")


def model_shape(spec: str) -> tuple[Any, int | None]:
    """(ModelShape, context length) read from a local model's config.json or a reference model's spec,
    without loading weights; (None, None) for a hub name."""
    from discovery.types.circuit import ModelShape

    if spec.startswith("ref:"):
        try:
            from discovery import reference

            ref = reference.REFERENCE_MODELS[spec[len("ref:") :]]
        except (ImportError, KeyError, AttributeError):
            return None, None
        layers = getattr(ref, "n_layer", None)
        heads = getattr(ref, "n_head", None)
        n_ctx = getattr(ref, "n_positions", None)
        return (ModelShape(layers, heads) if layers and heads else None), n_ctx
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        return None, None
    config = json.loads((path / "config.json").read_text())
    layers = config.get("n_layer") or config.get("num_hidden_layers")
    heads = config.get("n_head") or config.get("num_attention_heads")
    n_ctx = config.get("n_positions") or config.get("max_position_embeddings")
    return (ModelShape(int(layers), int(heads)) if layers and heads else None), (int(n_ctx) if n_ctx else None)


def _check_device(device: str, local: bool = True) -> None:
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, auto)") from e
    if not local or parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= count:
            raise UsageError(
                f"device {device!r}: this machine has {count} CUDA device(s); submit with --device cpu "
                "(a GPU worker started with `circuits worker --device cuda` runs it on its GPU) or auto"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r}: MPS is not available on this machine")


def check_model_spec(spec: str) -> Any:
    """Refuse a model spec that cannot load, cheaply (no weights read). Returns the model's
    tokenizer when it is a local directory (so the dataset can be checked too), else None.

    A worker may run on another machine: a local path must be valid here *and* there (the
    docker-compose file mounts the same model directory into every container)."""
    from discovery.model import architecture_supported

    if spec.startswith("ref:"):
        name = spec[len("ref:") :]
        try:
            from discovery import reference
        except ImportError:
            return None
        known = getattr(reference, "REFERENCE_MODELS", None)
        if isinstance(known, dict) and name not in known:
            raise UsageError(f"unknown reference model {spec!r}; known: {', '.join('ref:' + k for k in sorted(known))}")
        # its tokenizer (built without training the model) lets the dataset be checked too
        make = getattr(reference, "reference_tokenizer", None)
        return make(name) if make is not None else None
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"model directory {spec!r} has no config.json: not a Hugging Face model directory")
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"model directory {spec!r}: config.json is unreadable: {e}") from e
        architectures = config.get("architectures") or []
        if architectures and not any(architecture_supported(a) for a in architectures):
            raise UsageError(
                f"model {spec!r} is a {', '.join(architectures)}, which neither the engine nor TransformerLens supports"
            )
        _check_weights(spec, path)
        try:
            return _tokenizer(str(path.resolve()), (path / "config.json").stat().st_mtime)
        except (OSError, ValueError) as e:
            raise UsageError(f"model directory {spec!r}: its tokenizer does not load: {e}") from e
    if path.exists():
        raise UsageError(f"model {spec!r} is a file; pass the Hugging Face directory that holds config.json")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UsageError(f"model directory {spec!r} does not exist")
    return None  # a hub name: the worker's machine may reach a hub this one cannot


def _check_weights(spec: str, path: Path) -> None:
    """A safetensors file must open (its header read and its size checked against it, no tensor loaded)."""
    files = sorted(path.glob("*.safetensors"))
    for f in files:
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as opened:
                opened.keys()
        except Exception as e:  # safetensors raises its own SafetensorError, OSError, ValueError
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(
                f"model {spec!r}: weights file {f.name} is unreadable (corrupt or truncated?): {first}"
            ) from e


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, mtime: float) -> Any:
    """A model directory's tokenizer, loaded once per process (per version of the directory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
