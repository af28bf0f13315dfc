"""The sidecar of an exported edge graph (``edge.json`` next to ``edge.onnx``): everything a
runtime in any language needs to feed the graph and to label what it sends.

Torch-free: the ONNX edge reads it on devices without torch; ``alignedvq export-edge`` writes it
(alignedvq/edge_export.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "alignedvq-edge-onnx/1"
GRAPH_FILE = "edge.onnx"
SPEC_FILE = "edge.json"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "indices"

# PIL's resampling filter numbers, as processor configs store them.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box",
                  5: "hamming"}


class EdgeExportMissing(FileNotFoundError):
    """No exported edge graph where one was expected."""


@dataclass
class Preprocess:
    """The model's image processor settings (CLIPImageProcessor, PIL backend), verbatim."""
    shortest_edge: int            # resize so the shorter side is this many pixels
    crop_height: int
    crop_width: int
    resample: int                 # PIL filter number (3 = bicubic)
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    image_std: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    # How the sizes and offsets are rounded, for ports to other languages (edge.js follows it).
    rule: str = ("RGB; resize with PIL's `resample` filter so the short side is shortest_edge and "
                 "the long side int(shortest_edge * long / short) (truncated); centre crop at "
                 "top=(h-crop_height)//2, left=(w-crop_width)//2 (zero-padded if smaller); "
                 "x = float32(uint8 * float64(rescale_factor)); x = (x - float32(mean)) / "
                 "float32(std) in float32; layout NCHW")

    @property
    def resample_name(self) -> str:
        return RESAMPLE_NAMES.get(self.resample, str(self.resample))

    @classmethod
    def from_processor_config(cls, cfg: dict) -> "Preprocess":
        """From the ``image_processor`` section of processor_config.json (or a
        preprocessor_config.json)."""
        size, crop = cfg.get("size", {}), cfg.get("crop_size", {})
        if "shortest_edge" not in size:
            raise ValueError(f"only a shortest_edge resize is supported (CLIP's), got size={size}")
        return cls(shortest_edge=int(size["shortest_edge"]),
                   crop_height=int(crop.get("height", size["shortest_edge"])),
                   crop_width=int(crop.get("width", size["shortest_edge"])),
                   resample=int(cfg.get("resample", 3)),
                   do_resize=bool(cfg.get("do_resize", True)),
                   do_center_crop=bool(cfg.get("do_center_crop", True)),
                   do_rescale=bool(cfg.get("do_rescale", True)),
                   rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
                   do_normalize=bool(cfg.get("do_normalize", True)),
                   image_mean=[float(v) for v in cfg.get("image_mean", [0.0] * 3)],
                   image_std=[float(v) for v in cfg.get("image_std", [1.0] * 3)])


@dataclass
class EdgeSpec:
    preprocess: Preprocess
    image_size: int               # the graph's input is (batch, 3, image_size, image_size)
    tokens: int                   # indices per stage per image
    bits: int
    stages: int
    codebook_size: int
    split_layer: int
    vision_fingerprint: str
    codec_fingerprint: str
    model_id: str = ""
    format: str = FORMAT
    graph: str = GRAPH_FILE
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    output_layout: str = "(batch, tokens, stages) int64, token order = the vision tower's"
    exporter: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)  # the float32 graph against the torch edge
    # "float32" or "int8" (`export-edge --weights int8`); sidecars written before it are float32.
    weights: str = "float32"
    # For int8: the quantiser's settings and the measured token agreement with the float32
    # torch edge ("agreement": token_agreement, threshold, passed, forced).
    quantization: dict = field(default_factory=dict)

    @property
    def below_threshold(self) -> bool:
        """An int8 graph written with --allow-below-threshold although its agreement failed."""
        return bool(self.quantization.get("agreement", {}).get("forced"))

    def to_json(self) -> str:
        d = asdict(self)
        d["preprocess"]["resample_name"] = self.preprocess.resample_name
        return json.dumps(d, indent=1) + "\n"

    def save(self, out_dir: Path) -> Path:
        path = Path(out_dir) / SPEC_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, edge_dir: Path) -> "EdgeSpec":
        edge_dir = Path(edge_dir)
        spec_path = edge_dir / SPEC_FILE
        if not spec_path.is_file():
            raise EdgeExportMissing(
                f"no exported edge in {edge_dir} (expected {SPEC_FILE} and {GRAPH_FILE}); create "
                f"it with `alignedvq export-edge --out {edge_dir}` (needs the torch install)")
        d = json.loads(spec_path.read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"{spec_path} is format {d.get('format')!r}, this edge reads "
                             f"{FORMAT!r}; export it again")
        pre = {k: v for k, v in d.pop("preprocess").items() if k in Preprocess.__dataclass_fields__}
        spec = cls(preprocess=Preprocess(**pre),
                   **{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        if not (edge_dir / spec.graph).is_file():
            raise EdgeExportMissing(f"{edge_dir / spec.graph} is missing; run `alignedvq "
                                    f"export-edge --out {edge_dir}` again")
        return spec
