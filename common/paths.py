"""Where the shipped artefacts live: the embedded model, its codec and the sample images are
package data of ``common`` (``common/models/``), so a fresh machine with no model hub, or a
``pip install`` with no checkout, runs everything."""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "tiny-llava"
DEFAULT_CODEC_DIR = MODELS_DIR / "tiny-llava-codec-12bit"
# The early split point: the edge runs one of the four CLIP blocks (issue 22). 11 bits, so its
# 65 tokens (CLS crosses before the feature layer) fit the default codec's 130 B.
EARLY_CODEC_DIR = MODELS_DIR / "tiny-llava-codec-split1-12bit"
# What `cloud-server` serves and `edge-agent --mode auto` chooses among when given no --codec:
# the first is the default split point (the one a client that names none is served).
SHIPPED_CODEC_DIRS = (DEFAULT_CODEC_DIR, EARLY_CODEC_DIR)
SAMPLES_DIR = MODELS_DIR / "samples"
# Where `alignedvq export-edge` writes the embedded model's ONNX edge by default, and where
# `edge-agent --runtime onnx` looks for it (generated, not committed: see .gitignore).
DEFAULT_EDGE_DIR = MODELS_DIR / "tiny-llava-edge"
EARLY_EDGE_DIR = MODELS_DIR / "tiny-llava-edge-split1"
SHIPPED_EDGE_DIRS = (DEFAULT_EDGE_DIR, EARLY_EDGE_DIR)  # the shipped codecs' exports, in order
# The checkout's root, for the development tools that read it (protos/, examples/); meaningful
# only in a source checkout, never in an installed package.
REPO_ROOT = Path(__file__).resolve().parents[1]


def shipped_edge_dir(codec_dir: Path) -> Path:
    """Where a shipped codec's ONNX export goes (and --mode auto looks); any other codec's
    export goes to the default folder unless told otherwise."""
    for codec, edge in zip(SHIPPED_CODEC_DIRS, SHIPPED_EDGE_DIRS):
        if Path(codec_dir).resolve() == codec.resolve():
            return edge
    return DEFAULT_EDGE_DIR
