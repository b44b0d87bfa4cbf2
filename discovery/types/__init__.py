"""The nouns: what every room of the package names, and none of them computes (no torch here).

- :mod:`~discovery.types.circuit`: :class:`Circuit` (nodes and edges, one canonical key), the
  model's shape, component and edge parsing;
- :mod:`~discovery.types.evaluation`: :class:`Ablation`, :class:`EvaluationMethod` (stored beside
  every score), :class:`Score`, :func:`normalise`;
- :mod:`~discovery.types.identity`: :class:`ModelIdentity` (spec, architecture, shape, weight hash);
- :mod:`~discovery.types.jobs`: :class:`JobStatus`;
- :mod:`~discovery.types.metrics`: the built-in metrics' names;
- :mod:`~discovery.types.errors`: the one root exception and its kinds;
- :mod:`~discovery.types.progress`: the progress callback every long computation takes.

``tests/test_layering.py`` checks that importing these (and the store, and the dashboard's
queries) loads no torch.
"""

from discovery.types.circuit import Circuit, ModelShape
from discovery.types.errors import CircuitsError, StoreError, TokenizationError, UsageError
from discovery.types.evaluation import (
    ABLATION_KINDS,
    NORMALISER,
    RELIABLE_SPAN,
    Ablation,
    AblationKind,
    EvaluationMethod,
    Score,
    normalise,
)
from discovery.types.identity import ModelIdentity
from discovery.types.jobs import FINISHED_STATES, JobStatus
from discovery.types.metrics import BUILTIN_METRICS, TASK_METRICS, MetricName
from discovery.types.progress import ProgressCallback

__all__ = [
    "ABLATION_KINDS",
    "BUILTIN_METRICS",
    "FINISHED_STATES",
    "NORMALISER",
    "RELIABLE_SPAN",
    "TASK_METRICS",
    "Ablation",
    "AblationKind",
    "Circuit",
    "CircuitsError",
    "EvaluationMethod",
    "JobStatus",
    "MetricName",
    "ModelIdentity",
    "ModelShape",
    "ProgressCallback",
    "Score",
    "StoreError",
    "TokenizationError",
    "UsageError",
    "normalise",
]
