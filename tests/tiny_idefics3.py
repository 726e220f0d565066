"""A tiny Idefics3 (tokenizer, processor, random-init model) built in memory: no hub.

The geometry is the real one (364x364 tiles, 14 px patches, pixel shuffle 2: 169
``<image>`` tokens per tile), so mmstream's Idefics3 counts apply unchanged; the widths
are tiny (hidden size 32, one vision layer, two text layers), so a frame costs little.
The tokenizer has Idefics3's special tokens and, like Idefics3-8B-Llama3's Llama-3
tokenizer, adds a BOS in front of what it encodes; the chat template has Idefics3's
layout (BOS, ``User:<image>...text<end_of_utterance>\\n``, ``: `` before text-first
turns), written for these tests. ``"\\n"`` is a token of its own, so the final newline
that T2Vid strips is visible in the ids.
"""
from __future__ import annotations

import os

from tokenizers import Tokenizer, models, pre_tokenizers, processors

from hf_compat import pil_image_processor

BOS = "<|begin_of_text|>"
SPECIALS = ([BOS, "<unk>", "<pad>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
             "\n"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
WORDS = ["User", "Assistant", ":", "what", "happens", "?", "a", "cat", "jumps", ".", "the", "video", "is", "it",
         "describe", "this", "clip", "which", "number", "word", "words", "and", "picture", "shows"]
TEMPLATE = (BOS + "{% for m in messages %}{{ m['role'] | capitalize }}"
            "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
            "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}"
            "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
IMAGE_SEQ_LEN = 169  # (364 / 14)^2 / 2^2
TILE = 364


def make_tokenizer(directory: str | os.PathLike, words=WORDS) -> str:
    """Save the tiny Idefics3 tokenizer (with the chat template) into ``directory``."""
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(SPECIALS)
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                      special_tokens=[(BOS, vocab[BOS])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=BOS, unk_token="<unk>", pad_token="<pad>",
                                   model_input_names=["input_ids", "attention_mask"])  # as Llama-3's
    fast.chat_template = TEMPLATE
    fast.save_pretrained(os.fspath(directory))
    return os.fspath(directory)


def image_processor(splitting: bool = False, longest_edge: int = 2 * TILE):
    """Idefics3's image processor: the PIL one on transformers 5 (its default needs
    torchvision), the only one on 4.x (PIL/numpy there)."""
    return pil_image_processor("idefics3", "Idefics3ImageProcessor", do_image_splitting=splitting,
                               size={"longest_edge": longest_edge}, max_image_size={"longest_edge": TILE})


def make_processor(tok_dir: str, splitting: bool = False, longest_edge: int = 2 * TILE):
    from transformers import AutoTokenizer, Idefics3Processor

    tok = AutoTokenizer.from_pretrained(tok_dir)
    return Idefics3Processor(image_processor=image_processor(splitting, longest_edge), tokenizer=tok,
                             image_seq_len=IMAGE_SEQ_LEN, chat_template=TEMPLATE)


def make_model(tokenizer, seed: int = 0):
    """A random-init ``Idefics3ForConditionalGeneration`` with the real structure
    (SigLIP-style vision tower, pixel-shuffle connector, Llama text model), tiny widths."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=TILE, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=32768, pad_token_id=pad, rms_norm_eps=1e-5),
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=pad,
        tie_word_embeddings=False, use_cache=False)
    model = Idefics3ForConditionalGeneration(config)
    model.train()
    return model
