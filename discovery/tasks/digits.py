"""``digits``: increasing integer sequences, ``1 2 3 4`` -> `` 5`` (start varies per prompt)."""

from discovery.tasks.sequence import SequenceTask


class DigitsTask(SequenceTask):
    name = "digits"
    description = "continue an increasing integer sequence: 1 2 3 4 -> 5"
    vocabulary = tuple(str(i) for i in range(1, 51))
