"""The trained reference models shipped with the package: trained once, loaded everywhere at once.

Training ``sequences`` takes minutes on a quiet CPU (over an hour on a busy one), and two machines
train slightly different weights (float summation order differs between CPUs and thread counts),
so every machine that trained its own would score a different model. The package therefore holds
one trained copy of each trained reference model, under ``weights/NAME-seedS-vV/``: the Hugging
Face directory that :func:`discovery.reference.train_reference` writes (``config.json``,
``model.safetensors``, the tokenizer files, ``reference.json``) plus ``shipped.json``, which records
the recipe (the spec's fields), the seed, what trained it, and the weights' digest
(:func:`discovery.model.weight_hash`, the one a score's model identity records).

``ref:NAME`` loads the shipped copy of the spec's current version and default seed in place; a spec
whose version was bumped, or another seed, has no shipped copy and trains into the cache as before.
To ship a new version, train it and copy it in::

    circuits train-reference sequences --out /tmp/sequences --seed 0
    python -c "from pathlib import Path; from discovery.reference.shipped import ship; \\
        ship('sequences', Path('/tmp/sequences'), threads=2)"
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from discovery.reference.training import ReferenceSpec, quiet_transformers

WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"
"""Where the shipped models live inside the package (package data)."""

SHIPPED_RECORD = "shipped.json"
"""The file beside each shipped model that records its recipe, seed and weight digest."""


def shipped_dir(spec: ReferenceSpec, seed: int) -> Path:
    """Where the shipped copy of ``spec`` trained with ``seed`` lives (whether or not it is shipped)."""
    return WEIGHTS_ROOT / f"{spec.name}-seed{seed}-v{spec.version}"


def recipe(spec: ReferenceSpec) -> dict[str, Any]:
    """The spec's fields as JSON: functions by their qualified name (their code is the package's own)."""
    out: dict[str, Any] = {}
    for f in fields(spec):
        value = getattr(spec, f.name)
        if callable(value):
            value = f"{value.__module__}.{value.__qualname__}"
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def directory_weight_hash(directory: Path) -> str:
    """:func:`discovery.model.weight_hash` of the model saved in ``directory`` (as loading it records)."""
    from transformers import AutoModelForCausalLM

    from discovery.model import weight_hash

    with quiet_transformers():
        return weight_hash(AutoModelForCausalLM.from_pretrained(directory))


def ship(name: str, trained: Path, threads: int | None = None, *, below_targets: bool = False) -> Path:
    """Copy the model trained in ``trained`` into the package's weights and record how it was made.

    ``threads`` is the torch thread count it was trained on, when the spec does not fix one (the
    weights depend on it). Refuses a model trained from another spec version, and one below its
    targets unless ``below_targets`` (an experimental model shipped as it is: ``shipped.json`` says
    ``meets_targets: false``); replaces an earlier shipped copy of the same name, seed and version."""
    import tokenizers
    import torch
    import transformers

    from discovery.reference import get_spec

    spec = get_spec(name)
    if not isinstance(spec, ReferenceSpec):
        raise ValueError(f"{name} is built by hand in seconds, not trained: nothing to ship")
    record = json.loads((trained / "reference.json").read_text())
    if record["name"] != name or record["steps"] != spec.steps + spec.polish_steps:
        raise ValueError(f"{trained} is not a full training run of {name} v{spec.version}: {record}")
    below = {k: v for k, v in spec.targets.items() if record["heldout_accuracy"].get(k, 0.0) < v}
    if below and not below_targets:
        raise ValueError(f"{trained} is below its targets {below}: {record['heldout_accuracy']}")
    target = shipped_dir(spec, record["seed"])
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(trained, target)
    shipped = {
        "name": name,
        "seed": record["seed"],
        "version": spec.version,
        "weight_hash": directory_weight_hash(target),
        "model_safetensors_sha256": file_sha256(target / "model.safetensors"),
        "heldout_accuracy": record["heldout_accuracy"],
        "targets": dict(spec.targets),
        "meets_targets": not below,
        "trained_with": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": spec.num_threads or threads,
            "seconds": record["seconds"],
            "cpu_seconds": record.get("cpu_seconds"),
        },
        "recipe": recipe(spec),
    }
    (target / SHIPPED_RECORD).write_text(json.dumps(shipped, indent=2, sort_keys=True) + "\n")
    return target


def shipped_record(directory: Path) -> dict[str, Any]:
    """The ``shipped.json`` of a shipped model directory."""
    return dict(json.loads((directory / SHIPPED_RECORD).read_text()))
