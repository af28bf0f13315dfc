"""Image handles: how a follow-up question names an image sent before, without sending it again.

A handle is made by the server, never by the caller: ``HMAC-SHA256(key, identity, content)``
cut to 16 bytes, where ``key`` is random per server process, ``identity`` the caller's (its
bearer token's digest; every caller is one when auth is off) and ``content`` a digest of the
request's image payload (its chunks, at its split point and encoding, or the uploaded bytes).
So the same image sent by two callers gets two handles and two cache entries: one caller can
neither read nor poison another's (the flaw of caller-supplied content hashes, vLLM's
``multi_modal_uuids``). A handle is also checked against its entry's owner on every use, so a
leaked handle does not resolve for anybody else either, and it means nothing to another server
or after a restart (a new key): the client then sends the image again.

What a handle names is the image's embeddings (the projector's output), kept in an
:class:`~cloud_server.image_cache.ImageCache`: a follow-up skips decoding, the vision blocks
and the projector. The conversation's text stays with the client (``history``): the server
keeps no per-conversation state besides the image.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cloud_server.errors import Incompatible, InvalidRequest
from cloud_server.image_cache import ImageCache

HANDLE_BYTES = 16
# What a request may carry as a handle: more is malformed (INVALID_ARGUMENT); anything shorter
# that is not a live handle of the caller's is simply unknown (FAILED_PRECONDITION).
MAX_HANDLE_BYTES = 64
SEND_AGAIN = ("unknown or expired image handle (handles last {ttl:g} s after their last use, "
              "on the server that issued them, for the caller it issued them to); send the "
              "image again")


def check_handle_size(handle: bytes) -> None:
    if len(handle) > MAX_HANDLE_BYTES:
        raise InvalidRequest(f"image_handle has {len(handle)} bytes; a handle is the bytes "
                             f"AnswerSummary.image_handle returned (at most {MAX_HANDLE_BYTES})")


def content_digest(kind: str, parts: Sequence[bytes]) -> bytes:
    """What the image payload is: ``kind`` (how it was sent: encoding and split point, or an
    upload) and its parts, each length-prefixed so no two payloads hash alike."""
    h = hashlib.sha256(kind.encode())
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


@dataclass
class ImageRef:
    """One request's image as the conversation machinery sees it: its handle once known (a
    follow-up's from the start; a first request's once its payload is prepared, on the engine's
    thread) and how many prompt tokens its reuse spared."""

    handle: bytes | None = None
    cached_tokens: int = 0


class Conversations:
    def __init__(self, cache: ImageCache, image_tokens: int, key: bytes | None = None):
        self.cache, self.image_tokens = cache, image_tokens
        self._key = key or secrets.token_bytes(32)

    def handle(self, identity: str, digest: bytes) -> bytes:
        ident = identity.encode()
        message = len(ident).to_bytes(4, "little") + ident + digest
        return hmac.new(self._key, message, hashlib.sha256).digest()[:HANDLE_BYTES]

    def remember(self, prepare: Callable[[], torch.Tensor], identity: str, kind: str,
                 parts: Sequence[bytes]) -> tuple[Callable[[], torch.Tensor], ImageRef]:
        """Wraps a first request's ``prepare`` so that, on the engine's thread, it also hashes
        the payload and keeps the embeddings under the handle it reports in the ImageRef."""
        ref = ImageRef()
        if not self.cache.enabled:
            return prepare, ref

        def prepare_and_keep() -> torch.Tensor:
            embeddings = prepare()
            handle = self.handle(identity, content_digest(kind, parts))
            if self.cache.put(handle, identity, embeddings.detach()):
                ref.handle = handle
            return embeddings

        return prepare_and_keep, ref

    def recall(self, handle: bytes, identity: str
               ) -> tuple[Callable[[], torch.Tensor], ImageRef]:
        """A follow-up's ``prepare`` (the kept embeddings), or Incompatible (FAILED_PRECONDITION)
        saying to send the image again. Looked up now, on the event loop, so an unknown handle
        is refused before the request is queued; the embeddings are held from here on, however
        soon the cache evicts them."""
        check_handle_size(handle)
        embeddings = self.cache.get(handle, identity) if self.cache.enabled else None
        if embeddings is None:
            raise Incompatible(SEND_AGAIN.format(ttl=self.cache.ttl_s))
        return (lambda: embeddings), ImageRef(handle, self.image_tokens)
