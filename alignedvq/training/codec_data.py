"""The codec trainer's input pipeline: samples stream from disk through DataLoader workers
(image decoding, the checkpoint's own preprocessing, the conversation's token ids), and the
features at the cut are computed per batch on the training device. Nothing grows with the
dataset but its list of file names and texts: no feature is kept between steps.

The order is a function of the global step alone (a seeded permutation per epoch, cut into
global batches, each process taking its slice), so a resumed run, or one with a different number
of processes, sees the same images at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset

from alignedvq.data.datasets import DatasetError, Sample
from alignedvq.training.conversation_tokens import ConversationTokenizer
from common.imaging.policy import open_image


class CodecSamples(Dataset):
    """Sample i -> pixels (C, H, W) and, when distilling, the conversation's token ids and
    target positions. An unreadable image is returned as an error, not raised: a worker's
    exception would reach the trainer as a multi-line traceback instead of one clear line."""

    def __init__(self, samples: list[Sample], image_processor,
                 tokenizer: ConversationTokenizer | None):
        self.samples = samples
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        sample = self.samples[i]
        try:
            image = open_image(sample.image)
        except (OSError, ValueError) as e:
            return {"error": f"{sample.where}: image {sample.image}: {e}"}
        item = {"pixels": self.image_processor(images=[image],
                                               return_tensors="pt").pixel_values[0]}
        if self.tokenizer is not None:
            tokens = self.tokenizer([(t.question, t.answer) for t in sample.turns])
            item["ids"], item["targets"] = tokens.ids, tokens.targets
        return item


@dataclass
class Batch:
    pixels: torch.Tensor                 # (B, C, H, W)
    ids: torch.Tensor | None = None      # (B, L) right-padded conversation ids
    mask: torch.Tensor | None = None     # (B, L) attention mask
    rows: torch.Tensor | None = None     # target positions as (row, column) pairs
    cols: torch.Tensor | None = None

    def to(self, device) -> Batch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in self.__dict__.items()}
        return Batch(**moved)


def collate(items: list[dict], pad_id: int) -> Batch | list[str]:
    """A batch, or the list of errors if any image of it failed to load."""
    errors = [it["error"] for it in items if "error" in it]
    if errors:
        return errors
    batch = Batch(torch.stack([it["pixels"] for it in items]))
    if "ids" in items[0]:
        width = max(len(it["ids"]) for it in items)
        batch.ids = torch.full((len(items), width), pad_id)
        batch.mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            batch.ids[i, :len(it["ids"])] = torch.tensor(it["ids"])
            batch.mask[i, :len(it["ids"])] = 1
        batch.rows = torch.tensor([i for i, it in enumerate(items) for _ in it["targets"]])
        batch.cols = torch.tensor([c for it in items for c in it["targets"]])
    return batch


class StepOrder:
    """Batches of sample indices for this process from global step ``start`` on, forever:
    epoch e is ``randperm(n)`` seeded by (seed, e), cut into global batches of
    ``per_process * world`` (the incomplete last one dropped); process r takes slice r."""

    def __init__(self, n: int, per_process: int, world: int, rank: int, seed: int,
                 start: int = 0):
        self.global_batch = per_process * world
        if n < self.global_batch:
            raise DatasetError(f"the dataset has {n} training sample(s), fewer than one batch "
                               f"({self.global_batch}); lower --batch or add data")
        self.n, self.per_process, self.rank, self.seed, self.start = (
            n, per_process, rank, seed, start)
        self.steps_per_epoch = n // self.global_batch

    def __iter__(self):
        step = self.start
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + epoch))
            first = within * self.global_batch + self.rank * self.per_process
            yield order[first:first + self.per_process].tolist()
            step += 1


def loader(dataset: CodecSamples, batch_sampler, workers: int, pad_id: int) -> DataLoader:
    # Each loader is iterated once, so its workers need not persist: the initialisation's
    # exit when it ends instead of holding their memory through training.
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=partial(collate, pad_id=pad_id),
                      prefetch_factor=2 if workers else None)


def batches(data: DataLoader):
    """The loader's batches; an image that failed to load ends training with its one line."""
    for batch in data:
        if isinstance(batch, list):
            raise DatasetError(batch[0] if len(batch) == 1
                               else f"{batch[0]} (and {len(batch) - 1} more in this batch)")
        yield batch
