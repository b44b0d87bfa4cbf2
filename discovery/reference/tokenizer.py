"""The reference models' tokenizer: a word-level vocabulary behind GPT-2's byte-level pre-tokenizer.

GPT-2's pre-tokenizer splits text into words that carry their leading space (``"1 2 3"`` ->
``1``, ``Ġ2``, ``Ġ3``; ``"in 4."`` -> ``in``, ``Ġ4``, ``.``), so a prompt is split exactly where
GPT-2 would split it, but each piece is looked up whole in a small vocabulary instead of being
cut into BPE merges. Every word is present in both forms (``word`` at the start of a text and
``Ġword`` after a space); anything else becomes ``<unk>``. ``<|endoftext|>`` is the BOS/EOS
token, as in GPT-2. A small vocabulary is what makes training on two CPU cores take minutes.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

ENDOFTEXT = "<|endoftext|>"
UNK = "<unk>"
SPECIAL_TOKENS = (ENDOFTEXT, UNK)


def vocabulary(words: Iterable[str]) -> dict[str, int]:
    """Token -> id: the special tokens, then every word bare, then every word after a space (``Ġword``)."""
    words = list(dict.fromkeys(words))  # keep order, drop repeats
    for w in words:
        if not w or any(c.isspace() for c in w) or not w.isascii():
            raise ValueError(f"vocabulary word {w!r} must be non-empty ASCII without spaces")
    tokens = list(SPECIAL_TOKENS) + words + ["\u0120" + w for w in words]
    return {t: i for i, t in enumerate(tokens)}


def build_tokenizer(words: Iterable[str]):
    """A ``transformers.PreTrainedTokenizerFast`` over ``words`` (see the module docstring)."""
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocabulary(words), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        unk_token=UNK,
        pad_token=ENDOFTEXT,
        model_max_length=1024,
    )
