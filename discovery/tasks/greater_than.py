"""``greater-than`` (Hanna et al. 2023): ``The war lasted from the year 1732 to the year 17`` -> YY > 32.

The metric is the probability difference: sum of p(YY') for YY' > YY minus sum of p(YY') for
YY' <= YY, over the two-digit year tokens ``00``..``99`` at the last position. The noun varies
over Hanna et al.'s list (those that are one token for the model's tokenizer) and YY over 02..98
(those years whose ``17YY`` splits into ``17`` + ``YY``, as the paper requires).

Corruption ``01-year`` replaces the start year's YY with ``01``, so nothing in the prompt tells
which years are later.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from discovery.errors import TokenizationError
from discovery.tasks.base import Example, Task

NOUNS = (
    "war",
    "dynasty",
    "abduction",
    "accord",
    "affair",
    "agreement",
    "assessment",
    "attack",
    "campaign",
    "captivity",
    "case",
    "challenge",
    "clash",
    "competition",
    "conspiracy",
    "construction",
    "contract",
    "convention",
    "cooperation",
    "custody",
    "deal",
    "decline",
    "development",
    "dispute",
    "effort",
    "employment",
    "engagement",
    "epidemic",
    "exchange",
    "expansion",
    "expedition",
    "fall",
    "friendship",
    "growth",
    "illness",
    "impact",
    "imprisonment",
    "increase",
    "invasion",
    "investigation",
    "journey",
    "kingdom",
    "marriage",
    "negotiation",
    "operation",
    "order",
    "outbreak",
    "pilgrimage",
    "plague",
    "plan",
    "practice",
    "process",
    "program",
    "progress",
    "project",
    "pursuit",
    "quest",
    "reign",
    "relationship",
    "riot",
    "rise",
    "rivalry",
    "rule",
    "siege",
    "study",
    "test",
    "therapy",
    "tour",
    "tradition",
    "treaty",
    "trial",
    "trip",
    "voyage",
    "work",
)
YEARS = tuple(f"{yy:02d}" for yy in range(100))


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class GreaterThanTask(Task):
    name = "greater-than"
    description = "The war lasted from the year 1732 to the year 17 -> a year after 32 (probability difference)"
    corruptions = ("01-year",)
    default_corruption = "01-year"
    metric = "prob_diff"

    def __init__(self, century: int = 17, **params: Any) -> None:
        super().__init__(century=century, **params)
        self.century = century

    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        cc = str(self.century)
        unk = getattr(tokenizer, "unk_token_id", None)
        nouns = [w for w in NOUNS if len(ids := _ids(tokenizer, " " + w)) == 1 and ids[0] != unk]
        if not nouns:
            raise TokenizationError("greater-than: none of the nouns is one token for this tokenizer")
        century_ids = _ids(tokenizer, " " + cc)
        years = [
            yy
            for yy in range(2, 99)
            if _ids(tokenizer, f" {cc}{yy:02d}") == century_ids + _ids(tokenizer, f"{yy:02d}")
            and len(_ids(tokenizer, f"{yy:02d}")) == 1
        ]
        if not years:
            raise TokenizationError(
                f"greater-than: no year {cc}02..{cc}98 splits into '{cc}' + 'YY' for this tokenizer"
            )
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            noun = nouns[int(rng.integers(len(nouns)))]
            yy = years[int(rng.integers(len(years)))]
            start = f"{yy:02d}" if corruption != "01-year" else "01"
            template = "The {noun} lasted from the year {cc}{yy} to the year {cc}"
            out.append(
                Example(
                    clean=template.format(noun=noun, cc=cc, yy=f"{yy:02d}"),
                    corrupt=template.format(noun=noun, cc=cc, yy=start),
                    correct=YEARS[yy + 1 :],
                    wrong=YEARS[: yy + 1],
                )
            )
        return out
