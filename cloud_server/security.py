"""Transport security and authentication for ``cloud-server``.

* TLS: ``--tls-cert`` + ``--tls-key`` bind the port with ``grpc.ssl_server_credentials``.
* mTLS: ``--tls-client-ca`` additionally requires a client certificate signed by that CA.
* Bearer tokens: ``--auth-token-file`` (one token per line; blank lines and ``#`` comments
  ignored) makes every InferenceService call carry ``authorization: Bearer <token>``. The file
  is re-read when it changes, so a token is rotated by adding the new one, moving the clients
  over, then deleting the old one, without a restart.

Health checks and reflection stay open: load balancers and orchestrators probe health without
credentials, and reflection only describes the (public) proto.

Misconfiguration (half a TLS setup, unreadable files, an empty token file) raises
:class:`SecurityConfigError` before anything binds; ``cloud-server`` exits 2 with its message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc

from cloud_server.errors import Unauthenticated

log = logging.getLogger("cloud_server")

class SecurityConfigError(ValueError):
    """A security setting that cannot work; the message names the flag(s) to fix."""


def _read(path: str, flag: str, must_contain: bytes) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SecurityConfigError(f"cannot read {flag} {path}: {e.strerror or e}") from None
    # gRPC reports malformed PEM only as a failed bind or handshake; say which file is wrong.
    if must_contain not in data:
        raise SecurityConfigError(f"{flag} {path} is not a PEM file with "
                                  f"{must_contain.decode().strip('-')} (expected "
                                  f"'-----BEGIN ...' blocks)")
    return data


def parse_tokens(text: str, source: str) -> list[bytes]:
    """Tokens in a token file: one per line, blank lines and ``#`` comments ignored.

    Tokens travel in gRPC metadata, so each must be printable ASCII without spaces."""
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.isascii() or not line.isprintable() or any(c.isspace() for c in line):
            # Never echo the line: it may be a secret with a typo.
            raise SecurityConfigError(f"{source} line {number}: a token must be printable ASCII "
                                      f"without spaces (one token per line)")
        tokens.append(line.encode())
    if not tokens:
        raise SecurityConfigError(f"{source} holds no token: put one token per line "
                                  f"('#' starts a comment)")
    return tokens


class TokenFile:
    """The accepted tokens, re-read (at most once a second) when the file changes."""

    RECHECK_SECONDS = 1.0

    def __init__(self, path: str):
        self.path = path
        self._stamp = None
        self._checked = 0.0
        self.tokens = self._load()  # raises SecurityConfigError: a bad file at startup is fatal

    def _load(self) -> list[bytes]:
        source = f"--auth-token-file {self.path}"
        try:
            st = os.stat(self.path)
            text = Path(self.path).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise SecurityConfigError(f"cannot read {source}: {e.strerror or e}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users (mode %o); chmod 600 it", source,
                        stat.S_IMODE(st.st_mode))
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        return parse_tokens(text, source)

    def current(self) -> list[bytes]:
        now = time.monotonic()
        if now - self._checked >= self.RECHECK_SECONDS:
            self._checked = now
            try:
                st = os.stat(self.path)
                changed = (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp
            except OSError:
                changed = True
            if changed:
                try:
                    self.tokens = self._load()
                    log.info("reloaded %d token(s) from %s", len(self.tokens), self.path)
                except SecurityConfigError as e:
                    # Keep serving with the last good tokens rather than locking everyone out
                    # because an editor saved a half-written file.
                    log.error("keeping the previous tokens: %s", e)
        return self.tokens


class BearerTokens:
    """Refuses (raises Unauthenticated) calls without ``authorization: Bearer <known token>``.
    The RPC layer (cloud_server/calls.py) calls :meth:`check` for every InferenceService call,
    so a refusal is logged and counted like any other."""

    def __init__(self, tokens: TokenFile):
        self.tokens = tokens

    def check(self, metadata) -> str:
        """The caller's identity (its token's digest: conversations' image handles are scoped
        to it, cloud_server/conversations.py), or Unauthenticated."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            raise Unauthenticated("this server requires a bearer token: send metadata "
                                  "'authorization: Bearer <token>' (edge-agent "
                                  "--auth-token-file FILE)")
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, given = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthenticated("the authorization metadata is not 'Bearer <token>'; expected "
                                  "the word Bearer, one space, then the token")
        given_bytes = given.strip().encode("utf-8", errors="replace")
        # Compare against every token, without stopping early, so timing says nothing about
        # which (or how many) tokens exist.
        ok = False
        for token in self.tokens.current():
            ok |= hmac.compare_digest(given_bytes, token)
        if not ok:
            raise Unauthenticated("the bearer token is not one this server accepts; expected a "
                                  "token listed in the server's --auth-token-file")
        # A digest, never the token itself: identities end up in memory beside cached images.
        return "token:" + hashlib.sha256(given_bytes).hexdigest()


@dataclass
class ServerSecurity:
    """What ``cloud-server`` binds with and intercepts calls with, built from its config."""

    credentials: grpc.ServerCredentials | None = None
    # BearerTokens.check (returns the caller's identity), or None without auth
    authenticate: Callable | None = None
    description: str = "insecure (no TLS), no authentication"

    @classmethod
    def from_config(cls, config) -> "ServerSecurity":
        cert, key, client_ca = config.tls_cert, config.tls_key, config.tls_client_ca
        if bool(cert) != bool(key):
            given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
            raise SecurityConfigError(f"{given} was given without {missing}: TLS needs both "
                                      f"--tls-cert (PEM certificate chain) and --tls-key (its "
                                      f"PEM private key)")
        if client_ca and not cert:
            raise SecurityConfigError("--tls-client-ca was given without --tls-cert and "
                                      "--tls-key: mTLS is TLS plus client certificates, so the "
                                      "server needs its own certificate and key too")
        security = cls()
        parts = []
        if cert:
            chain = _read(cert, "--tls-cert", b"-----BEGIN CERTIFICATE")
            private_key = _read(key, "--tls-key", b"PRIVATE KEY-----")
            roots = _read(client_ca, "--tls-client-ca",
                          b"-----BEGIN CERTIFICATE") if client_ca else None
            security.credentials = grpc.ssl_server_credentials(
                [(private_key, chain)], root_certificates=roots,
                require_client_auth=roots is not None)
            parts.append("TLS with client certificates required (mTLS)" if roots else "TLS")
        else:
            parts.append("insecure (no TLS)")
        if config.auth_token_file:
            tokens = TokenFile(config.auth_token_file)
            security.authenticate = BearerTokens(tokens).check
            parts.append(f"bearer tokens required ({len(tokens.tokens)} accepted; health and "
                         f"reflection exempt)")
        else:
            parts.append("no authentication")
        security.description = ", ".join(parts)
        return security

    def bind(self, server: grpc.aio.Server, address: str) -> int:
        """Add the listening port; 0 when it could not be bound."""
        if self.credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.credentials)
