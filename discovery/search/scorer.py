"""The :class:`Scorer` protocol a search method receives, and :class:`ScorerWrapper`, the base of the
scorers that wrap another (counting, tracking, storing). Both live in :mod:`discovery.scoring.scorer`,
which the store imports without torch; search methods import them from here."""

from discovery.scoring.scorer import Scorer, ScorerWrapper

__all__ = ["Scorer", "ScorerWrapper"]
