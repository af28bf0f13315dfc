"""AlignedVQ: the codec whose payload is the only thing that crosses from edge to cloud.

Encoder (edge): align -> down-project -> nearest codeword, per stage on the residual.
Decoder (cloud): codeword sum -> up-project -> de-align.

Alignment standardises every token (zero mean, unit variance across channels, then a learned
per-channel affine), so one shared codebook fits tokens whose scale differs by orders of
magnitude. Undoing it needs each token's mean and scale. Sent as fp16 they would cost 4 bytes a
token, more than the 1.5-byte index itself; instead the decoder *predicts* them from the
codeword (a learned linear head), so they are quantised jointly with the direction and cost no
extra byte. Nothing else is needed on the cloud side, so the payload is the indices plus a
fixed header.

Optionally (``position_prior``) both sides also hold a learned mean per token position of the
aligned tokens, subtracted before the down-projection and added back after the up-projection,
and a learned offset per position of the predicted statistics. Before the last vision block a
token's state still carries its position embedding, the same for every image: without the prior
the codebook spends codewords on it; with it, the position costs no byte and the codewords
describe what the image adds (docs/model_and_codec.md measures it at the early split point). It
works on the aligned tokens, not the raw ones: a raw token minus its position mean can be
nearly zero (a plain background patch), and standardising that would blow noise up to unit
scale.

Optionally (``context_layers``) the decoder refines each image's tokens together, with small
transformer layers over the decoded tokens (cloud only: the edge and the wire do not change).
A codeword says what one patch looks like; its neighbours' codewords say what it is part of
(the side of a triangle or of a square), which one patch's index alone cannot tell. The layers
start as the identity (zero output projections), so a new codec starts where one without them
does.

Optionally (``uncoded_tokens``, with the position prior) the first tokens at the cut are not
sent at all: the decoder gives them their position prior. Before the feature layer CLS crosses
too, and on the embedded model CLS after the first block carries nothing the answers use
(replaced by its mean, accuracy is unchanged on both test sets: docs/model_and_codec.md), so
its bits are better spent on the patches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CODEC_CONFIG = "codec.json"
CODEC_WEIGHTS = "codec.safetensors"


def nearest_codeword(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    """Index of the closest codeword (squared L2) for every row of ``x`` (N, d); book (K, d)."""
    return (x.pow(2).sum(-1, keepdim=True) - 2 * x @ book.T + book.pow(2).sum(-1)[None]).argmin(-1)


class CodecMismatchError(ValueError):
    """A codec was trained on different vision weights or a different cut than it is used with."""


@dataclass
class CodecConfig:
    feature_dim: int              # D: channels of the hidden state at the cut
    code_dim: int                 # d: the down-projected space the codebook lives in
    bits: int                     # bits per index; the codebook has K = 2**bits entries
    stages: int                   # residual stages, one index per token each
    tokens: int                   # tokens per image at the cut
    split_layer: int              # K (common/split/point.py)
    vision_fingerprint: str       # common.split.weights.vision_fingerprint of blocks [0, K)
    model_id: str = ""            # informational: the checkpoint's folder name
    alignment: str = "per-token standardisation + learned affine; stats predicted from codeword"
    position_prior: bool = False  # a learned per-position mean, removed before encoding
    context_layers: int = 0       # decoder layers over each image's tokens (cloud only)
    uncoded_tokens: int = 0       # leading tokens never sent, decoded from the position prior

    def identity(self) -> dict:
        """The settings the fingerprint hashes and codec.json records. The optional ones only
        when on, so codecs made before they existed keep their fingerprints."""
        return {k: v for k, v in asdict(self).items()
                if k not in OPTIONAL_OFF or v != OPTIONAL_OFF[k]}

    @property
    def codebook_size(self) -> int:
        return 1 << self.bits

    @property
    def coded_tokens(self) -> int:
        """Tokens per image whose indices cross the wire."""
        return self.tokens - self.uncoded_tokens


# Settings added after the first codecs shipped, and the value those codecs have.
OPTIONAL_OFF = {"position_prior": False, "context_layers": 0, "uncoded_tokens": 0}


class ContextLayer(nn.Module):
    """A pre-norm transformer layer over one image's decoded tokens (batch, tokens, D). Its
    output projections start at zero, so a new layer passes the tokens through unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, max(1, dim // 64), batch_first=True)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        for out in (self.attention.out_proj, self.mlp[2]):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.mlp_norm(x))


class AlignedVQ(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        if config.uncoded_tokens and not config.position_prior:
            raise ValueError("uncoded tokens are decoded from the position prior: "
                             "uncoded_tokens needs position_prior")
        self.config = config
        d, c = config.feature_dim, config.code_dim
        self.align_scale = nn.Parameter(torch.ones(d))
        self.align_shift = nn.Parameter(torch.zeros(d))
        self.down = nn.Linear(d, c)
        self.codebooks = nn.Parameter(torch.randn(config.stages, config.codebook_size, c) * 0.1)
        self.up = nn.Linear(c, d)
        # Predicts each token's mean and log-std (the alignment statistics) from its codeword.
        self.stats = nn.Linear(c, 2)
        if config.position_prior:
            self.position_mean = nn.Parameter(torch.zeros(config.tokens, d))
            self.position_stats = nn.Parameter(torch.zeros(config.tokens, 2))
        self.context = nn.ModuleList(ContextLayer(d) for _ in range(config.context_layers))

    # -- edge -----------------------------------------------------------------
    def align(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = x.mean(-1, keepdim=True)
        log_std = torch.log(x.std(-1, keepdim=True) + 1e-6)
        a = (x - mean) * torch.exp(-log_std) * self.align_scale + self.align_shift
        return a, mean, log_std

    def aligned_residual(self, x: torch.Tensor) -> torch.Tensor:
        """Aligned features (..., tokens, D) less the position prior (none: just aligned), of
        the coded tokens only (..., coded_tokens, D)."""
        a = self.align(x.float())[0]
        if not self.config.position_prior:
            return a
        return (a - self.position_mean)[..., self.config.uncoded_tokens:, :]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Features (..., tokens, D) -> the down-projected coded tokens the codebook
        quantises (..., coded_tokens, code_dim)."""
        return self.down(self.aligned_residual(x))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual nearest-codeword search: indices (..., stages) and the summed codewords."""
        residual = z
        total = torch.zeros_like(z)
        indices = []
        for book in self.codebooks:
            idx = nearest_codeword(residual.reshape(-1, residual.shape[-1]), book).reshape(
                residual.shape[:-1])
            q = book[idx]
            indices.append(idx)
            total = total + q
            residual = residual - q
        return torch.stack(indices, -1), total

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features (B, tokens, D) -> indices (B, coded_tokens, stages), int64 in [0, K)."""
        return self.quantize(self.project(x))[0]

    # -- cloud ----------------------------------------------------------------
    def reconstruct(self, q: torch.Tensor) -> torch.Tensor:
        """Summed codewords (..., coded_tokens, code_dim) -> features (..., tokens, D)."""
        stats, a = self.stats(q), self.up(q)
        if self.config.position_prior:
            n = self.config.uncoded_tokens
            stats = stats + self.position_stats[n:]
            a = a + self.position_mean[n:]
            if n:  # the uncoded tokens: their prior, and the statistics of a zero codeword
                lead = q.shape[:-2]
                a = torch.cat([self.position_mean[:n].expand(*lead, n, -1), a], -2)
                stats = torch.cat([(self.position_stats[:n] + self.stats.bias).expand(
                    *lead, n, -1), stats], -2)
        if len(self.context):
            shape = a.shape
            a = a.reshape(-1, *shape[-2:])
            for layer in self.context:
                a = layer(a)
            a = a.reshape(shape)
        mean, log_std = stats[..., :1], stats[..., 1:]
        return a * torch.exp(log_std) + mean

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return sum(self.codebooks[s][indices[..., s]] for s in range(self.config.stages))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, coded_tokens, stages) -> reconstructed features (B, tokens, D)."""
        return self.reconstruct(self.lookup(indices))

    # -- training -------------------------------------------------------------
    @torch.no_grad()
    def set_position_mean(self, mean: torch.Tensor) -> None:
        """The prior's starting point: the aligned tokens' mean at each position (tokens, D)
        (the statistics' offsets start at zero)."""
        self.position_mean.copy_(mean.to(self.position_mean))

    @torch.no_grad()
    def set_projection(self, mu: torch.Tensor, covariance: torch.Tensor, token_mean: float,
                       token_log_std: float) -> None:
        """The down-projection as the PCA of the aligned features, from their mean (D,) and
        covariance (D, D); the statistics head starts at the average token's mean and
        log-std. Moments, not the features: they can be summed over any number of tokens."""
        _, vectors = torch.linalg.eigh(covariance.double())   # eigenvalues ascending
        basis = vectors[:, -self.config.code_dim:].flip(-1).T.to(self.down.weight)   # (c, D)
        mu = mu.to(basis)
        self.down.weight.copy_(basis)
        self.down.bias.copy_(-basis @ mu)
        self.up.weight.copy_(basis.T)
        self.up.bias.copy_(mu)
        self.stats.weight.zero_()
        self.stats.bias.copy_(torch.tensor([token_mean, token_log_std]))

    @torch.no_grad()
    def initialise_codebooks(self, projected: torch.Tensor, seed: int,
                             kmeans_iters: int = 15) -> None:
        """Each stage's codebook k-means on what the previous stages leave of ``projected``
        (tokens already through :meth:`project`), so no code starts dead."""
        from common.codec.kmeans import kmeans, nearest_in_chunks

        residual = projected
        for s in range(self.config.stages):
            book = kmeans(residual, self.config.codebook_size, kmeans_iters, seed + s)
            self.codebooks.data[s] = book
            idx = nearest_in_chunks(residual, book)
            residual = residual - book[idx]

    @torch.no_grad()
    def expire_dead_codes(self, x: torch.Tensor, usage: torch.Tensor, rng) -> None:
        """Codes no token picked for a long while (``usage`` below 0.01: a decayed count per
        stage and code) get a live token's residual, so the rate the index pays for is used."""
        z = self.project(x).reshape(-1, self.config.code_dim)
        residual = z
        for s, book in enumerate(self.codebooks):
            dead = (usage[s] < 0.01).nonzero().flatten()
            if len(dead):
                picks = torch.tensor([rng.randrange(len(residual)) for _ in range(len(dead))])
                book.data[dead] = residual[picks] + 1e-3 * torch.randn(len(dead), book.shape[1],
                                                                         device=book.device)
                usage[s, dead] = 1.0
            idx = nearest_codeword(residual, book)
            residual = residual - book[idx]

    def forward(self, x: torch.Tensor):
        """Straight-through pass for training: reconstruction and the VQ losses."""
        z = self.project(x)
        _, q = self.quantize(z)
        codebook_loss = F.mse_loss(q, z.detach())
        commit_loss = F.mse_loss(z, q.detach())
        q_st = z + (q - z).detach()
        return self.reconstruct(q_st), codebook_loss, commit_loss

    # -- files ----------------------------------------------------------------
    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  str(out / CODEC_WEIGHTS))
        meta = self.config.identity() | {"codebook_size": self.config.codebook_size,
                                         "fingerprint": self.fingerprint()}
        (out / CODEC_CONFIG).write_text(json.dumps(meta, indent=1) + "\n")

    @staticmethod
    def read_config(codec_dir: Path) -> CodecConfig:
        """The codec's settings from its ``codec.json`` alone (no weights read): what a caller
        needs to know where the model must be split for it."""
        codec_dir = Path(codec_dir)
        if not (codec_dir / CODEC_CONFIG).is_file():
            raise FileNotFoundError(f"no codec at {codec_dir} (expected {CODEC_CONFIG} and "
                                    f"{CODEC_WEIGHTS}, as `alignedvq train-codec` writes them)")
        meta = json.loads((codec_dir / CODEC_CONFIG).read_text())
        fields = CodecConfig.__dataclass_fields__
        return CodecConfig(**{k: v for k, v in meta.items() if k in fields})

    @classmethod
    def load(cls, codec_dir: Path, expect_fingerprint: str | None = None,
             expect_split_layer: int | None = None) -> "AlignedVQ":
        from safetensors.torch import load_file

        codec_dir = Path(codec_dir)
        config = cls.read_config(codec_dir)
        # The split layer first: at another layer the vision fingerprint differs too, and the
        # layer is what the user can fix.
        if expect_split_layer is not None and config.split_layer != expect_split_layer:
            raise CodecMismatchError(
                f"codec {codec_dir} was trained for split layer {config.split_layer} (its "
                f"{CODEC_CONFIG}), but split layer {expect_split_layer} was asked for "
                f"(--split-layer): leave --split-layer out to split where the codec was trained")
        if expect_fingerprint is not None and config.vision_fingerprint != expect_fingerprint:
            raise CodecMismatchError(
                f"codec {codec_dir} was trained on vision weights with fingerprint "
                f"{config.vision_fingerprint} (split layer {config.split_layer}), but this "
                f"checkpoint's weights before that layer have {expect_fingerprint}: the codec "
                f"belongs to another checkpoint")
        codec = cls(config)
        codec.load_state_dict(load_file(str(codec_dir / CODEC_WEIGHTS)))
        return codec.eval()

    def fingerprint(self) -> str:
        """Identifies this codec's weights: the edge and cloud must hold the same one."""
        h = hashlib.sha256(json.dumps(self.config.identity(), sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def codec_split_layer(codec_dir: Path | None, split_layer: int | None = None) -> int | None:
    """Where to split for ``codec_dir``: an explicit ``split_layer`` when given (a codec that
    disagrees is refused when it loads, naming both), else the layer the codec was trained for,
    else None (the model's feature layer). So no command needs --split-layer beside a codec."""
    if split_layer is not None or codec_dir is None:
        return split_layer
    return AlignedVQ.read_config(codec_dir).split_layer

