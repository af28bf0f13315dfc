"""Codegen policy: the stubs are committed, and regenerating them changes nothing."""

from pathlib import Path

from alignedvq.protogen import generate
from common.paths import REPO_ROOT


def test_committed_stubs_are_up_to_date(tmp_path):
    generated = generate(tmp_path)
    assert generated, "protoc produced nothing"
    for path in generated:
        rel = path.relative_to(tmp_path)
        committed = REPO_ROOT / rel
        assert committed.exists(), f"{rel} is not committed; run `make proto`"
        assert committed.read_text() == path.read_text(), f"{rel} is stale; run `make proto`"


def test_proto_follows_buf_conventions():
    text = (REPO_ROOT / "protos/alignedvq/v1/inference.proto").read_text()
    assert "package alignedvq.v1;" in text
    assert "FEATURE_ENCODING_UNSPECIFIED = 0;" in text
    assert Path(REPO_ROOT / "alignedvq/v1/inference_pb2.py").exists()
