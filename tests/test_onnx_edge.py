"""The portable edge: `alignedvq export-edge` (the edge half as one ONNX graph) and
`edge-agent --runtime onnx`, which runs it with ONNX Runtime and must import neither torch nor
transformers. Against a real cloud-server process, both runtimes must send the same indices
and get the same answers."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from alignedvq.v1 import inference_pb2 as pb
from common.imaging.policy import open_image
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, SAMPLES_DIR
from edge_agent.clip_preprocess import preprocess
from edge_agent.edge_spec import EdgeSpec, Preprocess

pytestmark = pytest.mark.integration  # real servers or processes

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (make install)")

ROWS = [json.loads(line) for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]
IMAGES = sorted({r["image"] for r in ROWS})


@pytest.fixture(scope="module")
def torch_edge():
    from edge_agent.torch_edge import EdgeHalf

    return EdgeHalf(DEFAULT_MODEL_DIR, DEFAULT_CODEC_DIR)


@pytest.fixture(scope="module")
def server(default_server):
    """The session's default server: these tests need nothing else of it."""
    return default_server


def test_sidecar_describes_the_model_and_codec(exported_edge, torch_edge):
    spec = EdgeSpec.load(exported_edge)
    codec = json.loads((DEFAULT_CODEC_DIR / "codec.json").read_text())
    assert (spec.tokens, spec.bits, spec.stages, spec.codebook_size, spec.split_layer) == (
        codec["tokens"], codec["bits"], codec["stages"], codec["codebook_size"],
        codec["split_layer"])
    assert spec.vision_fingerprint == torch_edge.vision.fingerprint == codec["vision_fingerprint"]
    assert spec.codec_fingerprint == torch_edge.codec_fingerprint == codec["fingerprint"]
    processor = json.loads((DEFAULT_MODEL_DIR / "processor_config.json").read_text())
    assert spec.preprocess == Preprocess.from_processor_config(processor["image_processor"])
    assert spec.image_size == torch_edge.vision.embeddings.image_size
    assert spec.validation["images"] >= 4 and spec.validation["batch_of_one_equals_batch"]


@pytest.mark.parametrize("size", [(128, 128), (300, 200), (129, 500), (77, 61)])
def test_numpy_preprocessing_equals_the_model_processor(torch_edge, size):
    rng = np.random.default_rng(sum(size))
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = torch_edge.image_processor(images=[image], return_tensors="np").pixel_values
    pre = Preprocess.from_processor_config(
        json.loads((DEFAULT_MODEL_DIR / "processor_config.json").read_text())["image_processor"])
    ours = preprocess([image], pre)
    np.testing.assert_array_equal(ours, expected)


def test_onnx_indices_equal_torch_indices(exported_edge, torch_edge):
    from edge_agent.encoder import EdgeEncoder
    from edge_agent.onnx_edge import OnnxEdge

    edge = OnnxEdge(exported_edge)
    assert all(hasattr(edge, name) for name in EdgeEncoder.__annotations__)
    images = [open_image(SAMPLES_DIR / name) for name in IMAGES]
    assert edge.chunks(images) == torch_edge.chunks(images)
    msgs = edge.messages(edge.chunks(images[:1])[0], "q?", 5)
    ref = torch_edge.messages(torch_edge.chunks(images[:1])[0], "q?", 5)
    assert [m.SerializeToString() for m in msgs] == [m.SerializeToString() for m in ref]


def test_validation_refuses_a_graph_that_disagrees(exported_edge, torch_edge):
    """The export's own check: a graph run against a different codec must be refused."""
    import copy

    import torch

    from alignedvq.edge_export import EdgeExportError, validate

    other = copy.deepcopy(torch_edge.codec)
    with torch.no_grad():
        other.codebooks.copy_(other.codebooks.flip(1))
    pixels = preprocess([open_image(SAMPLES_DIR / IMAGES[0])],
                        EdgeSpec.load(exported_edge).preprocess)
    with pytest.raises(EdgeExportError, match="not near-ties"):
        validate(torch_edge.vision, other, exported_edge / "edge.onnx", pixels)


def _agent(server, *args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python_flags, "-m", "edge_agent.cli",
                           "--server", server.address, *args], capture_output=True, text=True,
                          timeout=120)


def test_onnx_agent_answers_like_the_torch_agent_without_importing_torch(
        exported_edge, server, tmp_path):
    # One question end to end (each torch agent start costs seconds); every sample image's
    # indices are compared in-process above.
    for row in ROWS[:1]:
        common = ["--image", str(SAMPLES_DIR / row["image"]), "--question", row["question"],
                  "--json", "--mode", "alignedvq"]
        onnx = _agent(server, *common, "--runtime", "onnx", "--onnx-dir", str(exported_edge),
                      "--dump-payload", str(tmp_path / "onnx.json"),
                      python_flags=("-X", "importtime"))
        assert onnx.returncode == 0, onnx.stderr[-2000:]
        # -X importtime lists every module the process imported, on stderr.
        imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", onnx.stderr,
                                  re.M))
        assert "onnxruntime" in imported and "edge_agent.onnx_edge" in imported
        heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers"))
        assert not heavy, f"--runtime onnx imported {heavy[:10]}"
        torch_run = _agent(server, *common, "--runtime", "torch",
                           "--dump-payload", str(tmp_path / "torch.json"))
        assert torch_run.returncode == 0, torch_run.stderr[-2000:]
        a, b = json.loads(onnx.stdout), json.loads(torch_run.stdout)
        assert a["answer"] == b["answer"] and a["payload_bytes"] == b["payload_bytes"]
        sent = [json.loads((tmp_path / f"{n}.json").read_text())["messages_base64"]
                for n in ("onnx", "torch")]
        chunks = [[pb.AnswerFromCodesRequest.FromString(base64.b64decode(m)) for m in s][1:]
                  for s in sent]
        assert chunks[0] == chunks[1]


def test_missing_export_says_how_to_make_one(server, tmp_path):
    r = _agent(server, "--image", str(SAMPLES_DIR / IMAGES[0]), "--question", "q",
               "--runtime", "onnx", "--onnx-dir", str(tmp_path / "nowhere"))
    assert r.returncode == 2
    assert "alignedvq export-edge" in r.stderr and "nowhere" in r.stderr


def test_onnx_runtime_sends_indices_only(exported_edge, server):
    r = _agent(server, "--image", str(SAMPLES_DIR / IMAGES[0]), "--question", "q",
               "--runtime", "onnx", "--onnx-dir", str(exported_edge), "--mode", "image")
    assert r.returncode == 2 and "--mode alignedvq" in r.stderr


def test_export_edge_cli_reports_its_check(exported_edge):
    """The session fixture ran the command itself; it reports the check against torch."""
    assert "100.0000% of indices equal" in (exported_edge / "export.log").read_text()
    assert EdgeSpec.load(exported_edge).validation["index_match_rate"] == 1.0


def test_7b_geometry_exports_shrunk(tmp_path):
    """llava-1.5-7b's edge structure (CLIP ViT-L/14-336 cut at layer 23 of 24, CLS dropped,
    quick_gelu) at toy width: the same export and check; the full size is in `bench edge`."""
    from alignedvq.benchmarks.edge_geometry import geometry_edge
    from alignedvq.edge_export import write_edge
    from edge_agent.onnx_edge import OnnxEdge

    vision, codec, pre = geometry_edge(shrink=True)
    rng = np.random.default_rng(0)
    from PIL import Image

    images = [Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
              for _ in range(3)]
    spec = write_edge(vision, codec, pre, tmp_path, preprocess(images, pre), "0" * 16)
    assert spec.tokens == (56 // 14) ** 2 and spec.validation["batch_of_one_equals_batch"]
    idx = OnnxEdge(tmp_path).indices(images)
    import torch

    with torch.no_grad():
        ref = codec.encode(vision(torch.from_numpy(preprocess(images, pre)))).numpy()
    assert (idx == ref).mean() >= 0.99


def test_compare_edges_on_the_samples(exported_edge, server):
    """`alignedvq compare-edges` (the 600-image evaluation in the README) on the 8 sample
    questions, against the module's server."""
    from alignedvq.evaluation.edge_agreement import compare_edges

    r = compare_edges(SAMPLES_DIR / "questions.jsonl", exported_edge, DEFAULT_MODEL_DIR,
                      DEFAULT_CODEC_DIR, server=server.address)
    assert r["questions"] == len(ROWS) and r["tokens"] == len(ROWS) * 64
    assert r["token_match_rate"] == 1.0 and r["differing_tokens"] == 0
    assert r["answer_agreement"] == 1.0
    assert r["accuracy_torch_edge"] == r["accuracy_onnx_edge"] == 1.0   # the demo's 8/8


def test_a_corrupt_graph_is_a_clear_error(exported_edge, server, tmp_path):
    (tmp_path / "edge.json").write_text((exported_edge / "edge.json").read_text())
    (tmp_path / "edge.onnx").write_bytes(b"not an onnx graph")
    r = _agent(server, "--image", str(SAMPLES_DIR / IMAGES[0]), "--question", "q",
               "--runtime", "onnx", "--onnx-dir", str(tmp_path))
    assert r.returncode == 2 and "cannot load the ONNX edge" in r.stderr
    assert "Traceback" not in r.stderr


# --- export-edge --weights int8 ---------------------------------------------------------------

def test_int8_export_is_refused_on_the_embedded_model(tmp_path, capsys):
    """The embedded model's int8 graph agrees with float32 on ~89 % of tokens
    (docs/benchmarks/edge_int8.md): the command refuses it, names the agreement and the
    threshold, exits as its other failures do and writes nothing edge-agent would load."""
    from alignedvq.cli import main

    out = tmp_path / "int8"
    assert main(["export-edge", "--weights", "int8", "--agreement-scenes", "16",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    agreed = re.search(r"agree with the float32 torch edge on ([\d.]+)% of (\d+) tokens", err)
    assert agreed, err
    assert float(agreed.group(1)) < 99 and int(agreed.group(2)) == (6 + 16) * 64
    assert "below the 99% threshold" in err and "--allow-below-threshold" in err
    assert not list(out.rglob("edge.*"))


@pytest.fixture(scope="module")
def forced_int8_edge(exported_edge, torch_edge, tmp_path_factory):
    """The session's float32 export quantised with the agreement check forced, as
    `export-edge --weights int8 --allow-below-threshold` does after its float32 check."""
    import shutil

    from alignedvq.edge_export import int8_graph

    work = tmp_path_factory.mktemp("int8-work")
    shutil.copy(exported_edge / "edge.onnx", work / "edge.onnx")
    pixels = preprocess([open_image(SAMPLES_DIR / name) for name in IMAGES],
                        EdgeSpec.load(exported_edge).preprocess)
    graph, quantization = int8_graph(torch_edge.vision, torch_edge.codec, work / "edge.onnx",
                                     pixels, allow_below_threshold=True)
    out = tmp_path_factory.mktemp("int8-edge")
    shutil.copy(graph, out / "edge.onnx")
    spec = EdgeSpec.load(exported_edge)
    spec.weights, spec.quantization = "int8", quantization
    spec.save(out)
    return out


def test_a_forced_int8_graph_runs_in_the_onnx_edge(forced_int8_edge, torch_edge):
    from edge_agent.onnx_edge import OnnxEdge

    spec = EdgeSpec.load(forced_int8_edge)
    a = spec.quantization["agreement"]
    assert spec.weights == "int8" and spec.below_threshold
    assert a["forced"] and not a["passed"] and a["token_agreement"] < a["threshold"] == 0.99
    assert a["tokens"] == len(IMAGES) * 64 and spec.quantization["quantized_nodes"] > 0
    images = [open_image(SAMPLES_DIR / name) for name in IMAGES]
    idx = OnnxEdge(forced_int8_edge).indices(images)
    assert idx.shape == (len(images), spec.tokens, spec.stages) and idx.dtype == np.int64
    assert ((0 <= idx) & (idx < spec.codebook_size)).all()
    import onnx

    ops = {n.op_type for n in onnx.load(str(forced_int8_edge / "edge.onnx")).graph.node}
    assert "MatMulInteger" in ops and "ArgMin" in ops   # quantised blocks, float codec search


def test_edge_agent_warns_about_a_forced_int8_graph(forced_int8_edge, exported_edge, server):
    common = ["--image", str(SAMPLES_DIR / IMAGES[0]), "--question", "q", "--runtime", "onnx",
              "--json"]
    forced = _agent(server, *common, "--onnx-dir", str(forced_int8_edge))
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "warning" in forced.stderr and "--allow-below-threshold" in forced.stderr
    assert re.search(r"only [\d.]+% of tokens \(threshold 99%\)", forced.stderr)
    plain = _agent(server, *common, "--onnx-dir", str(exported_edge))
    assert plain.returncode == 0 and "warning" not in plain.stderr
