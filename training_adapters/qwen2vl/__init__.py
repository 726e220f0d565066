"""Qwen2-VL / Qwen2.5-VL: model-ready batches from the stream (see :mod:`.collator`).

    processor = make_processor(ds.model.name, tokenizer)      # or AutoProcessor.from_pretrained(checkpoint)
    collate = Qwen2VLCollator(processor, ds.model, hf_config)
    loader = StatefulDataLoader(ds, batch_size=4, num_workers=4, collate_fn=collate)
    model(**model_inputs(batch)).loss.backward()
"""
from .collator import MODEL_KEYS, Qwen2VLCollator, model_inputs, to_device
from .encode import COUNT_MISMATCH, IGNORE_INDEX, PROCESSOR_ERROR, SampleEncoder
from .processor import make_processor, resize_kwargs
from .rope import RopeIndex

__all__ = ["Qwen2VLCollator", "model_inputs", "to_device", "MODEL_KEYS", "SampleEncoder", "make_processor",
           "resize_kwargs", "RopeIndex", "IGNORE_INDEX", "PROCESSOR_ERROR", "COUNT_MISMATCH"]
