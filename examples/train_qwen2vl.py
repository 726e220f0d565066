"""Train a tiny Qwen2-VL (or Qwen2.5-VL) on the demo data: model-ready batches made in the
DataLoader workers, checkpoint, resume exactly.

    python -m mmstream.demo build/demo
    python examples/train_qwen2vl.py build/demo/demo.yaml --steps 300 --checkpoint build/qwen_ckpt.pt
    python examples/train_qwen2vl.py build/demo/demo.yaml --steps 400 --checkpoint build/qwen_ckpt.pt --resume

The demo's sources become a Qwen recipe (``qwen2vl_demo.yaml`` written next to the demo
config): the first ``--records`` records of each source (a small fixed set to overfit:
videos, an image with a video, a frame folder, T2Vid text pages, and a synthetic record
the length filter drops), 1 fps, at most 4 frames, frames resized to at most 112x112
(16 tokens each, a temporal pair of video frames 16), ``token_count: chat_template``. The
tokenizer is a word-level one over the demo's annotations with Qwen's special tokens and
a ChatML template; the model is ``Qwen2VLForConditionalGeneration`` built from a small
config (2 layers, hidden size 64, the real vision tower), random-initialised. Both stand
in for a checkpoint (there is no model hub here): with a real one, load its processor and
model instead, the rest is the same.

Each step logs a JSON line (``--log``): step, epoch, loss, the batch's keys and its drops.
The checkpoint holds the model, the optimizer and the ``StatefulDataLoader`` state;
``--save-at K`` also saves ``CHECKPOINT.stepK`` at step K and goes on, so a run resumed
from it (``--checkpoint CHECKPOINT.stepK --resume``) can be compared with the
uninterrupted one: it logs the same keys and losses.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import torch
import yaml
from torchdata.stateful_dataloader import StatefulDataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # training_adapters/ lives next to mmstream/, not inside it

from mmstream import StreamingDataset  # noqa: E402
from training_adapters.qwen2vl import Qwen2VLCollator, make_processor, model_inputs  # noqa: E402
from training_adapters.qwen2vl.tiny import tiny_model, tiny_tokenizer, words_of  # noqa: E402

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112, "video_min_pixels": 56 * 56, "video_max_pixels": 112 * 112}


def read_annotations(path: str) -> list:
    """Records of a JSON array or JSONL file (malformed lines skipped)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


def qwen_recipe(demo_config: str, family: str, records: int, pack: int = 0) -> str:
    """Write ``qwen2vl_demo.yaml`` next to the demo config (paths stay relative); return it."""
    folder = os.path.dirname(os.path.abspath(demo_config))
    with open(demo_config, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    texts = [w for s in cfg["sources"] for w in words_of(read_annotations(os.path.join(folder, s["annotations"])))]
    tok_dir = tiny_tokenizer(os.path.join(folder, "qwen_tokenizer"), texts)
    for s in cfg["sources"]:
        s["limit"] = records
    cfg["sampling"].update(fps=1.0, max_frames=4)
    cfg["model"] = {"name": family, "tokenizer": os.path.relpath(tok_dir, folder), "token_count": "chat_template",
                    "options": dict(PIXELS, second_per_grid="hf")}
    cfg["loader"].update(shuffle=True, mix_buffer=0, pack={"max_tokens": pack, "buffer": 16} if pack else None)
    cfg.pop("output", None)
    path = os.path.join(folder, "qwen2vl_demo.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# {family} on the demo data, written by examples/train_qwen2vl.py from {os.path.basename(demo_config)}\n")
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path


def save(path: str, **state) -> None:
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the demo config (python -m mmstream.demo DIR prints it)")
    p.add_argument("--family", default="qwen2-vl", choices=["qwen2-vl", "qwen2.5-vl"])
    p.add_argument("--steps", type=int, default=300, help="stop after this many optimizer steps in total")
    p.add_argument("--records", type=int, default=2, help="records taken from each demo source")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--pack", type=int, default=0, help="pack samples into sequences of this many tokens "
                                                       "(loader.pack; one pack per step) instead of padded batches")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--checkpoint", default="qwen2vl_ckpt.pt")
    p.add_argument("--save-at", type=int, default=None, help="also save CHECKPOINT.stepN at step N and go on")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--log", default=None, help="append one JSON line per step")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process (the tiny "
                                                          "model gains nothing from more; the workers need the cores)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = qwen_recipe(args.config, args.family, args.records, args.pack)
    ds = StreamingDataset(recipe, emit_drops=True)  # emit_drops: the stream's drops reach the loop too
    tokenizer = ds.model.tokenizer
    model = tiny_model(args.family, tokenizer, hidden=64, heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    collate = Qwen2VLCollator(make_processor(args.family, tokenizer), ds.model, model.config)
    loader = StatefulDataLoader(ds, batch_size=None if args.pack else args.batch_size, num_workers=args.workers,
                                collate_fn=collate)
    step, epoch = 0, 0
    if args.resume:
        ckpt = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])
        step, epoch = ckpt["step"], ckpt["epoch"]
        print(f"resumed at step {step}, epoch {epoch}")

    model.train()
    losses: list[float] = []
    drops: Counter = Counter()
    done = step >= args.steps
    while not done:
        ds.set_epoch(epoch)
        for batch in loader:
            drops.update(d.reason for d in batch["dropped"])
            if not batch["keys"]:
                continue  # every sample of this batch was dropped (counted above)
            loss = model(**model_inputs(batch)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            print(f"epoch {epoch} step {step} loss {loss.item():.4f} keys {batch['keys']}", flush=True)
            if args.log:
                with open(args.log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "epoch": epoch, "loss": loss.item(), "keys": batch["keys"],
                                        "dropped": [d.reason for d in batch["dropped"]]}) + "\n")
            if step == args.save_at or step >= args.steps:
                path = args.checkpoint if step >= args.steps else f"{args.checkpoint}.step{step}"
                save(path, model=model.state_dict(), optimizer=opt.state_dict(), loader=loader.state_dict(),
                     step=step, epoch=epoch)
                print(f"saved {path} at step {step}")
            if step >= args.steps:
                done = True
                break
        else:
            epoch += 1
    if losses:
        k = max(1, min(10, len(losses) // 4))
        print(f"loss: first {k} steps {sum(losses[:k]) / k:.4f} -> last {k} steps {sum(losses[-k:]) / k:.4f}")
    print(f"dropped: {dict(drops)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
