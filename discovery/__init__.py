"""circuit-discovery: find, score, store and compare circuits in transformer language models.

The Python API (see :mod:`discovery.api`)::

    import discovery as cd

    model = cd.load_model("ref:sequences")         # a spec, an HF model object or a TransformerBridge
    ds = cd.dataset(model, "digits", template="done-in")
    cd.evaluate(model, ["0.2,1.2"], ds)             # -> [Score], each with its EvaluationMethod
    cd.discover(model, ds, method="greedy", target=0.9)
    cd.evaluations(cd.open_store())                 # stored scores as a pandas DataFrame

Rooms: :mod:`discovery.types` (the nouns: circuit, ablation, score, identity; no torch),
:mod:`discovery.model` (loading), :mod:`discovery.engine` (the one forward), :mod:`discovery.scoring`
(evaluators, edge forward, path patching, metrics), :mod:`discovery.tasks`, :mod:`discovery.search`
(the methods' registry), :mod:`discovery.analysis` (curves, comparisons, the papers' pipelines),
:mod:`discovery.pictures`, :mod:`discovery.formats` (peers' file formats), :mod:`discovery.reference`
(the reference models), :mod:`discovery.store`, :mod:`discovery.service`; faces: this module and
:mod:`discovery.api`, :mod:`discovery.cli`, :mod:`discovery.dashboard`.
"""

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

_API = {
    "circuits": "discovery.api",
    "curve": "discovery.api",
    "dataset": "discovery.api",
    "discover": "discovery.api",
    "evaluate": "discovery.api",
    "evaluations": "discovery.api",
    "build_evaluator": "discovery.api",
    "load_model": "discovery.api",
    "open_store": "discovery.api",
    "patch": "discovery.api",
    "runs": "discovery.api",
    "register_metric": "discovery.scoring.metrics",
    "Circuit": "discovery.types.circuit",
    "Ablation": "discovery.types.evaluation",
    "EvaluationMethod": "discovery.types.evaluation",
    "Score": "discovery.types.evaluation",
}


def __getattr__(name: str) -> object:
    # lazy: ``import discovery.types.circuit`` (or the CLI's --help) does not pay for torch and transformers
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'discovery' has no attribute {name!r}")


__all__ = [
    "Ablation",
    "Circuit",
    "EvaluationMethod",
    "Score",
    "__version__",
    "circuits",
    "curve",
    "dataset",
    "discover",
    "evaluate",
    "evaluations",
    "build_evaluator",
    "load_model",
    "open_store",
    "patch",
    "register_metric",
    "runs",
]
