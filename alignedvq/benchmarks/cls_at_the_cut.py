"""Does CLS carry anything the answers use at an early cut? What ``train-codec --uncoded-cls``
rests on (docs/model_and_codec.md).

``python -m alignedvq.benchmarks.cls_at_the_cut --dataset test/questions.jsonl --mean-of
train/questions.jsonl``: the accuracy with the features at ``--split-layer`` (default 1) sent
as fp16, once as they are and once with CLS replaced by its mean over the first ``--images``
images of ``--mean-of`` (another set than the one scored). Equal accuracy says a codec may leave
CLS uncoded and decode it from that mean.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from alignedvq.data.datasets import read_dataset
from alignedvq.evaluation.evaluate import SplitAnswerer, evaluate
from common.imaging.policy import open_image
from common.paths import DEFAULT_MODEL_DIR
from common.split.vision import features_at_cut


@torch.no_grad()
def mean_cls(answerer: SplitAnswerer, dataset: Path, images: int, batch: int = 64) -> torch.Tensor:
    edge, total, seen = answerer.edge, None, 0
    samples = list(read_dataset(dataset, limit=images))
    for i in range(0, len(samples), batch):
        pictures = [open_image(s.image) for s in samples[i:i + batch]]
        cls = features_at_cut(edge.vision, edge.image_processor, pictures)[:, 0].double()
        total = cls.sum(0) if total is None else total + cls.sum(0)
        seen += len(cls)
    return (total / seen).float()


def with_mean_cls(answerer: SplitAnswerer, cls: torch.Tensor) -> SplitAnswerer:
    """The answerer, its cloud half given ``cls`` in place of every image's CLS."""
    decode = answerer.cloud.decode

    def decode_with_mean_cls(mode, chunks, *args, **kwargs):
        features = decode(mode, chunks, *args, **kwargs).clone()
        features[0] = cls
        return features

    answerer.cloud.decode = decode_with_mean_cls
    return answerer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignedvq.benchmarks.cls_at_the_cut",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--dataset", required=True, help="the questions scored")
    p.add_argument("--mean-of", required=True, help="the images CLS's mean is taken over")
    p.add_argument("--images", type=int, default=512, help="how many of them (default 512)")
    p.add_argument("--split-layer", type=int, default=1,
                   help="an early cut, where CLS crosses (default 1)")
    args = p.parse_args(argv)
    model, results = Path(args.model), {}
    for variant in ("as_sent", "mean_cls"):
        answerer = SplitAnswerer(model, "fp16", None, args.split_layer, "cpu")
        if not answerer.edge.split.sends_cls:
            p.error(f"no CLS crosses at split layer {args.split_layer}")
        if variant == "mean_cls":
            with_mean_cls(answerer, mean_cls(answerer, Path(args.mean_of), args.images))
        run = evaluate(model, Path(args.dataset), mode="fp16", split_layer=args.split_layer,
                       answerer=answerer, progress=False)
        results[variant] = {"accuracy": run["accuracy"], "n": run["n"],
                            "by_family": {k: round(v["accuracy"], 4)
                                          for k, v in run["by_family"].items()}}
    print(json.dumps({"split_layer": args.split_layer, "dataset": args.dataset,
                      "mean_of": args.mean_of, "images": args.images, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
