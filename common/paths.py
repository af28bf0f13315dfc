"""Where the shipped artefacts live. The embedded model is committed under ``models/`` so a fresh
machine with no model hub runs everything."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "tiny-llava"
DEFAULT_CODEC_DIR = MODELS_DIR / "tiny-llava-codec-12bit"
SAMPLES_DIR = MODELS_DIR / "samples"
# Where `alignedvq export-edge` writes the embedded model's ONNX edge by default, and where
# `edge-agent --runtime onnx` looks for it (generated, not committed: see .gitignore).
DEFAULT_EDGE_DIR = MODELS_DIR / "tiny-llava-edge"
