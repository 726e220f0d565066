"""Tiny in-memory tokenizers for token-count tests (no hub, no network).

A word-level tokenizer splitting on ``\\w+|[^\\w\\s]+`` (whitespace is dropped), with
the given special tokens kept whole. So a text's length is predictable by hand:
:func:`pieces` is the oracle the tests count with.
"""
from __future__ import annotations

import re

from tokenizers import Tokenizer, models, pre_tokenizers

WORD_RE = re.compile(r"\w+|[^\w\s]+")


def pieces(text: str, specials=()) -> int:
    """How many tokens the tiny tokenizer makes of ``text`` (specials count one each)."""
    if specials:
        parts = re.split("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")", text)
        return sum(1 if p in specials else len(WORD_RE.findall(p)) for p in parts if p)
    return len(WORD_RE.findall(text))


def make_tokenizer(directory, specials=(), bos="<s>", unk="<unk>", chat_template=None):
    """Build, save into ``directory`` and load back with ``AutoTokenizer``; returns the path."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    names = [unk] + ([bos] if bos else []) + [s for s in specials if s not in (unk, bos)]
    vocab = {tok: i for i, tok in enumerate(names + ["the", "a", "what", "video", "is", "<", ">"])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(names)
    kwargs = {"unk_token": unk}
    if bos:
        kwargs["bos_token"] = bos
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, **kwargs)
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(directory))  # fail here, not in the test, if it does not round-trip
    return str(directory)


# A plain string-content template (MiniCPM-V / Qwen style), written for these tests.
STRING_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
                   "{% endfor %}")
STRING_TEMPLATE_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]

# A list-content template in Idefics3's layout ("User:<image>...text<end_of_utterance>\n").
LIST_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}:"
                 "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}"
                 "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}")
