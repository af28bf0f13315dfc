"""``edge-agent``'s generation flags: ``--max-new-tokens`` and the sampling ones, named as
vLLM's ``SamplingParams`` fields are (contract v1.2, ``GenerationParams``). The server checks
the ranges and says what is wrong (INVALID_ARGUMENT); an unset flag leaves its field unset, so
the server's default applies (greedy decoding without ``--temperature``)."""

from __future__ import annotations

import argparse

from alignedvq.v1 import inference_pb2 as pb

# (flag, GenerationParams field, type, help)
SAMPLING_FLAGS = (
    ("--temperature", "temperature", float, "0-2; 0 (the default) is greedy decoding"),
    ("--top-p", "top_p", float, "(0, 1]: sample from the most probable tokens whose "
                                "probabilities add up to it (default 1)"),
    ("--top-k", "top_k", int, "sample from the k most probable tokens (0 or -1: all, the "
                              "default)"),
    ("--min-p", "min_p", float, "[0, 1]: drop tokens less probable than it times the most "
                                "probable one (default 0)"),
    ("--seed", "seed", int, "seed of a sampled answer (default: the server draws one and "
                            "reports it; --json's seed)"),
    ("--repetition-penalty", "repetition_penalty", float, "> 0: above 1 discourages tokens "
                                                          "already in the prompt or answer "
                                                          "(default 1: off)"),
)


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=0, help="0 = the server's default")
    for flag, _, kind, help in SAMPLING_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=f"sampling: {help}")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="sampling: end the answer before this text (repeatable; at most 4)")


def generation_params(args: argparse.Namespace) -> pb.GenerationParams | None:
    """The flags as the request's GenerationParams; None when none is given (the request then
    carries no generation field, as before v1.2)."""
    params = pb.GenerationParams(max_new_tokens=args.max_new_tokens or 0)
    for flag, field, _, _ in SAMPLING_FLAGS:
        value = getattr(args, field)
        if value is not None:
            try:
                setattr(params, field, value)
            except ValueError:  # protobuf's own range: a negative --seed, a huge --top-k
                raise ValueError(f"{flag} {value} does not fit the request's field (see "
                                 f"--help)") from None
    params.stop.extend(args.stop or ())
    return params if params.ListFields() else None
