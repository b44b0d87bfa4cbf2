"""``greater-than`` (Hanna et al. 2023): ``The war lasted from the year 1732 to the year 17`` -> YY > 32.

The default is their recipe (hannamw/gpt2-greater-than, ``dataset.py``, ``utils.py::get_valid_years``,
``cache/potential_nouns.txt``, ``circuit_discovery.py``):

- years 1000-1899 whose `` XXYY`` the tokenizer splits into `` XX`` + ``YY`` (two tokens, the second
  two characters), minus the first and the last such year of each century;
- balanced: the i-th prompt's YY is 02, 03, ..., 98, 02, ... in turn, its year drawn among the
  valid years with that YY (any century); the noun drawn (with replacement) from their 120 nouns;
- ``eos=true``: their ``"<|endoftext|> The ..."``, i.e. the BOS token then `` The`` with its space
  (the prompt text here starts with the space; the dataset prepends the BOS token);
- corruption ``01-year``: the start year's YY replaced by ``01`` (``The war lasted from the year
  1701 to the year 17``), patched prompt by prompt in their paper.

The metric is the probability difference: the sum of p(YY') for YY' > YY minus the sum for
YY' <= YY, over the two-digit tokens ``00``..``99`` at the last position.

``century=17`` restricts the years to one century; ``eos=false`` drops the space (the prompt then
starts ``The``, right after the BOS token); ``balanced=false`` draws YY uniformly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from discovery.tasks.base import Example, Task
from discovery.types.errors import TokenizationError, UsageError

# cache/potential_nouns.txt of hannamw/gpt2-greater-than, in its order
NOUNS: tuple[str, ...] = tuple(
    """
abduction accord affair agreement appraisal assaults assessment attack attempts campaign captivity case
challenge chaos clash collaboration coma competition confrontation consequence conspiracy construction
consultation contact contract convention cooperation custody deal decline decrease demonstrations development
disagreement disorder dispute domination dynasty effect effort employment endeavor engagement epidemic
evaluation exchange existence expansion expedition experiments fall fame flights friendship growth hardship
hostility illness impact imprisonment improvement incarceration increase insurgency invasion investigation
journey kingdom marriage modernization negotiation notoriety obstruction operation order outbreak outcome
overhaul patrols pilgrimage plague plan practice process program progress project pursuit quest raids reforms
reign relationship retaliation riot rise rivalry romance rule sanctions shift siege slump stature stint
strikes study test testing tests therapy tour tradition treaty trial trip unemployment voyage warfare work
""".split()
)
assert len(NOUNS) == 120 and len(set(NOUNS)) == 120
YEARS = tuple(f"{yy:02d}" for yy in range(100))
FIRST_YEAR, END_YEAR = 1000, 1900


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def valid_years(tokenizer: Any, start: int = FIRST_YEAR, end: int = END_YEAR) -> list[int]:
    """Years in [start, end) whose `` XXYY`` is two tokens, the second two characters, minus each
    century's first and last such year (Hanna et al.'s ``get_valid_years``)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ok = []
    for year in range(start, end):
        ids = _ids(tokenizer, f" {year}")
        ok.append(len(ids) == 2 and unk not in ids and len(tokenizer.convert_ids_to_tokens(ids)[1]) == 2)
    by_century: dict[int, list[int]] = {}
    for year, good in zip(range(start, end), ok):
        if good:
            by_century.setdefault(year // 100, []).append(year)
    return sorted(y for years in by_century.values() for y in years[1:-1])


class GreaterThanTask(Task):
    name = "greater-than"
    description = "The war lasted from the year 1732 to the year 17 -> a year after 32 (probability difference)"
    corruptions = ("01-year",)
    default_corruption = "01-year"
    metric = "prob_diff"

    def __init__(self, century: int | None = None, eos: bool = True, balanced: bool = True, **params: Any) -> None:
        if century is not None and not (isinstance(century, int) and 10 <= century <= 99):
            raise UsageError(f"task 'greater-than': century must be a two-digit integer, got {century!r}")
        for key, value in (("eos", eos), ("balanced", balanced)):
            if not isinstance(value, bool):
                raise UsageError(f"task 'greater-than': {key} must be true or false, got {value!r}")
        if century is not None:
            params["century"] = century
        super().__init__(eos=eos, balanced=balanced, **params)
        self.century, self.eos, self.balanced = century, eos, balanced

    def nouns(self, tokenizer: Any) -> list[str]:
        unk = getattr(tokenizer, "unk_token_id", None)
        nouns = [w for w in NOUNS if len(ids := _ids(tokenizer, " " + w)) == 1 and ids[0] != unk]
        if not nouns:
            raise TokenizationError("greater-than: none of the nouns is one token for this tokenizer")
        return nouns

    def years(self, tokenizer: Any) -> list[int]:
        if self.century is None:
            years, where = valid_years(tokenizer), f"{FIRST_YEAR}-{END_YEAR - 1}"
        else:
            years, where = valid_years(tokenizer, self.century * 100, self.century * 100 + 100), f"{self.century}xx"
        if not years:
            example = _ids(tokenizer, " 1732")
            raise TokenizationError(
                f"greater-than: no year {where} splits into ' XX' + 'YY' for this tokenizer "
                f"(' 1732' is {[tokenizer.decode([i]) for i in example]}), so the two-digit answers do not exist"
            )
        return years

    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        nouns = self.nouns(tokenizer)
        years = self.years(tokenizer)
        by_yy: dict[int, list[int]] = {}
        for y in years:
            by_yy.setdefault(y % 100, []).append(y)
        cycle = [yy for yy in range(2, 99) if yy in by_yy]  # their cycle: 02..98
        rng = np.random.default_rng(seed)
        space = " " if self.eos else ""
        template = space + "The {noun} lasted from the year {xx}{yy} to the year {xx}"
        out = []
        for i in range(n):
            noun = nouns[int(rng.integers(len(nouns)))]
            if self.balanced and cycle:
                pool = by_yy[cycle[i % len(cycle)]]
                year = pool[int(rng.integers(len(pool)))]
            else:
                year = years[int(rng.integers(len(years)))]
            xx, yy = year // 100, year % 100
            out.append(
                Example(
                    clean=template.format(noun=noun, xx=xx, yy=f"{yy:02d}"),
                    corrupt=template.format(noun=noun, xx=xx, yy="01"),
                    correct=YEARS[yy + 1 :],
                    wrong=YEARS[: yy + 1],
                )
            )
        return out
