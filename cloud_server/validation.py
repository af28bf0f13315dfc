"""Request validation: cheap checks on the event loop, before any model work, each done once.

A request that passes becomes a :class:`Validated` (mode, question, token budget, sampling,
history, image handle); anything else raises InvalidRequest (INVALID_ARGUMENT) or Incompatible
(FAILED_PRECONDITION). Whether a handle is live is the conversations' business
(cloud_server/conversations.py), checked right after.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignedvq.v1 import inference_pb2 as pb
from cloud_server.config import ServerConfig
from cloud_server.conversations import check_handle_size
from cloud_server.errors import Incompatible, InvalidRequest
from cloud_server.loader import CloudModel
from cloud_server.sampling import GREEDY, Sampling, sampling_from
from cloud_server.split_points import ServedSplit, describe_points
from common.codec.encodings import mode_of_wire
from common.wire.messages import fingerprint_bytes
from common.wire.modes import ALIGNEDVQ, FEATURE_MODES, IMAGE_MODE

# The mode (log and metrics label) of a follow-up: a request that names its image by handle.
FOLLOW_UP = "followup"


@dataclass(frozen=True)
class Validated:
    mode: str             # alignedvq | fp16 | int8 | image | followup
    question: str
    max_new_tokens: int   # the client's, or the server's default; never over the limit
    stages: int = 1       # chunks that must follow a codes header (0: a follow-up's)
    split_layer: int | None = None  # the split point a codes request was cut at; None: image
    sampling: Sampling = GREEDY
    history: tuple[tuple[str, str], ...] = ()  # earlier (question, answer) turns, oldest first
    handle: bytes = b""   # a follow-up's image handle (not yet looked up)


class RequestValidator:
    def __init__(self, config: ServerConfig, model: CloudModel):
        self.config, self.model = config, model

    def image_request(self, request: pb.AnswerFromImageRequest) -> Validated:
        # The image itself is checked when it is decoded (prepare), off the event loop.
        if request.image_handle:
            if request.image:
                raise InvalidRequest("the request carries both an image and an image_handle; "
                                     "send the image, or the handle of one sent before")
            return self._follow_up(request)
        return self._common(IMAGE_MODE, request)

    def codes_header(self, header: pb.CodesHeader) -> Validated:
        """Refuses anything this server cannot decode."""
        if header.image_handle:
            # The image was sent before: nothing here describes features, none follow.
            return self._follow_up(header)
        c = self.model.cloud
        point = self._split_point(header)
        mode = mode_of_wire(header.encoding)
        if mode is None:
            raise InvalidRequest(f"unknown feature encoding {header.encoding}; expected one of "
                                 f"{', '.join(FEATURE_MODES)} (FeatureEncoding 1-3)")
        if mode == ALIGNEDVQ and point.codec is None:
            raise Incompatible(f"this server runs without a codec at split layer "
                               f"{point.split_layer}; send fp16/int8 features or an image")
        # The cut's tokens, or for AlignedVQ the codec's coded ones (a codec may leave CLS
        # uncoded).
        tokens = point.encodings[mode].tokens
        if header.tokens != tokens:
            raise InvalidRequest(f"header says {header.tokens} tokens; this model's split at "
                                 f"layer {point.split_layer} sends {tokens}"
                                 + (f" in {mode}" if tokens != point.tokens else ""))
        stages = 1
        if mode == ALIGNEDVQ:
            if header.codec_fingerprint != fingerprint_bytes(point.codec_fingerprint):
                raise Incompatible(f"the request was encoded with codec "
                                   f"{header.codec_fingerprint.hex() or '(none)'}, this server "
                                   f"decodes codec {point.codec_fingerprint} at split layer "
                                   f"{point.split_layer} (it serves split layers "
                                   f"{describe_points(c.points)})")
            cfg = point.codec.config
            if (header.bits, header.stages) != (cfg.bits, cfg.stages):
                raise InvalidRequest(f"header says {header.bits} bits x {header.stages} stages; "
                                     f"the codec uses {cfg.bits} bits x {cfg.stages} stages")
            stages = header.stages
        return self._common(mode, header, stages, point.split_layer)

    def _follow_up(self, message) -> Validated:
        check_handle_size(message.image_handle)
        return self._common(FOLLOW_UP, message, stages=0, handle=message.image_handle)

    def _common(self, mode: str, message, stages: int = 1, split_layer: int | None = None,
                handle: bytes = b"") -> Validated:
        """What a CodesHeader and an AnswerFromImageRequest share: the question, generation
        and history fields."""
        return Validated(mode, self._question(message.question),
                         self._max_new_tokens(message.generation), stages, split_layer,
                         sampling_from(message.generation), self._history(message.history),
                         handle)

    def _history(self, turns) -> tuple[tuple[str, str], ...]:
        limit, chars = self.config.max_history_turns, self.config.max_question_chars
        if len(turns) > limit:
            raise InvalidRequest(f"the history has {len(turns)} turns; at most {limit} are "
                                 f"accepted (--max-history-turns): drop the oldest")
        for i, turn in enumerate(turns):
            if not turn.question.strip():
                raise InvalidRequest(f"history turn {i} has an empty question")
            for name, text in (("question", turn.question), ("answer", turn.answer)):
                if len(text) > chars:
                    raise InvalidRequest(f"history turn {i}'s {name} has {len(text)} "
                                         f"characters; at most {chars} are accepted")
        return tuple((turn.question, turn.answer) for turn in turns)

    def _split_point(self, header: pb.CodesHeader) -> ServedSplit:
        """The split point the header names (v1.2), or else the one whose vision fingerprint it
        carries (an older client: it knows only the fingerprint), else the default one, whose
        fingerprint check then refuses it."""
        c = self.model.cloud
        if header.HasField("split_layer"):
            point = c.points.get(header.split_layer)
            if point is None:
                raise Incompatible(f"the request was cut at split layer {header.split_layer}; "
                                   f"this server serves split layers {describe_points(c.points)}")
        else:
            point = next((p for p in c.points.values()
                          if header.vision_fingerprint == fingerprint_bytes(p.vision_fingerprint)),
                         c.default_point)
        if header.vision_fingerprint != fingerprint_bytes(point.vision_fingerprint):
            raise Incompatible(f"the request was encoded by vision weights "
                               f"{header.vision_fingerprint.hex() or '(none)'}, this server runs "
                               f"{point.vision_fingerprint[:16]} (model {c.model_id}, split layer "
                               f"{point.split_layer})")
        return point

    def _question(self, question: str) -> str:
        if not question.strip():
            raise InvalidRequest("the question is empty; send a non-empty UTF-8 question")
        if len(question) > self.config.max_question_chars:
            raise InvalidRequest(f"the question has {len(question)} characters; at most "
                                 f"{self.config.max_question_chars} are accepted")
        return question

    def _max_new_tokens(self, params: pb.GenerationParams) -> int:
        asked = params.max_new_tokens
        if asked > self.config.max_new_tokens:
            raise InvalidRequest(f"max_new_tokens {asked} is over this server's limit of "
                                 f"{self.config.max_new_tokens}")
        return asked or self.config.max_new_tokens


class CodesReader:
    """The AnswerFromCodes message order: the header, then one chunk per stage, in order;
    anything else is refused. A follow-up's header (one with an image_handle) is followed by
    nothing: its image is on the server already. Fed one message at a time as they arrive."""

    def __init__(self, validator: RequestValidator):
        self.validator = validator
        self.request: Validated | None = None
        self.chunks: list[bytes] = []

    @property
    def mode(self) -> str:
        return self.request.mode if self.request else "-"

    def feed(self, message: pb.AnswerFromCodesRequest) -> None:
        part = message.WhichOneof("part")
        if part == "header":
            if self.request is not None:
                raise InvalidRequest("a second header arrived; send exactly one header, then "
                                     "the chunks")
            self.request = self.validator.codes_header(message.header)
        elif part == "chunk":
            if self.request is None:
                raise InvalidRequest("a chunk arrived before the header; send the header first")
            if self.request.handle:
                raise InvalidRequest("a chunk arrived after a header with an image_handle; a "
                                     "follow-up sends the header alone (the server has the "
                                     "image), then half-closes")
            expected, got = self.request.stages, len(self.chunks)
            if message.chunk.stage != got or got >= expected:
                raise InvalidRequest(f"chunk for stage {message.chunk.stage} arrived; expected "
                                     f"stage {got} of {expected}")
            self.chunks.append(message.chunk.packed_indices)
        else:
            raise InvalidRequest("an empty request message arrived; set header or chunk")

    def finish(self) -> tuple[Validated, list[bytes]]:
        if self.request is None:
            raise InvalidRequest("the stream ended without a header")
        return self.request, self.chunks
