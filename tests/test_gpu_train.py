"""benchmarks/gpu_train.py, the prepared GPU script: its whole grid runs at toy size on a CPU
and reports every field the GPU run is read for, and it checkpoints what the trainer does."""

import json
import subprocess
import sys

import pytest

FIELDS = {"split_layer", "batch", "gradient_checkpointing", "status", "step_ms_median",
          "steps_per_s", "images_per_s", "peak_gpu_mb", "tokens", "sequence", "targets"}


@pytest.mark.integration
def test_shrunken_run_reports_every_configuration(tmp_path):
    out = tmp_path / "gpu_train.json"
    proc = subprocess.run(
        [sys.executable, "-m", "alignedvq.benchmarks.gpu_train", "--shrink", "--device", "cpu",
         "--batches", "2", "4", "--steps", "1", "--warmup", "1", "--json-out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    steps = [line for line in lines if ": step " in line]
    assert "step 1/2 (warm-up)" in steps[0] and len(steps) == 8 * 2   # a line every step
    result = json.loads(lines[-1])
    assert result == json.loads(out.read_text())
    rows = result["results"]
    # The shrunken tower has 3 blocks, feature layer 2 (vision_feature_layer -2).
    assert {(r["split_layer"], r["batch"], r["gradient_checkpointing"]) for r in rows} == {
        (layer, batch, ckpt) for layer in (1, 2) for batch in (2, 4) for ckpt in (False, True)}
    for r in rows:
        assert FIELDS <= r.keys() and r["status"] == "ok"
        assert r["steps_per_s"] > 0 and r["peak_gpu_mb"] is None   # no CUDA on this device
        assert r["targets"] == r["batch"] * 17                      # every answer token
        assert r["parts"]["distill"] >= 0 and "agreement" in r["parts"]


@pytest.mark.integration
def test_full_geometry_without_a_gpu_says_how_to_run_it():
    proc = subprocess.run([sys.executable, "-m", "alignedvq.benchmarks.gpu_train",
                           "--device", "cpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--shrink" in proc.stderr


@pytest.mark.unit
def test_only_the_language_model_is_checkpointed():
    """As in the trainer, whose cloud.model has no vision tower: the vision blocks the edge and
    the cloud share with the in-memory model are not recomputed."""
    import torch

    from alignedvq.benchmarks.gpu_train import build, halves_at

    cpu = torch.device("cpu")
    model, config = build(True, cpu, torch.float32)
    halves, _ = halves_at(model, config, 1, cpu, torch.float32, gradient_checkpointing=True)
    lm = model.model.language_model
    assert lm.training and all(layer.gradient_checkpointing for layer in lm.layers)
    assert not any(layer.training for layer in [*halves.edge.layers, *halves.cloud.vision.layers])
    halves, _ = halves_at(model, config, 1, cpu, torch.float32, gradient_checkpointing=False)
    assert not lm.training and not any(layer.gradient_checkpointing for layer in lm.layers)
