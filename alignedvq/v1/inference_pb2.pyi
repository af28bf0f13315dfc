from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_ENCODING_UNSPECIFIED: _ClassVar[FeatureEncoding]
    FEATURE_ENCODING_ALIGNEDVQ: _ClassVar[FeatureEncoding]
    FEATURE_ENCODING_FP16: _ClassVar[FeatureEncoding]
    FEATURE_ENCODING_INT8: _ClassVar[FeatureEncoding]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_END: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP_STRING: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
FEATURE_ENCODING_UNSPECIFIED: FeatureEncoding
FEATURE_ENCODING_ALIGNEDVQ: FeatureEncoding
FEATURE_ENCODING_FP16: FeatureEncoding
FEATURE_ENCODING_INT8: FeatureEncoding
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_END: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP_STRING: FinishReason
FINISH_REASON_CANCELLED: FinishReason

class GenerationParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "repetition_penalty")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    repetition_penalty: float
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., repetition_penalty: _Optional[float] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("question", "answer")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    question: str
    answer: str
    def __init__(self, question: _Optional[str] = ..., answer: _Optional[str] = ...) -> None: ...

class CodesHeader(_message.Message):
    __slots__ = ("vision_fingerprint", "codec_fingerprint", "encoding", "tokens", "bits", "stages", "question", "generation", "split_layer", "image_handle", "history")
    VISION_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    vision_fingerprint: bytes
    codec_fingerprint: bytes
    encoding: FeatureEncoding
    tokens: int
    bits: int
    stages: int
    question: str
    generation: GenerationParams
    split_layer: int
    image_handle: bytes
    history: _containers.RepeatedCompositeFieldContainer[Turn]
    def __init__(self, vision_fingerprint: _Optional[bytes] = ..., codec_fingerprint: _Optional[bytes] = ..., encoding: _Optional[_Union[FeatureEncoding, str]] = ..., tokens: _Optional[int] = ..., bits: _Optional[int] = ..., stages: _Optional[int] = ..., question: _Optional[str] = ..., generation: _Optional[_Union[GenerationParams, _Mapping]] = ..., split_layer: _Optional[int] = ..., image_handle: _Optional[bytes] = ..., history: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ...) -> None: ...

class CodesChunk(_message.Message):
    __slots__ = ("stage", "packed_indices")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PACKED_INDICES_FIELD_NUMBER: _ClassVar[int]
    stage: int
    packed_indices: bytes
    def __init__(self, stage: _Optional[int] = ..., packed_indices: _Optional[bytes] = ...) -> None: ...

class AnswerFromCodesRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: CodesHeader
    chunk: CodesChunk
    def __init__(self, header: _Optional[_Union[CodesHeader, _Mapping]] = ..., chunk: _Optional[_Union[CodesChunk, _Mapping]] = ...) -> None: ...

class AnswerSummary(_message.Message):
    __slots__ = ("payload_bytes", "decode_ms", "queue_ms", "generate_ms", "tokens_generated", "model_id", "codec_fingerprint", "answer", "batch_size", "request_id", "codec_fingerprint_bytes", "prepare_ms", "split_layer", "seed", "finish_reason", "cached_tokens", "image_handle")
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CODEC_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODEC_FINGERPRINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREPARE_MS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    payload_bytes: int
    decode_ms: float
    queue_ms: float
    generate_ms: float
    tokens_generated: int
    model_id: str
    codec_fingerprint: str
    answer: str
    batch_size: int
    request_id: str
    codec_fingerprint_bytes: bytes
    prepare_ms: float
    split_layer: int
    seed: int
    finish_reason: FinishReason
    cached_tokens: int
    image_handle: bytes
    def __init__(self, payload_bytes: _Optional[int] = ..., decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., generate_ms: _Optional[float] = ..., tokens_generated: _Optional[int] = ..., model_id: _Optional[str] = ..., codec_fingerprint: _Optional[str] = ..., answer: _Optional[str] = ..., batch_size: _Optional[int] = ..., request_id: _Optional[str] = ..., codec_fingerprint_bytes: _Optional[bytes] = ..., prepare_ms: _Optional[float] = ..., split_layer: _Optional[int] = ..., seed: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., cached_tokens: _Optional[int] = ..., image_handle: _Optional[bytes] = ...) -> None: ...

class AnswerFromCodesResponse(_message.Message):
    __slots__ = ("text_delta", "summary")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    text_delta: str
    summary: AnswerSummary
    def __init__(self, text_delta: _Optional[str] = ..., summary: _Optional[_Union[AnswerSummary, _Mapping]] = ...) -> None: ...

class AnswerFromImageRequest(_message.Message):
    __slots__ = ("image", "question", "generation", "image_handle", "history")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HANDLE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    question: str
    generation: GenerationParams
    image_handle: bytes
    history: _containers.RepeatedCompositeFieldContainer[Turn]
    def __init__(self, image: _Optional[bytes] = ..., question: _Optional[str] = ..., generation: _Optional[_Union[GenerationParams, _Mapping]] = ..., image_handle: _Optional[bytes] = ..., history: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ...) -> None: ...

class AnswerFromImageResponse(_message.Message):
    __slots__ = ("text_delta", "summary")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    text_delta: str
    summary: AnswerSummary
    def __init__(self, text_delta: _Optional[str] = ..., summary: _Optional[_Union[AnswerSummary, _Mapping]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("model_id", "vision_fingerprint", "codec_fingerprint", "split_layer", "codebook_size", "bits", "stages", "tokens", "image_size", "max_question_chars", "max_new_tokens", "max_message_bytes", "feature_dim", "feature_layer", "vision_layers", "cls_included", "patch_grid", "encodings", "max_image_pixels", "request_timeout_seconds", "split_points", "image_handle_ttl_seconds", "max_history_turns")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VISION_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LAYER_FIELD_NUMBER: _ClassVar[int]
    VISION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    CLS_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    PATCH_GRID_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_POINTS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HANDLE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_HISTORY_TURNS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    vision_fingerprint: bytes
    codec_fingerprint: bytes
    split_layer: int
    codebook_size: int
    bits: int
    stages: int
    tokens: int
    image_size: int
    max_question_chars: int
    max_new_tokens: int
    max_message_bytes: int
    feature_dim: int
    feature_layer: int
    vision_layers: int
    cls_included: bool
    patch_grid: int
    encodings: _containers.RepeatedScalarFieldContainer[FeatureEncoding]
    max_image_pixels: int
    request_timeout_seconds: float
    split_points: _containers.RepeatedCompositeFieldContainer[SplitPoint]
    image_handle_ttl_seconds: float
    max_history_turns: int
    def __init__(self, model_id: _Optional[str] = ..., vision_fingerprint: _Optional[bytes] = ..., codec_fingerprint: _Optional[bytes] = ..., split_layer: _Optional[int] = ..., codebook_size: _Optional[int] = ..., bits: _Optional[int] = ..., stages: _Optional[int] = ..., tokens: _Optional[int] = ..., image_size: _Optional[int] = ..., max_question_chars: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., feature_dim: _Optional[int] = ..., feature_layer: _Optional[int] = ..., vision_layers: _Optional[int] = ..., cls_included: _Optional[bool] = ..., patch_grid: _Optional[int] = ..., encodings: _Optional[_Iterable[_Union[FeatureEncoding, str]]] = ..., max_image_pixels: _Optional[int] = ..., request_timeout_seconds: _Optional[float] = ..., split_points: _Optional[_Iterable[_Union[SplitPoint, _Mapping]]] = ..., image_handle_ttl_seconds: _Optional[float] = ..., max_history_turns: _Optional[int] = ...) -> None: ...

class SplitPoint(_message.Message):
    __slots__ = ("split_layer", "vision_fingerprint", "codec_fingerprint", "codebook_size", "bits", "stages", "tokens", "cls_included", "encodings", "coded_tokens")
    SPLIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    VISION_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CLS_INCLUDED_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    CODED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    split_layer: int
    vision_fingerprint: bytes
    codec_fingerprint: bytes
    codebook_size: int
    bits: int
    stages: int
    tokens: int
    cls_included: bool
    encodings: _containers.RepeatedScalarFieldContainer[FeatureEncoding]
    coded_tokens: int
    def __init__(self, split_layer: _Optional[int] = ..., vision_fingerprint: _Optional[bytes] = ..., codec_fingerprint: _Optional[bytes] = ..., codebook_size: _Optional[int] = ..., bits: _Optional[int] = ..., stages: _Optional[int] = ..., tokens: _Optional[int] = ..., cls_included: _Optional[bool] = ..., encodings: _Optional[_Iterable[_Union[FeatureEncoding, str]]] = ..., coded_tokens: _Optional[int] = ...) -> None: ...

class ProbeLinkRequest(_message.Message):
    __slots__ = ("padding",)
    PADDING_FIELD_NUMBER: _ClassVar[int]
    padding: bytes
    def __init__(self, padding: _Optional[bytes] = ...) -> None: ...

class ProbeLinkResponse(_message.Message):
    __slots__ = ("received_bytes",)
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    def __init__(self, received_bytes: _Optional[int] = ...) -> None: ...

class AnswerFromCodesBundleRequest(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[AnswerFromCodesRequest]
    def __init__(self, messages: _Optional[_Iterable[_Union[AnswerFromCodesRequest, _Mapping]]] = ...) -> None: ...

class AnswerFromCodesBundleResponse(_message.Message):
    __slots__ = ("text_delta", "summary")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    text_delta: str
    summary: AnswerSummary
    def __init__(self, text_delta: _Optional[str] = ..., summary: _Optional[_Union[AnswerSummary, _Mapping]] = ...) -> None: ...
