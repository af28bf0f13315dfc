"""Where the shipped artefacts live: the embedded model, its codec and the sample images are
package data of ``common`` (``common/models/``), so a fresh machine with no model hub, or a
``pip install`` with no checkout, runs everything."""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "tiny-llava"
DEFAULT_CODEC_DIR = MODELS_DIR / "tiny-llava-codec-12bit"
SAMPLES_DIR = MODELS_DIR / "samples"
# Where `alignedvq export-edge` writes the embedded model's ONNX edge by default, and where
# `edge-agent --runtime onnx` looks for it (generated, not committed: see .gitignore).
DEFAULT_EDGE_DIR = MODELS_DIR / "tiny-llava-edge"
# The checkout's root, for the development tools that read it (protos/, examples/); meaningful
# only in a source checkout, never in an installed package.
REPO_ROOT = Path(__file__).resolve().parents[1]
