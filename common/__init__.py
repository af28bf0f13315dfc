# PyPI's torchvision (a CUDA build on x86_64) does not import beside a CPU torch; transformers'
# image processors and vLLM need it importable. An import hook, free until torchvision is
# imported; see common/torchvision_cpu.py.
from common.torchvision_cpu import install_import_hook as _install_torchvision_hook

_install_torchvision_hook()
