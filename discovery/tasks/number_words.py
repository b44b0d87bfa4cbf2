"""``number-words``: ``one two three`` -> `` four``."""

from discovery.tasks.sequence import SequenceTask


class NumberWordsTask(SequenceTask):
    name = "number-words"
    description = "continue a sequence of number words: one two three -> four"
    vocabulary = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
