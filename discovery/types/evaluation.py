"""What a score means: the ablation, the evaluation method stored beside every score, the score itself.

Torch-free, like every module of :mod:`discovery.types`: the store, the dashboard and the CLI's
argument checks import these without loading torch or a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from discovery.types.circuit import Circuit
from discovery.types.errors import UsageError

AblationKind = Literal["mean", "resample", "zero"]
ABLATION_KINDS: tuple[AblationKind, ...] = ("mean", "resample", "zero")
NORMALISER = "(circuit - ablated) / (full - ablated)"
RELIABLE_SPAN = 0.5
"""|full - ablated| below this many standard deviations of the full model's per-prompt metric makes
the normalised score unreliable: the two ends differ by less than prompts differ from each other."""


@dataclass(frozen=True)
class Ablation:
    """How components outside a circuit are removed."""

    kind: AblationKind = "mean"
    source: Literal["corrupt", "clean"] = "corrupt"
    """Which prompts of the dataset the replacement values come from."""
    ablate_mlps: bool = False
    """Node level: also replace MLPs outside the circuit (otherwise every MLP is kept)."""
    ablate_embed: bool = False
    """Edge level only: the embedding's edges are ablatable like any other (ACDC's and EAP-IG's graph,
    whose input node sends edges that can be pruned): a receiver whose ``embed`` edge is not in the
    circuit reads the replacement embedding (the source prompts' mean, paired or zero embedding)
    instead of its clean one. Node-level circuits always keep the embedding."""

    def __post_init__(self) -> None:
        if self.kind not in ABLATION_KINDS:
            raise UsageError(f"unknown ablation {self.kind!r}; choose one of: {', '.join(ABLATION_KINDS)}")
        if self.source not in ("corrupt", "clean"):
            raise UsageError(f"unknown ablation source {self.source!r}; choose corrupt or clean")


@dataclass(frozen=True)
class EvaluationMethod:
    """Everything a score's meaning depends on besides the circuit and the model."""

    ablation: AblationKind
    source: str
    """The dataset the replacement values come from, e.g. ``digits[corruption=repeat-last,n=50,seed=0]:corrupt``."""
    level: Literal["node", "edge"]
    ablate_mlps: bool
    metric: str
    normaliser: str = NORMALISER
    ablate_embed: bool = False
    """Edge level: the embedding's edges were ablatable too (see :attr:`Ablation.ablate_embed`)."""

    def describe(self) -> str:
        mlps = "heads and MLPs ablated" if self.ablate_mlps else "heads ablated, MLPs kept"
        if self.ablate_embed:
            mlps += ", embedding edges ablatable"
        return (
            f"{self.ablation} ablation over {self.source}; {self.level} level, {mlps}; "
            f"metric {self.metric}; normalised {self.normaliser}"
        )


@dataclass(frozen=True)
class Score:
    """A circuit's metric under one evaluation method, with the two ends it is normalised by."""

    circuit: Circuit
    metric: float
    normalised: float
    full: float
    ablated: float
    method: EvaluationMethod
    reliable: bool = True
    """False when full and ablated nearly coincide (see :attr:`Evaluator.span_note`): the normalised
    score then means nothing and is flagged wherever it is shown."""

    @property
    def ratio(self) -> float:
        """``metric(circuit) / metric(full)``: Lan & Barez's score (no ablated baseline)."""
        return float("nan") if self.full == 0 else self.metric / self.full


def normalise(value: float, full: float, ablated: float) -> float:
    span = full - ablated
    return float("nan") if span == 0 else (value - ablated) / span
