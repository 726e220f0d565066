"""Tiny in-memory tokenizers for token-count tests (no hub, no network).

A word-level tokenizer splitting on ``\\w+|[^\\w\\s]+`` (whitespace is dropped), with
the given special tokens kept whole. So a text's length is predictable by hand:
:func:`pieces` is the oracle the tests count with.
"""
from __future__ import annotations

import re

from tokenizers import Tokenizer, models, pre_tokenizers

from training_adapters.qwen2vl.tiny import QWEN_SPECIAL_TOKENS

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


# -- a Qwen2-VL-style tokenizer: whitespace is tokens, so a stripped newline shows ------------

#: Qwen2-VL's vision tokens: a medium is <|vision_start|> pads <|vision_end|>.
QWEN_VISION_TOKENS = [t for t in QWEN_SPECIAL_TOKENS if "vision" in t or "pad" in t]
#: Each run of letters/digits, each other character (a newline, a space, a "?") is one token.
QWEN_PIECE_RE = re.compile(r"\w+|[^\w\s]|\s")

# A chat template in Qwen2-VL's layout, written for these tests: a default system turn when
# the first is not one; string content as it is; content parts rendered in order, a medium as
# <|vision_start|><|image_pad|>/<|video_pad|><|vision_end|>, text as its text.
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def qwen_pieces(text: str) -> list[str]:
    """The tokens the tiny Qwen-style tokenizer makes of ``text`` (its oracle)."""
    parts = re.split("(" + "|".join(re.escape(s) for s in QWEN_SPECIAL_TOKENS) + ")", text)
    return [t for p in parts if p for t in ([p] if p in QWEN_SPECIAL_TOKENS else QWEN_PIECE_RE.findall(p))]


def make_qwen_tokenizer(directory, words=(), chat_template=QWEN_TEMPLATE):
    """A word-level tokenizer with Qwen2-VL's special tokens and whitespace kept as tokens
    (:data:`QWEN_PIECE_RE`), every piece of ``words`` in its vocabulary (others are
    ``<unk>``), ``<|endoftext|>`` its pad token; saved into ``directory``, returns the path."""
    from tokenizers import Regex
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    names = ["<unk>"] + QWEN_SPECIAL_TOKENS
    pieces_ = sorted({p for w in words for p in QWEN_PIECE_RE.findall(w)} | {"\n", " ", "system", "user",
                     "assistant", "You", "are", "a", "helpful", "."})
    vocab = {tok: i for i, tok in enumerate(names + [p for p in pieces_ if p not in names])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(QWEN_PIECE_RE.pattern), behavior="isolated")
    tk.add_special_tokens(names)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")
    fast.chat_template = chat_template
    fast.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(directory))
    return str(directory)
