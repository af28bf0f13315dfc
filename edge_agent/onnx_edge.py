"""The edge half on ONNX Runtime: Pillow+numpy preprocessing, the exported graph
(``alignedvq export-edge``), packing and the request messages. No torch, no transformers:
``edge-agent --runtime onnx`` runs on a device that has neither (tests/test_onnx_edge.py
checks the agent's ``sys.modules``).

It is an :class:`edge_agent.encoder.EdgeEncoder`, as the torch ``EdgeHalf`` is, so both runtimes
share one client."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignedvq.v1 import inference_pb2 as pb
from common.wire.messages import codes_request_messages
from common.wire.packing import pack
from edge_agent.clip_preprocess import preprocess
from edge_agent.edge_spec import EdgeSpec
from edge_agent.encoder import EdgeEncoder


class OnnxEdge(EdgeEncoder):
    mode = "alignedvq"  # the exported graph is the AlignedVQ encoder
    vision_fingerprint: str
    codec_fingerprint: str
    split_layer: int
    image_size: int

    def __init__(self, edge_dir: str | Path, threads: int = 0):
        import onnxruntime as ort

        self.spec = EdgeSpec.load(Path(edge_dir))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(Path(edge_dir) / self.spec.graph), options,
                                            providers=["CPUExecutionProvider"])
        self.vision_fingerprint = self.spec.vision_fingerprint
        self.codec_fingerprint = self.spec.codec_fingerprint
        self.split_layer = self.spec.split_layer
        self.image_size = self.spec.image_size

    def indices(self, images) -> np.ndarray:
        """RGB images -> (batch, tokens, stages) int64."""
        return self.session.run([self.spec.output_name],
                                {self.spec.input_name: preprocess(images, self.spec.preprocess)})[0]

    def chunks(self, images) -> list[list[bytes]]:
        """Each image's packed chunks, one per stage (protos/README.md)."""
        return [[pack(img[:, s], self.spec.bits) for s in range(self.spec.stages)]
                for img in self.indices(images)]

    def messages(self, chunks: list[bytes], question: str = "", max_new_tokens: int = 0):
        return codes_request_messages(pb.FEATURE_ENCODING_ALIGNEDVQ, self.spec.tokens,
                                      self.spec.bits, self.spec.stages, chunks,
                                      self.vision_fingerprint, self.codec_fingerprint, question,
                                      max_new_tokens)
