"""Word lists shared by a task and a reference model, kept in a module that imports nothing.

The ``induction`` task (:mod:`discovery.tasks.induction`) draws its prompts from
:data:`INDUCTION_WORDS` and the ``induction`` reference model (:mod:`discovery.reference`) is
trained on the same words. Keeping the list here, rather than in either package, is what lets
dependencies run one way: ``reference`` imports ``tasks`` (the ``sequences`` model is trained on
the tasks' own prompts) and nothing in ``tasks`` imports ``reference``.
"""

from __future__ import annotations

# Common English words, each one token in GPT-2's vocabulary both bare and after a space, so the
# induction task builds the same kind of prompt for GPT-2-tokenised models.
INDUCTION_WORDS: tuple[str, ...] = tuple(
    """
time year day man way thing world life hand part child eye place week case point number group
problem fact house book car tree door room water money story night river city game line name rock
king ship road fish bird horse cat dog bread glass stone paper plant field hill lake sea moon star
sun rain wind fire ice gold iron wood wall box bag cup hat coat bed key pen bell ring ball song word
page letter table chair floor window farm shop bank church school train plane boat bike wheel engine
wire chain knife fork plate bowl pot pan oven apple orange cake rice corn bean egg meat wine beer
cream nut seed leaf root flower grass forest wave storm cloud sky light shadow color
""".split()
)
assert len(INDUCTION_WORDS) == 128 and len(set(INDUCTION_WORDS)) == 128
