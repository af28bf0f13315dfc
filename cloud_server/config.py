"""The cloud server's settings, typed, in one place. Every field is a flag
(``--max-new-tokens``) and an environment variable (``ALIGNEDVQ_MAX_NEW_TOKENS``); a flag wins."""

from __future__ import annotations

import argparse
import os

from pydantic import BaseModel, Field

from common.paths import DEFAULT_EDGE_DIR, DEFAULT_MODEL_DIR, SHIPPED_CODEC_DIRS
from common.split.checkpoint import default_device

ENV_PREFIX = "ALIGNEDVQ_"


class ServerConfig(BaseModel):
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 serves all interfaces")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    model: str = Field(str(DEFAULT_MODEL_DIR),
                       description="local HF LLaVA checkpoint; default: the embedded model")
    codec: list[str] = Field(
        [str(d) for d in SHIPPED_CODEC_DIRS],
        json_schema_extra={"repeatable": True},
        description="AlignedVQ codec folder trained for that model, served at the split layer "
        "its codec.json records; repeat the flag to serve several split points (the env "
        "variable takes a list separated by ':'); 'none' serves fp16/int8 features only. "
        "Default: the shipped codecs (split layers 4 and 1 of the embedded model)")
    split_layer: int | None = Field(None, description="the default split point (the one a "
                                    "client that names none is served): one of the codecs' "
                                    "split layers; default: the first codec's. Without a codec, "
                                    "where fp16/int8 features are cut (default: the model's "
                                    "feature layer)")
    engine: str = Field("builtin", pattern="^(builtin|vllm)$",
                        json_schema_extra={"choices": ["builtin", "vllm"]},
                        description="what generates the text: builtin (transformers and this "
                        "project's continuous batcher) or vllm (vLLM's AsyncLLM; the vllm extra)")
    # Passed through to vLLM (--engine vllm only); see docs/vllm.md.
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split over "
                                      "(tensor parallel, within a node)")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vllm: fraction of the GPU's memory vLLM reserves "
        "(weights, activations, KV cache). On vLLM's CPU backend it is the fraction of HOST "
        "memory. Default: vLLM's 0.92 on a GPU; on a CPU a fixed 1 GiB KV cache instead "
        "(vLLM's own VLLM_CPU_KVCACHE_SPACE, in GiB, overrides that)")
    max_model_len: int | None = Field(None, ge=1, description="vllm: longest prompt plus answer "
                                      "in tokens; default: the model's")
    vllm_args: str | None = Field(None, description="vllm: further engine arguments as a JSON "
                                  "object, e.g. '{\"pipeline_parallel_size\": 2, "
                                  "\"enforce_eager\": true}' (names as in vllm.AsyncEngineArgs)")
    device: str = Field("auto", description="cpu or cuda[:N]; auto = cuda when available")
    dtype: str = Field("float32", pattern="^(float32|float16|bfloat16)$",
                       description="weights' dtype; float16/bfloat16 halve GPU memory for 7B")
    max_new_tokens: int = Field(32, ge=1, le=4096,
                                description="most tokens an answer may have, and what a "
                                "request asking for 0 gets; a request asking for more is "
                                "refused, not capped (ShapesVQA answers need 3; a VQA answer "
                                "rarely 32)")
    max_question_chars: int = Field(1000, ge=1, description="questions of more Unicode code points "
                                    "are refused")
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024,
                                   description="gRPC receive limit per message; a 336-px JPEG "
                                   "is ~30 kB, so 8 MiB leaves room for any sane upload")
    max_image_pixels: int = Field(40_000_000, ge=1,
                                  description="decoded images above this are refused "
                                  "(decompression bombs)")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for the model "
                                      "(torch intra-op); default: torch's choice (all cores)")
    max_batch_size: int = Field(32, ge=1, le=1024,
                                description="requests decoded together in one batch; 1 turns "
                                "batching off")
    batch_window_ms: float = Field(5.0, ge=0, le=1000,
                                   description="an idle model waits this long for more requests "
                                   "to batch with the first (later ones join between tokens)")
    max_queued: int = Field(64, ge=0,
                            description="requests waiting for a batch slot; beyond this new "
                            "requests get RESOURCE_EXHAUSTED at once")
    request_timeout_seconds: float = Field(60.0, gt=0,
                                           description="server-side deadline per request "
                                           "(queueing + generation); DEADLINE_EXCEEDED after it")
    # Conversations (cloud_server/conversations.py): images kept for follow-up questions.
    image_cache_bytes: int = Field(256 * 1024 * 1024, ge=0,
                                   description="most bytes of image embeddings kept for "
                                   "follow-up questions (least recently used go first; held "
                                   "where the model runs, so GPU memory on a GPU); 0 keeps none "
                                   "and issues no image handles")
    image_handle_ttl_seconds: float = Field(600.0, gt=0,
                                            description="an image handle expires this long "
                                            "after its last use")
    max_history_turns: int = Field(8, ge=0, description="earlier turns a request's history may "
                                   "carry (each question and answer at most "
                                   "--max-question-chars)")
    metrics_port: int | None = Field(None, ge=0, le=65535,
                                     description="serve Prometheus metrics on this port "
                                     "(0 picks one); off when unset")
    log_format: str = Field("text", pattern="^(text|json)$",
                            description="text for people, json (one object a line) for "
                            "log pipelines")
    grace_seconds: float = Field(30.0, ge=0,
                                 description="SIGTERM waits this long for in-flight requests")
    # Transport security and auth (cloud_server/security.py); all off by default.
    tls_cert: str | None = Field(None, description="PEM certificate chain; with --tls-key "
                                 "serves TLS instead of plaintext")
    tls_key: str | None = Field(None, description="PEM private key of --tls-cert")
    tls_client_ca: str | None = Field(None, description="PEM CA bundle; clients must present a "
                                      "certificate it signed (mTLS; needs --tls-cert/--tls-key)")
    auth_token_file: str | None = Field(None, description="file of accepted bearer tokens, one "
                                        "per line ('#' comments); InferenceService calls must "
                                        "send 'authorization: Bearer <token>' (health and "
                                        "reflection exempt); re-read when it changes")

    # The browser edge (cloud_server/web): gRPC-Web and the page, on a port of their own.
    web_port: int | None = Field(None, ge=0, le=65535,
                                 description="serve the InferenceService to browsers (gRPC-Web "
                                 "over HTTP/1.1, through the same checks, limits, tokens, TLS "
                                 "and metrics as the gRPC port) and the browser edge's page "
                                 "(examples/web) on this port (0 picks one); off when unset")
    web_cors_origins: str | None = Field(None, description="comma-separated origins other "
                                         "than the web port's own whose pages may call it "
                                         "(CORS), e.g. https://app.example.com; '*' allows "
                                         "any; none when unset")
    web_edge: str = Field(str(DEFAULT_EDGE_DIR), description="the exported edge the page runs "
                          "in the browser (what `alignedvq export-edge --out` wrote); without "
                          "one the page uploads a JPEG instead")

    @classmethod
    def build_parser(cls) -> argparse.ArgumentParser:
        """The flags, each defaulting to its ``ALIGNEDVQ_*`` variable or else to the field's
        default; docs/cli.md is rendered from it (alignedvq/cli_reference.py)."""
        parser = argparse.ArgumentParser(
            prog="cloud-server",
            description="Answers questions about images from AlignedVQ indices (or images).")
        for name, field in cls.model_fields.items():
            flag = "--" + name.replace("_", "-")
            env = os.environ.get(ENV_PREFIX + name.upper())
            extra = field.json_schema_extra or {}
            default = env if env is not None else field.default
            shown = (" ".join(map(str, field.default)) if extra.get("repeatable")
                     else field.default)
            help = f"{field.description} (env {ENV_PREFIX}{name.upper()}; default {shown})"
            if extra.get("repeatable"):
                # Given flags replace the default list instead of adding to it (argparse's
                # append would extend the default); from_args fills it in when none is given.
                values = default.split(os.pathsep) if isinstance(default, str) else default
                parser.add_argument(flag, action="append", default=None, help=help)
                parser.set_defaults(**{f"{name}_default": values})
                continue
            parser.add_argument(flag, default=default, choices=extra.get("choices"), help=help)
        return parser

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "ServerConfig":
        values = vars(cls.build_parser().parse_args(argv))
        for name, field in cls.model_fields.items():
            if (field.json_schema_extra or {}).get("repeatable"):
                given = values.pop(name) or values[f"{name}_default"]
                values[name] = [v for v in given if v and v.lower() != "none"]
            values.pop(f"{name}_default", None)
        values = {k: v for k, v in values.items() if v is not None and v != "None"}
        return cls(**values)

    def resolved_device(self) -> str:
        return default_device() if self.device == "auto" else self.device

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)
