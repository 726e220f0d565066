"""Plug the stream into a plain PyTorch training loop, checkpoint, and resume mid-epoch.

    python examples/train_loop.py CONFIG --steps 6 --checkpoint ckpt.pt          # trains, saves at the end
    python examples/train_loop.py CONFIG --steps 12 --checkpoint ckpt.pt --resume # continues where it stopped

The model is deliberately tiny (a linear probe on time-averaged 32x32 frames that
predicts which source a sample came from): the point is the data path. The loader is
torchdata's StatefulDataLoader, so its state_dict() goes into the checkpoint next to
the model's and the resumed run sees exactly the samples the first run had not.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from torchdata.stateful_dataloader import StatefulDataLoader

from mmstream import StreamingDataset

SIDE = 32


def to_tensor(sample) -> torch.Tensor:
    """Time-averaged 32x32 RGB of all the sample's frames, as a flat float vector."""
    frames = [torch.from_numpy(c.frames) for c in sample.clips]
    if not frames:
        return torch.zeros(3 * SIDE * SIDE)
    pooled = []
    for f in frames:
        x = f.permute(0, 3, 1, 2).float() / 255.0  # T, 3, H, W
        pooled.append(F.interpolate(x, size=(SIDE, SIDE), mode="area").mean(0))
    return torch.stack(pooled).mean(0).flatten()


class Collate:
    """Batch samples into (inputs, source labels, keys). A class so workers can pickle it."""

    def __init__(self, sources: list[str]):
        self.index = {name: i for i, name in enumerate(sources)}

    def __call__(self, samples):
        x = torch.stack([to_tensor(s) for s in samples])
        y = torch.tensor([self.index[s.source] for s in samples])
        return x, y, [s.key for s in samples]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=10, help="stop after this many optimizer steps in total")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--checkpoint", default="train_loop_ckpt.pt")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--seen-log", default=None, help="append the keys of every trained sample (JSON lines)")
    args = p.parse_args(argv)

    ds = StreamingDataset(args.config)
    sources = [s.name for s in ds.config.sources]
    model = torch.nn.Linear(3 * SIDE * SIDE, len(sources))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = StatefulDataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                                collate_fn=Collate(sources))
    step, epoch = 0, 0
    if args.resume:
        ckpt = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader"])
        step, epoch = ckpt["step"], ckpt["epoch"]
        print(f"resumed at step {step}, epoch {epoch}")

    done = False
    while epoch < args.epochs and not done:
        ds.set_epoch(epoch)
        for x, y, keys in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            print(f"epoch {epoch} step {step} loss {loss.item():.4f} keys {keys}")
            if args.seen_log:
                with open(args.seen_log, "a") as f:
                    f.write(json.dumps({"epoch": epoch, "keys": keys}) + "\n")
            if step >= args.steps:
                done = True
                break
        else:
            epoch += 1
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
                "step": step, "epoch": epoch}, args.checkpoint + ".tmp")
    os.replace(args.checkpoint + ".tmp", args.checkpoint)
    print(f"saved {args.checkpoint} at step {step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
