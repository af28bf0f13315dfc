"""The names of the ways an edge can ask, torch-free so the lightest edges (``--mode image``,
the ONNX runtime) can import them. Their encodings live in :mod:`common.codec.encodings`."""

ALIGNEDVQ, FP16, INT8 = "alignedvq", "fp16", "int8"
FEATURE_MODES = (ALIGNEDVQ, FP16, INT8)   # features at the cut cross the wire
IMAGE_MODE = "image"                      # the image crosses (AnswerFromImage)
EDGE_MODES = (ALIGNEDVQ, IMAGE_MODE, FP16, INT8)  # edge-agent --mode, default first
