"""The codec trainer's checkpoint folder, for ``train-codec --resume``.

``state.pt`` holds what every process shares (codec, optimiser, learning-rate schedule, step,
code usage, loss scale, history, the run's settings); ``rng-rank{R}.pt`` each process's random
generators. The data order needs nothing saved: it is a function of the step
(codec_data.StepOrder). A checkpoint is written beside the old one and swapped in whole, so a
run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch

from alignedvq.training.distributed import World

STATE = "state.pt"

# Settings a resumed run must share with the one that wrote the checkpoint: anything else
# (steps, workers, logging, evaluation) may change between the two.
MUST_MATCH = ("model_dir", "dataset", "bits", "stages", "split_layer", "code_dim", "batch",
              "seed", "max_images", "held_out", "init_from", "position_prior", "context_layers",
              "uncoded_cls")
# What a checkpoint written before a setting existed ran with.
BEFORE_IT_EXISTED = {"position_prior": "False", "context_layers": "0", "uncoded_cls": "False"}


def _rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def save(folder: Path, world: World, *, step: int, codec, opt, sched, usage, rng: random.Random,
         variance: float, history: list, settings: dict) -> None:
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".next")
    if world.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    world.barrier()
    generators = {"python": rng.getstate(), "torch": torch.get_rng_state(),
                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(generators, staging / _rng_file(world.rank))
    if world.is_main:
        torch.save({"step": step, "codec": codec.state_dict(), "optimizer": opt.state_dict(),
                    "schedule": sched.state_dict(), "usage": usage.cpu(), "variance": variance,
                    "history": history, "settings": {k: str(v) for k, v in settings.items()},
                    "world_size": world.size}, staging / STATE)
    world.barrier()
    if world.is_main:
        previous = folder.with_name(folder.name + ".old")
        shutil.rmtree(previous, ignore_errors=True)
        if folder.exists():
            folder.rename(previous)
        staging.rename(folder)
        shutil.rmtree(previous, ignore_errors=True)
    world.barrier()


def load(folder: Path, rank: int) -> dict | None:
    """The checkpoint's state for process ``rank``, or None when there is none yet (a first
    run with ``--resume`` starts from scratch, so a preemptible job can always pass it)."""
    folder = Path(folder)
    if not (folder / STATE).exists():
        return None
    state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    rng_path = folder / _rng_file(rank)
    state["generators"] = (torch.load(rng_path, weights_only=False) if rng_path.exists()
                           else None)  # a process the earlier run did not have
    return state


def check_settings(state: dict, settings: dict) -> None:
    saved = state["settings"]
    saved = {**BEFORE_IT_EXISTED, **saved}
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {str(settings[k])!r}" for k in MUST_MATCH
              if saved.get(k) != str(settings[k])]
    if differ:
        raise ValueError("--resume: the checkpoint was written by a different run ("
                         + "; ".join(differ) + "); use another --out or the same settings")


def restore(state: dict, codec, opt, sched, usage, rng: random.Random) -> None:
    codec.load_state_dict(state["codec"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["schedule"])
    usage.copy_(state["usage"])
    generators = state["generators"]
    if generators is not None:
        rng.setstate(generators["python"])
        torch.set_rng_state(generators["torch"])
        if generators["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(generators["cuda"])


def remove(folder: Path) -> None:
    """After a finished run: the codec is the product; the checkpoint (with Adam's moments,
    three times the codec) is not needed any more."""
    shutil.rmtree(folder, ignore_errors=True)
