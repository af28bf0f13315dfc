"""Generation engines behind one seam (:mod:`cloud_server.engines.base`), one module each.

Each engine module defines ``create(config: ServerConfig, model: CloudModel) ->
GenerationEngine``; ``cloud-server --engine NAME`` picks the module.
"""

from __future__ import annotations

import importlib

ENGINES = ("builtin", "vllm")
# What to install for an engine whose libraries are optional.
EXTRAS = {"vllm": "pip install 'alignedvq[vllm]' (vLLM's CPU build; on a GPU machine: "
                  "pip install vllm==0.32.0)"}


class EngineUnavailable(RuntimeError):
    """The engine's module or the library it needs is not installed."""


def engine_factory(name: str):
    """The ``create`` function of engine ``name``; imports it now, so a missing library is
    reported at start-up, before anything loads or binds."""
    if name not in ENGINES:
        raise EngineUnavailable(f"unknown engine {name!r}; expected one of {ENGINES}")
    try:
        module = importlib.import_module(f"cloud_server.engines.{name}")
    except ImportError as e:
        hint = EXTRAS.get(name, "reinstall alignedvq")
        raise EngineUnavailable(f"--engine {name} is not available here ({e}); {hint}") from None
    return module.create
