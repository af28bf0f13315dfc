"""Makes PyPI's torchvision importable beside a CPU build of torch.

Why this exists: on x86_64 Linux, PyPI carries only CUDA builds of torchvision. Their native
library (``torchvision/_C.so``) links ``libc10_cuda.so``/``libtorch_cuda.so``, which a CPU torch
does not have, so it cannot load. torchvision tolerates that everywhere but in two unguarded
``torch.library.register_fake("torchvision::nms"/"qnms")`` calls, so ``import torchvision``
fails with ``operator torchvision::nms does not exist``. transformers 5.x imports
``torchvision.transforms.v2`` (pure Python on torch ops) for its image processors, and vLLM's
LLaVA module imports one of them (Pixtral's) unconditionally, so vLLM cannot load LLaVA.

What this does, only when that native library does not load: declares the schemas of those
two operators (no kernels), so the import completes. Everything pure-Python works (the
transforms transformers uses); the native operators stay unavailable, and calling one (e.g.
``torchvision.ops.nms``) raises torchvision's own "Couldn't load custom C++ ops" error, so
nothing silently runs a fake. Where the native library loads (a CUDA torch, or PyTorch's CPU
wheel index: ``pip install torchvision==0.28.0 --index-url
https://download.pytorch.org/whl/cpu``) this does nothing.

It must run before the first ``import torchvision`` of every process, including the ones vLLM
starts (its engine core, and a model-inspection subprocess that imports transformers before
anything of ours could run). So it is an import hook: a ``sys.meta_path`` entry that acts when
``torchvision`` is first imported, and costs nothing until then. Three places install it:
the code that loads transformers' image processors or models (``common.split.checkpoint``, the
``cloud-server`` and ``alignedvq`` entry points, the tiny model's builder), never a bare
``import common``, which the torch-free ONNX edge also runs; a one-line ``.pth`` file that
:func:`write_pth` writes into the environment's site-packages (every Python process of that
environment; the Makefile's vLLM set-up runs it); and the ``vllm.general_plugins`` entry point
in pyproject.toml. No installed package is modified.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

# The schemas torchvision's C++ library declares for the two operators its Python side
# registers fake kernels for unconditionally (torchvision/_meta_registrations.py).
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = None  # kept alive: the declarations last as long as this object


def native_ops_load() -> bool | None:
    """True if torchvision's native library loads here, False if it does not, None if
    torchvision is not installed."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    import torch

    lib = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
    try:
        torch.ops.load_library(lib)
        return True
    except (OSError, RuntimeError):
        return False


def ensure_importable() -> None:
    """Idempotent; cheap when torchvision is absent (no torch import) or already imported."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    if native_ops_load() is not False:
        return
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        name = schema.split("(")[0]
        if not hasattr(torch.ops.torchvision, name):
            _library.define(schema)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_importable` when ``torchvision`` is first looked up, then steps aside
    (returns None, so the normal finders import it)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            uninstall_import_hook()
            ensure_importable()
        return None


def install_import_hook() -> None:
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision)
                                           for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())


def uninstall_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BeforeTorchvision)]


PTH_NAME = "alignedvq_torchvision_cpu.pth"


def write_pth(site_packages: str | None = None) -> Path:
    """Installs the hook for every Python process of this environment. The line tolerates a
    missing ``common`` (the project uninstalled) so it never breaks the interpreter."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text("import sys; exec('try:\\n from common._runtime.torchvision_cpu import "
                      "install_import_hook as h; h()\\nexcept Exception: pass')\n")
    return target
