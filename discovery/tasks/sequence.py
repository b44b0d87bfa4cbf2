"""Shared machinery of the sequence-continuation tasks (digits, number words, months).

A prompt shows ``length`` consecutive members of an ordered vocabulary and asks for the next one.
Templates:

- ``plain``: ``1 2 3 4`` -> `` 5``;
- ``done-in`` (Lan & Barez 2024): ``Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4.
  Sun done in`` -> `` 5``, with the objects drawn at random.

The wrong answer of the logit difference is the last shown member repeated (`` 4``), as in Lan &
Barez. Corruptions: ``repeat-last`` (the last shown member replaced by a repeat of the one before
it: ``1 2 3 3``) and ``random`` (members drawn at random from the vocabulary: the "random
members" prompts Lan & Barez take their means over).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from discovery.tasks.base import Example, Task
from discovery.types.errors import UsageError

TEMPLATES = ("plain", "done-in")
# One-token objects in GPT-2's vocabulary (with a leading space), as in Lan & Barez's prompts.
DONE_IN_OBJECTS = (
    "Van",
    "Hat",
    "Ring",
    "Desk",
    "Sun",
    "Car",
    "Cup",
    "Box",
    "Pen",
    "Door",
    "Book",
    "Key",
    "Bag",
    "Bed",
    "Bus",
    "Lamp",
    "Shoe",
    "Tree",
    "Ship",
    "Coat",
)


class SequenceTask(Task):
    vocabulary: ClassVar[tuple[str, ...]]
    corruptions = ("repeat-last", "random")
    default_corruption = "repeat-last"
    metric = "logit_diff"

    def __init__(self, length: int = 4, template: str = "plain", **params: Any) -> None:
        if template not in TEMPLATES:
            raise UsageError(
                f"task {self.name!r}: unknown template {template!r}; choose one of: {', '.join(TEMPLATES)}"
            )
        if not 2 <= length <= len(self.vocabulary) - 1:
            raise UsageError(
                f"task {self.name!r}: length must be between 2 and {len(self.vocabulary) - 1}, got {length}"
            )
        super().__init__(length=length, template=template, **params)
        self.length = length
        self.template = template

    def render(self, members: list[str], objects: list[str]) -> str:
        if self.template == "plain":
            return " ".join(members)
        parts = [f"{obj} done in {m}." for obj, m in zip(objects, members)]
        return " ".join(parts + [f"{objects[len(members)]} done in"])

    def single_token_objects(self, tokenizer: Any) -> tuple[str, ...]:
        """The objects that are one token both at the prompt's start and after a space."""
        if self.template != "done-in":
            return DONE_IN_OBJECTS
        unk = getattr(tokenizer, "unk_token_id", None)

        def one_token(text: str) -> bool:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return len(ids) == 1 and ids[0] != unk

        pool = tuple(o for o in DONE_IN_OBJECTS if one_token(o) and one_token(" " + o))
        if len(pool) < self.length + 1:
            raise UsageError(
                f"task {self.name!r}: the done-in template needs {self.length + 1} one-token objects, "
                f"this tokenizer has {len(pool)} of {DONE_IN_OBJECTS}"
            )
        return pool

    def examples(self, n: int, seed: int, corruption: str, tokenizer: Any) -> list[Example]:
        # separate streams: the clean prompts are the same whichever corruption is chosen
        rng = np.random.default_rng([seed, 0])
        corrupt_rng = np.random.default_rng([seed, 1])
        vocab = self.vocabulary
        objects_pool = self.single_token_objects(tokenizer)
        out = []
        for _ in range(n):
            start = int(rng.integers(0, len(vocab) - self.length))
            members = list(vocab[start : start + self.length])
            answer = vocab[start + self.length]
            objects = [str(o) for o in rng.choice(objects_pool, self.length + 1, replace=False)]
            clean = self.render(members, objects)
            if corruption == "repeat-last":
                corrupt = self.render(members[:-1] + [members[-2]], objects)
            else:
                corrupt = self._random_twin(corrupt_rng, clean, objects, tokenizer)
            out.append(
                Example(
                    clean=clean,
                    corrupt=corrupt,
                    correct=(" " + answer,),
                    wrong=(" " + members[-1],),
                )
            )
        return out

    def _random_twin(self, rng: np.random.Generator, clean: str, objects: list[str], tokenizer: Any) -> str:
        """Random members rendered like ``clean``, redrawn until the token lengths match (a member
        can be one token after a space and two at the start of a prompt)."""
        target = len(tokenizer(clean, add_special_tokens=False)["input_ids"])
        for _ in range(100):
            text = self.render([str(m) for m in rng.choice(self.vocabulary, self.length)], objects)
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) == target:
                return text
        raise UsageError(f"task {self.name!r}: found no random sequence with the token length of {clean!r}")
