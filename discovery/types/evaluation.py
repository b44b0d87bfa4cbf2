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
AblationSource = Literal["corrupt", "clean"]
ABLATION_SOURCES: tuple[AblationSource, ...] = ("corrupt", "clean")
NORMALISER = "(circuit - ablated) / (full - ablated)"
RELIABLE_SPAN = 0.5
"""|full - ablated| below this many standard deviations of the full model's per-prompt metric makes
the normalised score unreliable: the two ends differ by less than prompts differ from each other."""


@dataclass(frozen=True)
class Ablation:
    """How components outside a circuit are removed.

    The one value of the ablation from the caller to the score: the CLI and the API parse their
    words into it (:meth:`parse`), a job carries it (as an :class:`AblationChoice` until the search
    method's defaults are filled in), and the evaluator, the hooked slow path included, takes it."""

    kind: AblationKind = "mean"
    source: AblationSource = "corrupt"
    """Which prompts of the dataset the replacement values come from."""
    ablate_mlps: bool = False
    """Node level: also replace MLPs outside the circuit (otherwise every MLP is kept)."""
    ablate_embed: bool = False
    """Edge level only: the embedding's edges are ablatable like any other (ACDC's and EAP-IG's graph,
    whose input node sends edges that can be pruned): a receiver whose ``embed`` edge is not in the
    circuit reads the replacement embedding (the source prompts' mean, paired or zero embedding)
    instead of its clean one. Node-level circuits always keep the embedding."""

    def __post_init__(self) -> None:
        # the Literal types are not checked at run time: a value from JSON or a test still must be one
        ablation_kind(self.kind)
        ablation_source(self.source)

    @classmethod
    def parse(
        cls, kind: str = "mean", source: str = "corrupt", ablate_mlps: bool = False, ablate_embed: bool = False
    ) -> Ablation:
        """The ablation named by words (a command's options, an API call's keywords, a stored job's
        settings); :class:`UsageError` naming the bad word."""
        return cls(ablation_kind(kind), ablation_source(source), bool(ablate_mlps), bool(ablate_embed))


@dataclass(frozen=True)
class AblationChoice:
    """An ablation as a caller chose it, where a part left unset (None) is the search method's to choose
    (``SearchMethodSpec.evaluation``: ACDC resamples and prunes every edge, as published). What a job
    request carries; :meth:`~discovery.search.base.SearchMethodSpec.resolve_ablation` turns it into the
    :class:`Ablation` the evaluator takes."""

    kind: AblationKind | None = None
    source: AblationSource = "corrupt"
    ablate_mlps: bool | None = None
    ablate_embed: bool | None = None

    def __post_init__(self) -> None:
        if self.kind is not None:
            ablation_kind(self.kind)
        ablation_source(self.source)

    @classmethod
    def parse(
        cls,
        kind: str | None = None,
        source: str = "corrupt",
        ablate_mlps: bool | None = None,
        ablate_embed: bool | None = None,
    ) -> AblationChoice:
        """As :meth:`Ablation.parse`, with None left unset."""
        return cls(
            None if kind is None else ablation_kind(kind),
            ablation_source(source),
            None if ablate_mlps is None else bool(ablate_mlps),
            None if ablate_embed is None else bool(ablate_embed),
        )

    @classmethod
    def of(cls, ablation: Ablation) -> AblationChoice:
        """Every part chosen: exactly ``ablation``."""
        return cls(ablation.kind, ablation.source, ablation.ablate_mlps, ablation.ablate_embed)


_KINDS: dict[str, AblationKind] = {k: k for k in ABLATION_KINDS}
_SOURCES: dict[str, AblationSource] = {s: s for s in ABLATION_SOURCES}


def ablation_kind(word: str) -> AblationKind:
    """``word`` as an :data:`AblationKind`; :class:`UsageError` if it names none."""
    kind = _KINDS.get(word) if isinstance(word, str) else None  # JSON may hold anything
    if kind is None:
        raise UsageError(f"unknown ablation {word!r}; choose one of: {', '.join(ABLATION_KINDS)}")
    return kind


def ablation_source(word: str) -> AblationSource:
    """``word`` as an :data:`AblationSource`; :class:`UsageError` if it names none."""
    source = _SOURCES.get(word) if isinstance(word, str) else None
    if source is None:
        raise UsageError(f"unknown ablation source {word!r}; choose corrupt or clean")
    return source


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
