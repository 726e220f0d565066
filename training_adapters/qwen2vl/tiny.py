"""A tiny, random-initialised Qwen2-VL / Qwen2.5-VL and its tokenizer, built from config
(no hub): for tests, the training example and benchmarks, where the data path is the
point and a real checkpoint is not at hand.

    tok_dir = tiny_tokenizer("build/tiny_qwen_tok", texts)        # word-level, Qwen's special tokens, ChatML
    model = tiny_model("qwen2-vl", AutoTokenizer.from_pretrained(tok_dir))

The tokenizer is word-level (``\\w+|[^\\w\\s]+`` over ``texts``; unknown words are
``<unk>``) with Qwen's special tokens, ``<|endoftext|>`` as padding and ``<|im_end|>`` as
end of turn, and a ChatML chat template written for mmstream after Qwen2-VL's documented
layout: a default system turn when the conversation has none, ``<|im_start|>ROLE\\n...
<|im_end|>\\n`` per turn, string content as is, list content with one
``<|vision_start|><|image_pad|><|vision_end|>`` (or ``<|video_pad|>``) per medium. The
model is the real class with the real vision tower, only small: a few layers, hidden size
32, mRoPE sections summing to half the head size.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Sequence

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]
PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<|im_end|>", "<unk>"
DEFAULT_SYSTEM = "You are a helpful assistant."
FAMILIES = ("qwen2-vl", "qwen2.5-vl")

CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORD_RE = re.compile(r"\w+|[^\w\s]+")


def tiny_tokenizer(folder: str | os.PathLike, texts: Iterable[str] = ()) -> str:
    """Build and save a word-level tokenizer over ``texts`` (plus the chat template's own
    words); returns the folder (load it with ``AutoTokenizer.from_pretrained``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w for t in list(texts) + [DEFAULT_SYSTEM, "system user assistant"] for w in WORD_RE.findall(t)}
    vocab = {tok: i for i, tok in enumerate([UNK_TOKEN] + QWEN_SPECIAL_TOKENS + sorted(words))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([UNK_TOKEN] + QWEN_SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN)
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(folder))
    return str(folder)


def tiny_config(family: str, tokenizer: Any, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                vision_depth: int = 2, tokens_per_second: float = 2, **text_overrides: Any):
    """A ``Qwen2VLConfig`` / ``Qwen2_5_VLConfig`` with the tokenizer's special-token ids."""
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    head_dim = hidden // heads
    quarter = head_dim // 4  # mrope_section sums to head_dim / 2
    text = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2), intermediate_size=2 * hidden, vocab_size=len(tokenizer),
                rope_scaling={"type": "mrope", "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]},
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                **text_overrides)
    if family == "qwen2-vl":
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig(text_config=text, vision_config=dict(
            depth=vision_depth, embed_dim=hidden, hidden_size=hidden, num_heads=2, mlp_ratio=2), **ids)
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            depth=vision_depth, hidden_size=hidden, num_heads=2, intermediate_size=hidden, out_hidden_size=hidden,
            tokens_per_second=tokens_per_second, window_size=56, fullatt_block_indexes=[vision_depth - 1]), **ids)
    raise ValueError(f"family {family!r} is not one of {FAMILIES}")


def tiny_model(family: str, tokenizer: Any, *, seed: int = 0, attn_implementation: str = "sdpa", **config_kw: Any):
    """A random-initialised ``Qwen2VLForConditionalGeneration`` /
    ``Qwen2_5_VLForConditionalGeneration`` (float32, on CPU)."""
    import torch

    from .rope import model_classes

    config = tiny_config(family, tokenizer, **config_kw)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return model_classes(config)[0](config)


def words_of(records: Sequence[dict]) -> list[str]:
    """Every string value in nested JSON-like records (to build a vocabulary from)."""
    out: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(list(records))
    return out


__all__ = ["tiny_tokenizer", "tiny_config", "tiny_model", "words_of", "CHATML_TEMPLATE", "QWEN_SPECIAL_TOKENS",
           "FAMILIES"]
