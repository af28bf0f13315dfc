"""The ``alignedvq`` command: offline workflows (data, training, evaluation)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alignedvq.answer_worker import add_parser as add_answer_worker_parser
from alignedvq.edge_quantize import AGREEMENT_SCENES, AGREEMENT_THRESHOLD, WEIGHTS
from alignedvq.evaluation.evaluate import MAX_NEW_TOKENS, MODES, OLD_MODE_NAMES
from alignedvq.evaluation.scoring import SCORERS
from alignedvq.training.train_codec_cli import add_parser as add_train_codec_parser
from common._runtime.torchvision_cpu import install_import_hook
from common.paths import (
    DEFAULT_CODEC_DIR,
    DEFAULT_EDGE_DIR,
    DEFAULT_MODEL_DIR,
    EARLY_EDGE_DIR,
    shipped_edge_dir,
)


def _dataset(args) -> int:
    from alignedvq.data.shapes_vqa import write_conversations, write_dataset

    if args.turns == 1:
        path = write_dataset(Path(args.out), args.n, args.seed, progress=not args.quiet)
        print(f"wrote {args.n} questions to {path}")
    else:
        path = write_conversations(Path(args.out), args.n, args.turns, args.seed,
                                   progress=not args.quiet)
        print(f"wrote {args.n} conversations of {args.turns} questions to {path}")
    return 0


def _train_model(args) -> int:
    import torch

    from alignedvq.training.train_model import RECIPE, Phase, train

    torch.set_num_threads(args.threads)
    frozen, end_to_end = RECIPE
    phases = (Phase(**{**frozen.__dict__, "stop_step": args.frozen_steps}),
              Phase(**{**end_to_end.__dict__, "schedule_steps": args.end_to_end_steps,
                       "stop_step": args.end_to_end_steps}))
    log = train(Path(args.out), seed=args.seed, images=args.images,
                vision_minutes=args.vision_minutes, phases=phases,
                max_minutes=args.max_minutes, batch=args.batch,
                questions_per_image=args.questions_per_image,
                target_accuracy=args.target_accuracy)
    last = log["history"][-1] if log["history"] else {}
    print(f"saved to {args.out} in {log['total_minutes']:.1f} min, held-out answer accuracy "
          f"{last.get('held_out_answer_accuracy', float('nan')):.3f}")
    return 0


def _bench_codec(args) -> int:
    from alignedvq.benchmarks.codec_speed import main as bench

    bench(repeats=args.repeats, include_7b=not args.no_7b)
    return 0


def _bench(args) -> int:
    from alignedvq.extras import require

    if args.suite == "batching":
        # The lead's serving benchmark; imported lazily (and only when asked for).
        from alignedvq.benchmarks.batching import main as batching

        return batching(quick=args.quick, as_json=args.json, model=args.model,
                        codec=args.codec, engines=args.engines)
    if args.suite == "load":
        from alignedvq.benchmarks.load import main as load

        return load(clients=args.clients, seconds=5.0 if args.quick else args.seconds,
                    as_json=args.json)
    if args.suite == "auto":
        require("alignedvq bench auto", "matplotlib", "skimage")  # its figure; 7B photos
        from alignedvq.benchmarks.auto_latency import run as auto_latency

        report = auto_latency(Path(args.out or "runs/bench-auto"), quick=args.quick,
                              link=args.link)
        if args.json:
            print(json.dumps(report))
        return 0
    if args.suite == "edge":
        from alignedvq.benchmarks.edge_runtime import main as edge

        return edge(repeats=3 if args.quick else 20, agent_runs=1 if args.quick else 5,
                    include_7b=not (args.quick or args.no_7b), threads=args.threads,
                    as_json=args.json)
    # The report's figures (matplotlib) and its 7B JPEG rows (scikit-image's photographs).
    require("alignedvq bench", "matplotlib", "skimage")
    from alignedvq.benchmarks.report import SECTIONS
    from alignedvq.benchmarks.report import main as report

    sections = tuple(s for s in args.sections.split(",") if s) if args.sections else SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"error: unknown section(s) {', '.join(unknown)}; choose from "
              f"{', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    return report(quick=args.quick, out=args.out or "runs/bench", as_json=args.json,
                  sections=sections, link=args.link)


def _eval(args) -> int:
    from alignedvq.data.datasets import DatasetError
    from alignedvq.evaluation.evaluate import evaluate

    if args.mode in OLD_MODE_NAMES:
        print(f"note: --mode {args.mode} is now called --mode {OLD_MODE_NAMES[args.mode]}",
              file=sys.stderr)
    try:
        result = evaluate(Path(args.model), Path(args.dataset), limit=args.limit,
                          batch_size=args.batch_size, device=args.device,
                          progress=not args.json, mode=args.mode,
                          codec_dir=Path(args.codec) if args.codec else None,
                          split_layer=args.split_layer, scorer=args.scorer,
                          # A shell's "\n" is two characters; the suffix means a new line.
                          prompt_suffix=(args.prompt_suffix or "").replace("\\n", "\n"),
                          image_folder=Path(args.image_folder) if args.image_folder else None,
                          max_new_tokens=args.max_new_tokens,
                          predictions_path=Path(args.predictions) if args.predictions else None)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if result["skipped_text_only"]:
        print(f"note: {result['skipped_text_only']} text-only entries (no image) skipped",
              file=sys.stderr)
    if args.json:
        result.pop("predictions")
        print(json.dumps(result))
    else:
        print(f"{result['mode']}: accuracy {result['accuracy']:.4f} on {result['n']} questions "
              f"({result['format']} file, {result['scorer']} scorer, {result['seconds']} s)")
        if "payload_bytes_mean" in result and "compression_ratio_vs_fp16" not in result:
            print(f"  payload {result['payload_bytes_mean']:.1f} B per image")
        elif "payload_bytes_mean" in result:
            print(f"  payload {result['payload_bytes_mean']:.1f} B per image, "
                  f"{result['compression_ratio_vs_fp16']:.1f}x smaller than fp16 features")
        for family, r in result["by_family"].items():
            print(f"  {family:<12} {r['accuracy']:.4f}  (n={r['n']})")
        if result["errors"]:
            print(f"  {len(result['errors'])} image(s) failed to load, counted wrong:")
            for e in result["errors"][:10]:
                print(f"    {e['image']}: {e['error']}")
    return 0


def _export_edge(args) -> int:
    from alignedvq.edge_export import EdgeExportError, export_edge
    from common.codec.aligned_vq import CodecMismatchError

    if args.out is None:
        args.out = str(shipped_edge_dir(Path(args.codec)))
    try:
        spec = export_edge(Path(args.model), Path(args.codec), Path(args.out), args.split_layer,
                           weights=args.weights, agreement_scenes=args.agreement_scenes,
                           allow_below_threshold=args.allow_below_threshold)
    except (EdgeExportError, CodecMismatchError, FileNotFoundError, ValueError) as e:
        print(f"export-edge: {e}", file=sys.stderr)
        return 2
    v = spec.validation
    print(f"wrote {Path(args.out) / spec.graph} and {Path(args.out) / 'edge.json'}: "
          f"{spec.image_size}px -> {spec.tokens} tokens x {spec.stages} stage(s) of "
          f"{spec.bits} bits; {'the float32 graph ' if spec.weights == 'int8' else ''}"
          f"checked against torch on {v['images']} images: "
          f"{v['index_match_rate']:.4%} of indices equal ({v['near_ties']} near-tie(s))")
    if spec.weights == "int8":
        a = spec.quantization["agreement"]
        print(f"int8 weights: tokens agree with the float32 torch edge on "
              f"{a['token_agreement']:.2%} of {a['tokens']} ({a['images']} images, one per run; "
              f"threshold {a['threshold']:.0%})")
    if spec.below_threshold:
        print("export-edge: warning: written below the agreement threshold "
              "(--allow-below-threshold): for measurement, not for deployment", file=sys.stderr)
    return 0


def _compare_edges(args) -> int:
    from alignedvq.evaluation.edge_agreement import compare_edges
    from edge_agent.edge_spec import EdgeExportMissing

    try:
        result = compare_edges(Path(args.dataset), Path(args.onnx_dir), Path(args.model),
                               Path(args.codec), server=args.server, limit=args.limit)
    except (EdgeExportMissing, FileNotFoundError, ValueError) as e:
        print(f"compare-edges: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['questions']} questions, {result['tokens']} tokens: ONNX = torch on "
              f"{result['token_match_rate']:.4%} of tokens ({result['differing_tokens']} differ, "
              f"{result['near_ties']} of them near-ties); answers agree on "
              f"{result['answer_agreement']:.2%}; accuracy torch edge "
              f"{result['accuracy_torch_edge']:.4f}, ONNX edge {result['accuracy_onnx_edge']:.4f} "
              f"({result['seconds']} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignedvq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dataset", help="generate a ShapesVQA split (docs/shapes_vqa.md)")
    p.add_argument("--out", required=True, help="folder for images/ and questions.jsonl")
    p.add_argument("--n", type=int, required=True,
                   help="number of images (each with one question, or --turns)")
    p.add_argument("--turns", type=int, default=1,
                   help="questions per image; above 1, LLaVA's multi-turn instruction format "
                        "(conversations.json) instead of questions.jsonl")
    p.add_argument("--seed", type=int, required=True,
                   help="RNG seed; splits use disjoint seeds (the model trains on seed 0, "
                        "use e.g. 1 for validation and 2 for test)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_dataset)

    p = sub.add_parser("train-model", help="train the embedded tiny LLaVA on ShapesVQA")
    p.add_argument("--out", required=True, help="folder for the HF-format checkpoint")
    p.add_argument("--seed", type=int, default=0, help="fixes data, init and order (default 0)")
    p.add_argument("--images", type=int, default=20000, help="pre-rendered training images")
    p.add_argument("--vision-minutes", type=float, default=4.0,
                   help="stage 1 (dense per-patch pre-training) wall time; ~95%% per patch in 4")
    p.add_argument("--frozen-steps", type=int, default=4000,
                   help="stage 2a: steps with the vision tower frozen (cosine planned over 6000)")
    p.add_argument("--end-to-end-steps", type=int, default=2400,
                   help="stage 2b: steps training everything at half the learning rate")
    p.add_argument("--max-minutes", type=float, default=90.0, help="total wall-time budget")
    p.add_argument("--batch", type=int, default=32, help="images per step")
    p.add_argument("--questions-per-image", type=int, default=8,
                   help="turns per multi-turn training sequence")
    p.add_argument("--target-accuracy", type=float, default=0.995,
                   help="stop once held-out teacher-forced answer accuracy reaches this")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(func=_train_model)

    add_train_codec_parser(sub)
    add_answer_worker_parser(sub)

    p = sub.add_parser("eval", help="accuracy on a VQA dataset (docs/evaluation.md)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="local HF LLaVA checkpoint (default: the embedded model)")
    p.add_argument("--dataset", required=True,
                   help="ShapesVQA or VQA-style JSON Lines, or LLaVA instruction JSON (the "
                        "format is detected; docs/evaluation.md)")
    p.add_argument("--image-folder",
                   help="where the dataset's image paths start (default: the file's folder)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--scorer", choices=list(SCORERS), default="exact",
                   help="exact: lower-cased match with any accepted answer; vqav2: the official "
                        "VQAv2 accuracy over the human answers; vqav2-lmms: lmms-eval's variant "
                        "of it")
    p.add_argument("--prompt-suffix",
                   help="appended to every question, e.g. LLaVA-1.5's \"\\nAnswer the question "
                        "using a single word or phrase.\" (a literal \\n is a new line)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                   help="longest answer generated, in tokens")
    p.add_argument("--predictions",
                   help="write one JSON line per question (question, prediction, expected, "
                        "accepted, score), in dataset order")
    p.add_argument("--batch-size", type=int, default=64, help="questions per generate() call")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--mode", choices=[*MODES, *OLD_MODE_NAMES], default="original",
                   metavar="{" + ",".join(MODES) + "}",
                   help="original: the unmodified model; alignedvq: through the codec; "
                        "fp16/int8: split features sent raw (baselines); image: the cloud-only "
                        "JPEG-90 upload at the model's input size, as edge-agent --mode image "
                        "sends it (its old name, jpeg, still works)")
    p.add_argument("--codec", default=str(DEFAULT_CODEC_DIR),
                   help="codec folder for --mode alignedvq (default: the shipped one)")
    p.add_argument("--split-layer", type=int,
                   help="vision block whose output crosses (default: the feature layer)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)
    p = sub.add_parser("export-edge",
                       help="the edge half (vision blocks before the cut + AlignedVQ encoder) as "
                            "one ONNX graph for `edge-agent --runtime onnx` and other languages",
                       description="Export pixels -> codebook indices as edge.onnx (dynamic "
                                   "batch axis) plus edge.json (preprocessing, tokens, bits, "
                                   "stages, K, fingerprints). The graph is run against the torch "
                                   "edge on sample images; the export fails if any index "
                                   "differs other than by a near-tie.")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="local checkpoint (only its vision weights are read)")
    p.add_argument("--codec", default=str(DEFAULT_CODEC_DIR), help="AlignedVQ codec folder")
    p.add_argument("--out",
                   help="output folder (default: where edge-agent --runtime onnx looks for a "
                        f"shipped codec's export: {DEFAULT_EDGE_DIR.name} for the default "
                        f"codec, {EARLY_EDGE_DIR.name} for the early-split one)")
    p.add_argument("--split-layer", type=int,
                   help="the cut, as for edge-agent (default: where the codec was trained)")
    p.add_argument("--weights", choices=WEIGHTS, default="float32",
                   help="int8: quantise the vision blocks' MatMul weights (ONNX Runtime dynamic "
                        "quantisation) after the float32 check, and refuse the export unless "
                        f"at least {AGREEMENT_THRESHOLD:.0%}% of tokens agree with the float32 "
                        "torch edge (docs/benchmarks/edge_int8.md)")
    p.add_argument("--agreement-scenes", type=int, default=AGREEMENT_SCENES,
                   help="--weights int8: ShapesVQA scenes added to the check images for the "
                        "agreement measurement")
    p.add_argument("--allow-below-threshold", action="store_true",
                   help="--weights int8: write the graph even if the agreement fails (for "
                        "measurement; edge.json records it and edge-agent warns)")
    p.set_defaults(func=_export_edge)

    p = sub.add_parser("compare-edges",
                       help="the ONNX edge vs the torch edge on a question set: token match "
                            "rate, answers through a real server, accuracy of both")
    p.add_argument("--dataset", required=True, help="questions.jsonl (alignedvq dataset)")
    p.add_argument("--onnx-dir", default=str(DEFAULT_EDGE_DIR), help="export-edge's --out")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--codec", default=str(DEFAULT_CODEC_DIR))
    p.add_argument("--server", help="a running cloud-server HOST:PORT (default: start one)")
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_compare_edges)

    p = sub.add_parser("bench-codec",
                       help="encode/decode time per image against the vision tower's")
    p.add_argument("--repeats", type=int, default=20, help="timed repetitions (median)")
    p.add_argument("--no-7b", action="store_true", help="skip the LLaVA-1.5-7B geometry row")
    p.set_defaults(func=_bench_codec)

    p = sub.add_parser("bench", help="benchmarks: the report (accuracy, bytes, latency on "
                                     "emulated links, 7B geometry) or the batching suite")
    p.add_argument("suite", nargs="?", choices=("report", "batching", "load", "edge", "auto"),
                   default="report",
                   help="report (default): report.md, report.json and PNGs in --out; "
                        "batching: the server's throughput with dynamic batching off and on; "
                        "load: many concurrent clients, counting answers, refusals, failures; "
                        "edge: the edge half on torch vs ONNX Runtime (compute, edge-agent "
                        "start-up and memory), embedded model and 7B geometry; "
                        "auto: edge-agent --mode auto against each fixed path and the oracle "
                        "on shaped links of 0.25-100 Mbit/s at 20 and 100 ms RTT, tiny model "
                        "and 7B geometry (auto_latency.md/.json/.png in --out; "
                        "docs/benchmarks/auto_latency.md)")
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets (a few training steps, few images): a smoke run")
    p.add_argument("--out", default=None,
                   help="report folder (default runs/bench; auto: runs/bench-auto); trained "
                        "codecs and datasets are cached there")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--sections", help="report only: comma-separated subset of "
                                      "rate,bytes,latency,gpu (default: all)")
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="batching only: the checkpoint the server runs (e.g. a llava-1.5-7b-hf "
                        "folder on a GPU box; the server picks the GPU itself)")
    p.add_argument("--codec", default=str(DEFAULT_CODEC_DIR),
                   help="batching only: a codec trained for --model")
    p.add_argument("--engines", choices=("builtin", "vllm", "both"), default="builtin",
                   help="batching only: builtin (batching off and on), vllm (builtin batching "
                        "off and the vLLM engine) or both (all three in one run; vLLM needs "
                        "the vllm extra)")
    p.add_argument("--clients", type=int, default=32, help="load only: concurrent clients")
    p.add_argument("--no-7b", action="store_true", help="edge only: skip the 7B geometry")
    p.add_argument("--threads", type=int, default=0,
                   help="edge only: intra-op threads for both torch and ONNX Runtime "
                        "(default: torch's default, the core count)")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="load only: seconds per server configuration (--quick: 5)")
    p.add_argument("--link", choices=("auto", "netns", "proxy"), default="auto",
                   help="report and auto: emulate links with network namespaces (needs root) or "
                        "the loopback shaping proxy; auto = namespaces when possible")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    install_import_hook()  # before any transformers import (common/_runtime/torchvision_cpu.py)
    from alignedvq.extras import MissingExtra, explain

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        hint = explain(e, f"alignedvq {args.command}")
        if hint is None:
            raise
        print(f"error: {hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
