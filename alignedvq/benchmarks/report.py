"""``alignedvq bench [report] [--quick] --out DIR``: the benchmark report.

Writes ``DIR/report.md``, ``DIR/report.json`` and PNG figures. Four sections, each stating the
machine and the commands behind its figures: (1) accuracy against bytes per image, one trained
codec per rate; (2) bytes per image, measured from serialised messages, for the embedded model
and for llava-1.5-7b's geometry; (3) end-to-end latency across emulated links; (4) the 7B
architecture's edge and cloud halves on a GPU (``alignedvq.benchmarks.gpu_geometry``). Every figure is
measured by this run; trained codecs and generated datasets are cached in DIR.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from alignedvq.benchmarks import machine as machine_info
from alignedvq.benchmarks import plots

SECTIONS = ("rate", "bytes", "latency", "gpu")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _gpu_section(quick: bool) -> dict:
    import torch

    from alignedvq.benchmarks import gpu_geometry

    shrink = gpu_geometry.run(shrink=True, device="cpu", dtype="float32",
                              repeats=2 if quick else 5, new_tokens=4 if quick else 8)
    section = {"gpu_available": torch.cuda.is_available(), "gpu_command": gpu_geometry.GPU_COMMAND,
               "shrink_run": shrink,
               "shrink_command": "python -m alignedvq.benchmarks.gpu_geometry --shrink"}
    if torch.cuda.is_available() and not quick:
        section["gpu_run"] = gpu_geometry.run(shrink=False, device="cuda", dtype="float16")
    return section


def run(out: Path, quick: bool = False, sections=SECTIONS, link: str = "auto",
        command: str | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    machine = machine_info.describe()
    report = {"title": "alignedvq benchmark report", "quick": quick,
              "command": command or ("alignedvq bench report" + (" --quick" if quick else "") +
                                     f" --out {out}"),
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine, "sections": list(sections)}
    timings = {}
    prepared = None
    if "rate" in sections or "bytes" in sections:
        from alignedvq.benchmarks import rate_accuracy

        budget = rate_accuracy.Budget.quick() if quick else rate_accuracy.Budget()
        t = time.monotonic()
        prepared = rate_accuracy.prepare(out, budget)
        timings["datasets_and_codecs_s"] = round(time.monotonic() - t, 1)
    if "rate" in sections:
        t = time.monotonic()
        report["rate_accuracy"] = rate_accuracy.run(out, quick, prepared)
        timings["rate_accuracy_s"] = round(time.monotonic() - t, 1)
    if "bytes" in sections:
        from alignedvq.benchmarks import payload_bytes

        log("bench: bytes per image")
        t = time.monotonic()
        report["bytes"] = payload_bytes.run(prepared, rate_accuracy.FULL_RATES, quick)
        timings["bytes_s"] = round(time.monotonic() - t, 1)
    if "latency" in sections:
        from alignedvq.benchmarks import latency

        t = time.monotonic()
        report["latency"] = latency.run(quick, link)
        timings["latency_s"] = round(time.monotonic() - t, 1)
    if "gpu" in sections:
        log("bench: 7B geometry script (shrunken config on this CPU)")
        t = time.monotonic()
        report["gpu"] = _gpu_section(quick)
        timings["gpu_s"] = round(time.monotonic() - t, 1)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["section_seconds"] = timings
    report["figures"] = write_figures(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))
    log(f"bench: wrote {out / 'report.md'}, {out / 'report.json'} and "
        f"{len(report['figures'])} figure(s) in {report['seconds']:.0f} s")
    return report


def write_figures(report: dict, out: Path) -> list[str]:
    line = machine_info.line(report["machine"])
    figures = []
    if "rate_accuracy" in report:
        figures.append(plots.accuracy_vs_bytes(report["rate_accuracy"],
                                               out / "accuracy_vs_bytes.png", line).name)
    if "bytes" in report:
        figures.append(plots.bytes_per_image(report["bytes"], out / "bytes_per_image.png",
                                             line).name)
    if "latency" in report:
        figures.append(plots.latency_vs_link(report["latency"], out / "latency_vs_link.png",
                                             line).name)
    return figures


# ---------------------------------------------------------------------------- markdown

def _b(v) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _machine_block(report: dict, commands: list[str]) -> list[str]:
    lines = [f"*Machine:* {machine_info.line(report['machine'])}.  ",
             f"*Command:* `{report['command']}`"]
    if commands:
        lines.append("")
        lines.append("<details><summary>underlying commands</summary>\n")
        lines += ["```sh", *commands, "```", "</details>"]
    return lines + [""]


def markdown(report: dict) -> str:
    md = [f"# {report['title']}", "",
          f"Measured by `{report['command']}` ({'quick: tiny budgets, a smoke run' if report['quick'] else 'full run'}), "
          f"started {report['started_utc']}, {report['seconds']:.0f} s in all.", "",
          f"Machine: {machine_info.line(report['machine'])}.", ""]
    if "rate_accuracy" in report:
        ra = report["rate_accuracy"]
        b = ra["budget"]
        md += ["## 1. Accuracy against bytes per image", ""]
        md += _machine_block(report, ra["commands"])
        md += [f"Codecs trained by `alignedvq train-codec` on {b['train_questions']} ShapesVQA "
               f"questions (seed {b['train_seed']}), {b['steps']} steps of {b['batch']} images "
               f"each, codec seed {b['codec_seed']}; accuracy on a fresh test split of "
               f"{b['test_questions']} questions (seed {b['test_seed']}, used for nothing "
               f"else). Bytes are the serialised request messages per image (header + chunks, "
               f"question excluded); for JPEG the serialised `AnswerFromImageRequest`.", "",
               "| mode | bits/token | accuracy | bytes per image | x smaller than fp16 | "
               "codec training |", "|---|---|---|---|---|---|"]
        fp16 = next((p["bytes_per_image"] for p in ra["points"] if p["mode"] == "fp16"), None)
        for p in ra["points"]:
            ratio = fp16 / p["bytes_per_image"] if fp16 and p["bytes_per_image"] else None
            training = ""
            if p["mode"] == "alignedvq":
                training = (f"{p['train_minutes']} min" if p.get("train_minutes") is not None
                            else "") + (" (cached)" if p.get("codec_reused_from_cache") else "")
                if p.get("shipped"):
                    training = f"shipped codec, {p['train_minutes']} min"
            md.append(f"| {p['label']} | {p.get('bits_per_token', '-')} | {p['accuracy']:.4f} "
                      f"| {_b(p['bytes_per_image'])} | "
                      f"{'-' if ratio is None else f'{ratio:,.1f}x'} | {training} |")
        md += ["", "![accuracy against bytes](accuracy_vs_bytes.png)", ""]
    if "bytes" in report:
        by = report["bytes"]
        md += ["## 2. Bytes per image, counted from serialised messages", ""]
        md += _machine_block(report, [])
        for key in ("tiny", "llava7b"):
            g = by[key]
            md += [f"**{g['geometry']}** ({g['images']}).", ""]
            paper_col = key == "llava7b"
            md += ["| encoding | bytes per image (mean) | min - max | x smaller than fp16 |" +
                   (" paper |" if paper_col else ""),
                   "|---|---|---|---|" + ("---|" if paper_col else "")]
            for r in g["rows"]:
                md.append(f"| {r['encoding']} | {_b(r['bytes_mean'])} | {_b(r['bytes_min'])} - "
                          f"{_b(r['bytes_max'])} | {r['ratio_vs_fp16']:,.1f}x |" +
                          (f" {_b(r.get('paper'))} |" if paper_col else ""))
            md.append("")
        md += ["The 7B rows: no trained 7B codec is needed for a size. An index payload's length "
               "is fixed by tokens x bits x stages, so indices were packed with "
               "`common.wire.packing` and the real `AnswerFromCodes` messages (header with 8-byte "
               "vision and codec fingerprints, then one chunk per stage) serialised and "
               "counted. At the default cut llava-1.5 drops CLS, so 576 tokens cross where the "
               f"paper counted 577. Paper figures from docs/design.md: {by['llava7b']['paper']['note']}.",
               "", "![bytes per image](bytes_per_image.png)", ""]
    if "latency" in report:
        la = report["latency"]
        md += ["## 3. End-to-end latency on emulated links", ""]
        md += _machine_block(report, [la["worker"]["command"]])
        md += [f"Link: {la['link']['description']}." +
               (f" **{la['link']['fallback_reason']}.**" if la["link"]["fallback_reason"] else ""),
               "", f"The real `cloud-server` (CPU, its default settings) and the edge client "
               f"library (`ask_with_codes` / `ask_with_image`, as `edge-agent` calls them) in a "
               f"warm worker: model loads and connection set-up are not timed. {la['requests']}; "
               f"{la['repeats']} requests per mode and link rate, modes interleaved, "
               f"**medians**. edge = the edge's compute (vision tower + encode + pack, or JPEG "
               f"encode), cloud = the server's own report (decode + queue + generate), network "
               f"= the rest (transfer, round trips, gRPC).", "",
               "| link | mode | total ms | edge ms | network ms | cloud ms | bytes sent | right "
               "|", "|---|---|---|---|---|---|---|---|"]
        for p in la["points"]:
            md.append(f"| {p['rate_mbit']:g} Mbit/s | {p['mode']} | {p['total_ms']:.1f} | "
                      f"{p['edge_ms']:.1f} | {p['network_ms']:.1f} | {p['cloud_ms']:.1f} | "
                      f"{p['payload_bytes']:,.0f} | {p['correct']}/{p['n']} |")
        md += ["", "Speed-up of the split path over the cloud-only JPEG-90 upload (median total "
               "JPEG / median total AlignedVQ; above 1 = the split path is faster): " +
               ", ".join(f"{r} Mbit/s: **{v}x**" for r, v in
                         la["speedup_image_over_alignedvq"].items()) + ".", "",
               "![latency against link speed](latency_vs_link.png)", ""]
    if "gpu" in report:
        gpu = report["gpu"]
        from alignedvq.benchmarks.gpu_geometry import table

        md += ["## 4. llava-1.5-7b geometry on a GPU", ""]
        md += _machine_block(report, [gpu["shrink_command"]])
        if gpu.get("gpu_run"):
            r = gpu["gpu_run"]
            md += [f"{r['geometry']} on {r['gpu']}, {r['dtype']}:", "", table(r), ""]
        else:
            md += ["**No GPU was available to this run**, so there is no 7B timing here. On a "
                   "machine with a CUDA GPU (about 15 GB free in float16) run:", "",
                   f"```sh\n{gpu['gpu_command']}\n```", "",
                   "It builds llava-1.5-7b's architecture (CLIP ViT-L/14-336 + Llama-7B, "
                   "7.06 B parameters) with random weights and times the edge half (vision "
                   "tower to the cut + AlignedVQ encode + pack), the cloud half (unpack + "
                   "decode, projector, prefill, per-token decode) and the pixel path (the "
                   "unmodified model's prefill from pixels). Below, the same script on this CPU "
                   "with a shrunken config, to show it runs (its timings mean nothing):", "",
                   table(gpu["shrink_run"]), ""]
    return "\n".join(md) + "\n"


def main(quick: bool = False, out: str = "runs/bench", as_json: bool = False,
         sections=SECTIONS, link: str = "auto") -> int:
    argv = ["alignedvq", "bench", "report"] + (["--quick"] if quick else []) + ["--out", out]
    if tuple(sections) != SECTIONS:
        argv += ["--sections", ",".join(sections)]
    if link != "auto":
        argv += ["--link", link]
    report = run(Path(out), quick, sections, link, command=shlex.join(argv))
    if as_json:
        print(json.dumps(report, default=str))
    else:
        print((Path(out) / "report.md").read_text())
    return 0
