"""Reference models the project trains itself: small GPT-2-architecture models with known mechanisms.

No pretrained weights can be downloaded here, so findings are checked on models trained in-house,
deterministically, in a few minutes on a CPU, and saved as ordinary Hugging Face directories
(``config.json``, ``model.safetensors``, ``tokenizer.json``) that load through the same path as any
HF model (``--model ref:NAME`` or the directory itself). The trained ones are shipped with the
package (:mod:`discovery.reference.shipped`), so every machine loads the same weights at once:

- ``induction``: 2 layers x 4 heads, set by hand (:func:`discovery.reference.planted.build_induction`):
  a previous-token head in layer 0 and two induction heads in layer 1 that hold on any repeated
  sequence (checked from attention patterns by :mod:`discovery.reference.ground_truth`);
- ``induction-trained``: the same task learnt by a 2-layer attention-only model (experimental: the
  shipped copy, trained on a busy 2-core machine, misses its previous-token target, 0.66 of 0.8);
- ``sequences``: 4 layers, trained on the digits / number-words / months tasks' own prompt
  distribution (plus variations), so those tasks run on it unchanged;
- ``planted-chains`` (10 x 8) and ``planted-wide`` (12 x 12): built by hand, not trained, with a
  known 11- and 14-head circuit and distractor heads (:mod:`discovery.reference.planted`); their
  directory holds the task (``task.json``, for ``--task file:DIR/task.json``) and the circuit.

``ensure_reference_model(name)`` returns the shipped copy where the package has one (the spec's
current version and default seed); otherwise it trains or builds the model into the cache on first
use (into a temporary directory, renamed into place when complete, so a crash never leaves half a
model) and reuses it afterwards. The cache is ``$CIRCUITS_CACHE_DIR/reference`` if set, else the platform's user cache
(``platformdirs.user_cache_dir("circuit-discovery")/reference``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from discovery.reference.ground_truth import GridScores, HeadScores, head_scores, head_scores_grid
from discovery.reference.planted import PLANTED, PlantedSpec, planted_truth, save_planted
from discovery.reference.shipped import shipped_dir
from discovery.reference.specs import INDUCTION_TRAINED, SEQUENCES
from discovery.reference.tokenizer import build_tokenizer
from discovery.reference.training import (
    ProgressCallback,
    ReferenceSpec,
    TrainingReport,
    quiet_transformers,
    save,
    train_model,
)
from discovery.types.errors import UsageError

if TYPE_CHECKING:
    import torch

    from discovery.model import LoadedModel

REFERENCE_MODELS: dict[str, ReferenceSpec | PlantedSpec] = {
    **{spec.name: spec for spec in (INDUCTION_TRAINED, SEQUENCES)},
    **PLANTED,
}


def get_spec(name: str) -> ReferenceSpec | PlantedSpec:
    if name not in REFERENCE_MODELS:
        raise UsageError(f"unknown reference model {name!r}; known: {', '.join(sorted(REFERENCE_MODELS))}")
    return REFERENCE_MODELS[name]


def train_reference(
    name: str, out_dir: Path, seed: int = 0, progress: ProgressCallback | None = None, steps: int | None = None
) -> TrainingReport:
    """Train reference model ``name`` with ``seed`` and write its Hugging Face directory to ``out_dir``.

    ``progress(done, total, message)`` is called as training goes. ``steps`` overrides the spec's
    number of steps (short runs for tests; such a model is not a reference model). The same seed
    gives the same weights and the same accuracies.
    """
    spec = get_spec(name)
    out_dir = Path(out_dir)
    if isinstance(spec, PlantedSpec):
        return _build_planted(spec, out_dir, seed, progress)
    with quiet_transformers():
        tokenizer = build_tokenizer(spec.words)
        cpu_start = time.process_time()
        model, seconds, loss = train_model(spec, tokenizer, seed, steps=steps, progress=progress)
        cpu_seconds = time.process_time() - cpu_start
        if progress is not None:
            progress(0, None, f"evaluating {name} on held-out prompts")
        accuracy = spec.evaluate(model, tokenizer, seed)
        report = TrainingReport(
            name=name,
            seed=seed,
            steps=spec.steps + spec.polish_steps if steps is None else steps,
            seconds=round(seconds, 2),
            heldout_accuracy={k: round(v, 4) for k, v in accuracy.items()},
            out_dir=out_dir,
            final_loss=round(loss, 4),
            targets=dict(spec.targets),
            cpu_seconds=round(cpu_seconds, 2),
        )
        save(model, tokenizer, out_dir, report)
    return report


def _build_planted(spec: PlantedSpec, out_dir: Path, seed: int, progress: ProgressCallback | None) -> TrainingReport:
    """A planted model is built, not trained: its report holds the build time and its task accuracy."""
    if progress is not None:
        progress(0, 1, f"building {spec.name}")
    start = time.perf_counter()
    with quiet_transformers():
        record = save_planted(spec, out_dir, seed)
    report = TrainingReport(
        name=spec.name,
        seed=seed,
        steps=0,
        seconds=round(time.perf_counter() - start, 2),
        heldout_accuracy={k: round(v, 4) for k, v in record["accuracy"].items()},
        out_dir=out_dir,
        targets=dict(spec.targets),
    )
    saved = report.to_json()
    saved.pop("out_dir")
    (out_dir / "reference.json").write_text(json.dumps({**record, **saved}, indent=2, sort_keys=True) + "\n")
    if progress is not None:
        progress(1, 1, f"built {spec.name}")
    return report


def reference_tokenizer(name: str):
    """The tokenizer of reference model ``name``, built without training it (same as the saved one)."""
    return build_tokenizer(get_spec(name).words)


def cache_root() -> Path:
    """Where reference models are cached: ``$CIRCUITS_CACHE_DIR/reference`` or the user cache."""
    if env := os.environ.get("CIRCUITS_CACHE_DIR"):
        return Path(env).expanduser() / "reference"
    import platformdirs

    return Path(platformdirs.user_cache_dir("circuit-discovery")) / "reference"


def reference_dir(name: str, seed: int | None = None) -> Path:
    """The cache directory of reference model ``name`` (whether or not it is trained yet)."""
    spec = get_spec(name)
    seed = spec.default_seed if seed is None else seed
    return cache_root() / f"{name}-seed{seed}-v{spec.version}"


def _complete(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "model.safetensors").is_file()
        and (path / "reference.json").is_file()
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock file, so two processes do not train the same model at once (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename still keeps the cache whole
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shipped_reference_dir(name: str, seed: int | None = None) -> Path | None:
    """The package's shipped copy of reference model ``name`` (this seed, the spec's current version),
    or ``None`` where there is none (a model built by hand, another seed, a version not shipped yet)."""
    spec = get_spec(name)
    if not isinstance(spec, ReferenceSpec):
        return None
    path = shipped_dir(spec, spec.default_seed if seed is None else seed)
    return path if _complete(path) else None


def ensure_reference_model(
    name: str, progress: ProgressCallback | None = None, seed: int | None = None, *, shipped: bool = True
) -> Path:
    """The directory of reference model ``name``: the shipped copy where there is one (read in place,
    never written), else the cache's, trained into it on first use. ``shipped=False`` skips the
    shipped copy (``circuits train-reference`` retrains into the cache)."""
    if shipped and (in_package := shipped_reference_dir(name, seed)) is not None:
        return in_package
    target = reference_dir(name, seed)
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock"):
        if _complete(target):  # another process trained it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            train_reference(name, tmp, seed=get_spec(name).default_seed if seed is None else seed, progress=progress)
            if target.exists():  # an incomplete leftover from an older layout
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_model(
    spec: str, device: str | torch.device | None = "cpu", progress: ProgressCallback | None = None
) -> LoadedModel:
    """A model by its spec, as ``--model`` takes it: ``ref:NAME`` (a reference model: the package's shipped
    copy, or trained or built into the cache on first use; stored under the name ``ref:NAME``) or anything
    :func:`discovery.model.load_model` takes (a local Hugging Face directory, a hub name).

    Here rather than in :mod:`discovery.model`: the reference models are built with the loader, so the
    loader cannot know them."""
    from discovery.model import load_model as load_directory

    if not spec.startswith("ref:"):
        return load_directory(spec, device=device, progress=progress)
    source = ensure_reference_model(spec[len("ref:") :], progress=progress)
    return load_directory(str(source), device=device, progress=progress, name=spec)


__all__ = [
    "PLANTED",
    "REFERENCE_MODELS",
    "GridScores",
    "HeadScores",
    "PlantedSpec",
    "ReferenceSpec",
    "TrainingReport",
    "build_tokenizer",
    "cache_root",
    "ensure_reference_model",
    "get_spec",
    "head_scores",
    "head_scores_grid",
    "load_model",
    "planted_truth",
    "reference_dir",
    "reference_tokenizer",
    "shipped_reference_dir",
    "train_reference",
]
