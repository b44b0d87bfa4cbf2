"""``months``: ``January February March`` -> `` April``."""

from discovery.tasks.sequence import SequenceTask


class MonthsTask(SequenceTask):
    name = "months"
    description = "continue a sequence of months: January February March -> April"
    vocabulary = (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    )
