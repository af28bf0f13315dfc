"""The model side of the cloud server: validation, decoding and generation. Validation is cheap
and runs on the event loop; all model work runs on the scheduler's one thread, never on the loop
(grpc.aio's loop must keep serving health checks, cancellations and other clients while a batch
is generating)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.batching import Row
from cloud_server.config import ServerConfig
from cloud_server.scheduler import Job, Scheduler
from common.errors import Incompatible, InvalidRequest
from common.features import PayloadError, fingerprint_bytes
from common.images import ImageRefused, load_model_input, processor_size
from common.pipeline import CloudHalf
from common.split import EdgeVision

ENCODING_MODES = {pb.FEATURE_ENCODING_ALIGNEDVQ: "alignedvq", pb.FEATURE_ENCODING_FP16: "fp16",
                  pb.FEATURE_ENCODING_INT8: "int8"}


class Engine:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self.cloud: CloudHalf | None = None
        self.vision: EdgeVision | None = None
        self.scheduler: Scheduler | None = None

    # -- loading --------------------------------------------------------------
    def load(self) -> None:
        from transformers import AutoImageProcessor

        device, dtype = self.config.resolved_device(), self.config.torch_dtype()
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        self.cloud = CloudHalf(self.config.model, self.config.codec, self.config.split_layer,
                               device, dtype)
        # The cloud-only baseline runs the blocks before the cut here as well.
        self.vision = EdgeVision.from_pretrained(self.config.model, self.config.split_layer,
                                                 device, dtype)
        self.image_processor = AutoImageProcessor.from_pretrained(self.config.model,
                                                                  local_files_only=True)
        self.model_id = self.cloud.model.config.name_or_path.rstrip("/").split("/")[-1] or \
            self.config.model
        self.scheduler = Scheduler(self.cloud, self.config.max_batch_size,
                                   self.config.batch_window_ms / 1000, self.config.max_queued)
        self.warm_up()
        self.scheduler.start()

    def warm_up(self) -> None:
        """One prefill, join and step through the batch path, so the first user does not pay
        for lazy initialisation."""
        size = self.cloud.model.config.vision_config.image_size
        feats = self.vision(torch.zeros(1, 3, size, size))
        decoder = self.scheduler.decoder
        rows = [Row(None, 2), Row(None, 2)]
        decoder.join(rows[:1], feats, ["warm up"])
        decoder.join(rows[1:], feats, ["warm up, twice"])
        decoder.step()
        decoder.drop(rows)

    def info(self) -> pb.GetServerInfoResponse:
        c = self.cloud
        codec = c.codec.config if c.codec else None
        return pb.GetServerInfoResponse(
            model_id=self.model_id, vision_fingerprint=fingerprint_bytes(c.vision_fingerprint),
            codec_fingerprint=fingerprint_bytes(c.codec_fingerprint) if c.codec else b"",
            split_layer=c.split.split_layer, codebook_size=codec.codebook_size if codec else 0,
            bits=codec.bits if codec else 0, stages=codec.stages if codec else 0,
            tokens=c.tokens, image_size=c.model.config.vision_config.image_size,
            max_question_chars=self.config.max_question_chars,
            max_new_tokens=self.config.max_new_tokens,
            max_message_bytes=self.config.max_message_bytes)

    def fp16_feature_bytes(self) -> int:
        """What the same tokens would cost as raw fp16 features: the compression reference."""
        return self.cloud.tokens * self.cloud.dim * 2

    # -- validation (cheap; runs on the loop before any model work) -------------
    def check_question(self, question: str) -> None:
        if not question.strip():
            raise InvalidRequest("the question is empty; send a non-empty UTF-8 question")
        if len(question) > self.config.max_question_chars:
            raise InvalidRequest(f"the question has {len(question)} characters; at most "
                                 f"{self.config.max_question_chars} are accepted")

    def max_new_tokens(self, params: pb.GenerationParams) -> int:
        asked = params.max_new_tokens
        if asked > self.config.max_new_tokens:
            raise InvalidRequest(f"max_new_tokens {asked} is over this server's limit of "
                                 f"{self.config.max_new_tokens}")
        return asked or self.config.max_new_tokens

    def check_header(self, header: pb.CodesHeader) -> str:
        """Returns the feature mode; refuses anything this server cannot decode."""
        c = self.cloud
        if header.vision_fingerprint != fingerprint_bytes(c.vision_fingerprint):
            raise Incompatible(f"the request was encoded by vision weights "
                               f"{header.vision_fingerprint.hex() or '(none)'}, this server runs "
                               f"{c.vision_fingerprint[:16]} (model {self.model_id}, split layer "
                               f"{c.split.split_layer})")
        mode = ENCODING_MODES.get(header.encoding)
        if mode is None:
            raise InvalidRequest(f"unknown feature encoding {header.encoding}; expected one of "
                                 f"{sorted(ENCODING_MODES)}")
        if header.tokens != c.tokens:
            raise InvalidRequest(f"header says {header.tokens} tokens; this model's split sends "
                                 f"{c.tokens}")
        if mode == "alignedvq":
            if c.codec is None:
                raise Incompatible("this server runs without a codec; send fp16/int8 features "
                                   "or an image")
            if header.codec_fingerprint != fingerprint_bytes(c.codec_fingerprint):
                raise Incompatible(f"the request was encoded with codec "
                                   f"{header.codec_fingerprint.hex() or '(none)'}, this server "
                                   f"decodes codec {c.codec_fingerprint}")
            cfg = c.codec.config
            if (header.bits, header.stages) != (cfg.bits, cfg.stages):
                raise InvalidRequest(f"header says {header.bits} bits x {header.stages} stages; "
                                     f"the codec uses {cfg.bits} bits x {cfg.stages} stages")
        self.check_question(header.question)
        self.max_new_tokens(header.generation)
        return mode

    # -- model work (scheduler thread) -------------------------------------------
    def codes_features(self, mode: str, chunks: list[bytes]) -> torch.Tensor:
        try:
            return self.cloud.decode(mode, chunks)
        except PayloadError as e:
            raise InvalidRequest(str(e)) from None

    def image_features(self, data: bytes) -> torch.Tensor:
        if not data:
            raise InvalidRequest("the image is empty; send JPEG or PNG bytes")
        try:
            # The edge's image policy (common/images.py): the same refusals, conversions and
            # crop, in bounded memory, so both modes see the same pixels.
            image = load_model_input(data, processor_size(self.image_processor),
                                     self.config.max_image_pixels)
        except ImageRefused as e:
            raise InvalidRequest(f"{e}; send JPEG or PNG bytes") from None
        pixels = self.image_processor(images=[image], return_tensors="pt").pixel_values
        return self.vision(pixels.to(self.cloud.model.device))[0]

    def submit(self, job: Job) -> None:
        """Queue a request for the model thread; raises Overloaded when the queue is full."""
        self.scheduler.submit(job)
