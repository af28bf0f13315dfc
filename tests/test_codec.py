"""AlignedVQ: the decoder inverts exactly what the encoder quantised, payloads round-trip
through serialised messages, sizes are counted, mismatches are refused."""

import json
import shutil

import pytest
import torch
from conftest import run_in_process

from alignedvq.cli import main as alignedvq
from alignedvq.data.shapes_vqa import write_dataset
from alignedvq.v1 import inference_pb2 as pb
from common.codec.aligned_vq import AlignedVQ, CodecConfig, CodecMismatchError, codec_split_layer
from common.codec.encodings import AlignedVQEncoding, Fp16Encoding, Int8Encoding, PayloadError
from common.paths import DEFAULT_CODEC_DIR, DEFAULT_MODEL_DIR, EARLY_CODEC_DIR
from common.split.point import SplitPoint
from common.split.weights import vision_fingerprint
from common.wire.messages import codes_request_messages


def small_codec(bits=6, stages=2, dim=16, tokens=10, position_prior=False, context_layers=0,
                uncoded_tokens=0):
    torch.manual_seed(0)
    return AlignedVQ(CodecConfig(feature_dim=dim, code_dim=4, bits=bits, stages=stages,
                                 tokens=tokens, split_layer=1, vision_fingerprint="00" * 8,
                                 position_prior=position_prior, context_layers=context_layers,
                                 uncoded_tokens=uncoded_tokens)).eval()


def test_an_uncoded_cls_is_not_sent_and_decodes_to_its_prior():
    codec = small_codec(position_prior=True, uncoded_tokens=1)
    with torch.no_grad():
        codec.position_mean.copy_(torch.randn(10, 16))
        codec.position_stats.copy_(torch.randn(10, 2) * 0.1)
    x = torch.randn(3, 10, 16) * 5 + 2
    idx = codec.encode(x)
    assert idx.shape == (3, 9, 2)  # CLS (token 0) has no index
    decoded = codec.decode(idx)
    assert decoded.shape == (3, 10, 16)
    other = x.clone()
    other[:, 0] = torch.randn(3, 16) * 9  # CLS changes: nothing the edge sends does
    assert torch.equal(codec.encode(other), idx)
    with torch.no_grad():
        mean, log_std = (codec.stats.bias + codec.position_stats[0]).unbind(-1)
        cls = codec.position_mean[0] * torch.exp(log_std) + mean
    torch.testing.assert_close(decoded[:, 0], cls.expand(3, 16))
    enc = AlignedVQEncoding(codec)
    assert enc.tokens == 9 and enc.chunk_size(0) == 7  # 9 indices x 6 bits
    torch.testing.assert_close(enc.decode(enc.encode(x[0])), decoded[0])
    with pytest.raises(ValueError, match="needs position_prior"):
        small_codec(uncoded_tokens=1)


def test_context_layers_start_as_the_identity_and_then_read_the_other_tokens():
    plain, with_context = small_codec(), small_codec(context_layers=2)
    x = torch.randn(3, 10, 16) * 5 + 2
    idx = plain.encode(x)
    assert torch.equal(with_context.encode(x), idx)  # the edge is unchanged
    torch.testing.assert_close(with_context.decode(idx), plain.decode(idx))
    with torch.no_grad():
        for layer in with_context.context:
            torch.nn.init.normal_(layer.attention.out_proj.weight)
    other = idx.clone()
    other[:, 1:] = (other[:, 1:] + 1) % 64  # every token but the first changes its codeword
    decoded, changed = with_context.decode(idx), with_context.decode(other)
    assert not torch.allclose(decoded[:, 0], changed[:, 0])  # token 0 read its neighbours
    torch.testing.assert_close(plain.decode(idx)[:, 0], plain.decode(other)[:, 0])


def test_a_zero_position_prior_is_the_plain_codec():
    plain, with_prior = small_codec(), small_codec(position_prior=True)
    x = torch.randn(3, 10, 16) * 5 + 2
    idx = plain.encode(x)
    assert torch.equal(with_prior.encode(x), idx)
    torch.testing.assert_close(with_prior.decode(idx), plain.decode(idx))


def test_the_position_prior_spends_no_codeword_on_what_every_image_shares():
    # Tokens = a large pattern per position (the same in every image) + a small image part:
    # a 2-bit codebook cannot tell ten positions apart, the prior knows them for free.
    torch.manual_seed(1)
    positions = torch.randn(10, 16) * 3
    x = positions + 0.3 * torch.randn(64, 10, 16)
    errors = {}
    for prior in (False, True):
        codec = small_codec(bits=2, stages=1, position_prior=prior)
        with torch.no_grad():
            if prior:
                codec.set_position_mean(codec.align(x)[0].mean(0))
            flat = codec.aligned_residual(x).reshape(-1, 16)
            mu = flat.mean(0)
            codec.set_projection(mu, torch.cov(flat.T), 0.0, 0.0)
            _, mean, log_std = codec.align(x)
            codec.stats.bias.copy_(torch.tensor([mean.mean(), log_std.mean()]))
            codec.initialise_codebooks(codec.project(x).reshape(-1, 4), seed=0)
            errors[prior] = float((codec.decode(codec.encode(x)) - x).pow(2).mean())
    assert errors[True] < 0.5 * errors[False], errors


def test_the_options_round_trip_and_leave_older_fingerprints_alone(tmp_path):
    plain = small_codec()
    # codecs made before the options existed
    assert not {"position_prior", "context_layers"} & set(plain.config.identity())
    codec = small_codec(position_prior=True, context_layers=1)
    with torch.no_grad():
        codec.position_mean.copy_(torch.randn(10, 16))
    codec.save(tmp_path)
    meta = json.loads((tmp_path / "codec.json").read_text())
    assert meta["position_prior"] is True and meta["context_layers"] == 1
    loaded = AlignedVQ.load(tmp_path)
    assert loaded.config.position_prior and loaded.config.context_layers == 1
    assert loaded.fingerprint() == codec.fingerprint()
    torch.testing.assert_close(loaded.position_mean, codec.position_mean)
    assert codec.fingerprint() != plain.fingerprint()


def test_decode_of_encode_is_the_quantised_features():
    codec = small_codec()
    x = torch.randn(3, 10, 16) * 5 + 2
    with torch.no_grad():
        _, q = codec.quantize(codec.project(x))
        expected = codec.reconstruct(q)
        straight_through, _, _ = codec(x)
    torch.testing.assert_close(codec.decode(codec.encode(x)), expected)
    torch.testing.assert_close(straight_through, expected)


def test_payload_round_trips_through_serialised_messages():
    codec = small_codec()
    enc = AlignedVQEncoding(codec)
    x = torch.randn(10, 16)
    chunks = enc.encode(x)
    messages = codes_request_messages(enc.encoding, enc.tokens, enc.bits, enc.stages, chunks,
                                      "ab" * 8, "cd" * 8)
    wire = [m.SerializeToString() for m in messages]
    received = [pb.AnswerFromCodesRequest.FromString(w) for w in wire]
    assert received[0].header.bits == 6 and received[0].header.stages == 2
    decoded = enc.decode([m.chunk.packed_indices for m in received[1:]])
    torch.testing.assert_close(decoded, codec.decode(codec.encode(x[None]))[0])


def test_baseline_encodings_round_trip_within_their_precision():
    x = torch.randn(10, 16) * 3
    torch.testing.assert_close(Fp16Encoding(10, 16).decode(Fp16Encoding(10, 16).encode(x)), x,
                               rtol=1e-3, atol=1e-2)
    int8 = Int8Encoding(10, 16)
    err = (int8.decode(int8.encode(x)) - x).abs().max() / x.abs().max()
    assert err < 0.01


def test_malformed_chunks_are_refused():
    enc = AlignedVQEncoding(small_codec())
    good = enc.encode(torch.randn(10, 16))
    with pytest.raises(PayloadError, match="expected 2 chunk"):
        enc.decode(good[:1])
    with pytest.raises(PayloadError, match="holds 9 bytes, expected 8"):
        enc.decode([good[0] + b"\0", good[1]])
    with pytest.raises(PayloadError, match="NaN"):
        Fp16Encoding(1, 2).decode([b"\x00\x7e\x00\x00"])


def test_save_load_and_fingerprint_mismatch_is_refused(tmp_path):
    codec = small_codec()
    codec.save(tmp_path)
    loaded = AlignedVQ.load(tmp_path, expect_fingerprint="00" * 8)
    assert loaded.fingerprint() == codec.fingerprint()
    with pytest.raises(CodecMismatchError,
                       match=r"0000000000000000 \(split layer 1\).*checkpoint's weights.*ffff"):
        AlignedVQ.load(tmp_path, expect_fingerprint="ffff" * 4)
    with pytest.raises(CodecMismatchError, match=r"split layer 1 \(its codec.json\).*layer 3"):
        AlignedVQ.load(tmp_path, expect_split_layer=3)
    # The layer is named before the fingerprint: at another layer the fingerprint differs too.
    with pytest.raises(CodecMismatchError, match="split layer 3 was asked for"):
        AlignedVQ.load(tmp_path, expect_fingerprint="ffff" * 4, expect_split_layer=3)
    assert codec_split_layer(tmp_path) == 1
    assert codec_split_layer(tmp_path, 3) == 3 and codec_split_layer(None) is None


def test_shipped_codec_matches_the_shipped_model():
    meta = json.loads((DEFAULT_CODEC_DIR / "codec.json").read_text())
    from transformers import AutoConfig

    split = SplitPoint.from_config(AutoConfig.from_pretrained(DEFAULT_MODEL_DIR),
                                   meta["split_layer"])
    assert meta["vision_fingerprint"] == vision_fingerprint(DEFAULT_MODEL_DIR, split)
    assert meta["bits"] == 12 and meta["codebook_size"] == 4096


def test_eval_alignedvq_payload_budget_and_accuracy(test_split, original_eval):
    # The same 60 questions as the original model's run (shared, tests/conftest.py).
    out = run_in_process(alignedvq, ["eval", "--dataset", test_split, "--mode", "alignedvq",
                                     "--json"])
    assert out.returncode == 0, out.stderr
    vq = json.loads(out.stdout)
    assert vq["n"] == original_eval["n"] == 60
    assert vq["payload_bytes_mean"] <= 1.6 * vq["image_tokens"] + 64
    assert vq["compression_ratio_vs_fp16"] > 100
    assert vq["accuracy"] >= original_eval["accuracy"] - 0.05, (vq, original_eval)


def test_eval_refuses_a_codec_for_another_model(tmp_path):
    codec_dir = tmp_path / "codec"
    shutil.copytree(DEFAULT_CODEC_DIR, codec_dir)
    meta = json.loads((codec_dir / "codec.json").read_text())
    meta["vision_fingerprint"] = "0123456789abcdef"
    (codec_dir / "codec.json").write_text(json.dumps(meta))
    data = write_dataset(tmp_path / "data", 2, seed=2, progress=False)
    out = run_in_process(alignedvq, ["eval", "--dataset", data, "--mode", "alignedvq",
                                     "--codec", codec_dir])
    assert out.returncode == 2
    assert "0123456789abcdef" in out.stderr and "belongs to another checkpoint" in out.stderr


def test_eval_cuts_where_the_codec_was_trained(tmp_path):
    """The early-split codec needs no --split-layer (issue 22); one that disagrees is refused
    naming both layers."""
    data = write_dataset(tmp_path / "data", 2, seed=2, progress=False)
    args = ["eval", "--dataset", data, "--mode", "alignedvq", "--codec", EARLY_CODEC_DIR]
    out = run_in_process(alignedvq, [*args, "--json"])
    assert out.returncode == 0, out.stderr
    # 64 patch tokens x 12 bits (CLS is decoded from the codec's prior), plus the header.
    assert json.loads(out.stdout)["payload_bytes_mean"] <= 130
    out = run_in_process(alignedvq, [*args, "--split-layer", "4"])
    assert out.returncode == 2
    assert "trained for split layer 1" in out.stderr and "split layer 4 was asked" in out.stderr


def test_train_codec_command_writes_a_codec_that_eval_uses(tmp_path):
    data = write_dataset(tmp_path / "data", 16, seed=7, progress=False)
    out = run_in_process(alignedvq, ["train-codec", "--dataset", data, "--bits", "4",
                                     "--stages", "2", "--steps", "2", "--batch", "4",
                                     "--workers", "0", "--out", tmp_path / "codec"])
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "codec" / "codec.json").read_text())
    assert (meta["bits"], meta["stages"], meta["codebook_size"]) == (4, 2, 16)
    result = run_in_process(alignedvq, ["eval", "--dataset", data, "--limit", "4",
                                        "--mode", "alignedvq", "--codec", tmp_path / "codec",
                                        "--json"])
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    # two 4-bit stages over 64 tokens: 2 chunks of 32 bytes, plus the header
    assert 64 < measured["payload_bytes_mean"] < 64 + 64
    # a fine-tune of it keeps its geometry and records what it started from
    out = run_in_process(alignedvq, ["train-codec", "--dataset", data, "--steps", "1",
                                     "--batch", "4", "--workers", "0", "--init-from",
                                     tmp_path / "codec", "--out", tmp_path / "tuned"])
    assert out.returncode == 0, out.stderr
    log = json.loads((tmp_path / "tuned" / "training_log.json").read_text())
    assert log["init_from"]["fingerprint"] == meta["fingerprint"]
    assert json.loads((tmp_path / "tuned" / "codec.json").read_text())["bits"] == 4


def test_a_fine_tune_keeps_its_codecs_geometry_unless_told():
    import argparse

    from alignedvq.training.train_codec_cli import fill_geometry

    args = argparse.Namespace(init_from=str(EARLY_CODEC_DIR), bits=None, stages=None,
                              code_dim=None, split_layer=None, position_prior=None,
                              context_layers=None, uncoded_cls=None)
    fill_geometry(args)
    early = json.loads((EARLY_CODEC_DIR / "codec.json").read_text())
    assert (args.bits, args.stages, args.code_dim, args.split_layer, args.position_prior) == (
        early["bits"], 1, early["code_dim"], 1, early.get("position_prior", False))
    args = argparse.Namespace(init_from=None, bits=None, stages=2, code_dim=None,
                              split_layer=None, position_prior=None, context_layers=1,
                              uncoded_cls=None)
    fill_geometry(args)
    assert (args.bits, args.stages, args.code_dim, args.split_layer, args.position_prior,
            args.context_layers) == (12, 2, 32, None, False, 1)
