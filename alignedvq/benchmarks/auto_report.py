"""``alignedvq bench auto``'s tables (markdown) and figure (PNG), from its report dict."""

from __future__ import annotations

from pathlib import Path

from alignedvq.benchmarks import machine as machine_info
from alignedvq.benchmarks.plots import _plt, _save

PAPER_SPEEDUP = "2-15x"


def _cond(c: dict) -> str:
    return f"{c['rate_mbit']:g} Mbit/s, {c['rtt_ms']} ms"


def _ok(c: dict) -> str:
    m = c["meets"]
    return ("yes" if m["p50_within_5pct_of_oracle"] else "**no**") + " / " + \
        ("yes" if m["p95_within_10pct_of_best"] else "**no**")


def _picks(c: dict) -> str:
    return ", ".join(f"{p} x{n}" for p, n in c["auto_picks"].items())


def _table(conditions: list[dict], paths: list[str], extra_head: list[str], extra) -> list[str]:
    head = ["link"] + [f"{p} p50 / p95" for p in paths] + ["oracle", "auto / oracle p50",
                                                            "auto / best p95", "auto took",
                                                            "meets (p50 / p95)", *extra_head]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in conditions:
        cells = [_cond(c)] + [f"{c['paths'][p]['p50']:,.0f} / {c['paths'][p]['p95']:,.0f}"
                              for p in paths]
        cells += [c["oracle"], f"{c['auto_over_oracle_p50']:.3f}",
                  f"{c['auto_over_best_p95']:.3f}", _picks(c), _ok(c), *extra(c)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    tiny = report["tiny"]
    lines = [f"# {report['title']}", "",
             f"*Machine:* {machine_info.line(report['machine'])}.  ",
             f"*Command:* `{report['command']}` ({report['seconds']:.0f} s).  ",
             f"*Link:* {report['link']['kind']}: {report['link']['description']}"
             + (f" ({report['link']['fallback_reason']})" if report['link']['fallback_reason']
                else "") + ".  ",
             f"*Requests:* {report['repeats']} measured per path and condition, after one "
             "unmeasured warm-up each; latency in ms, end to end as the edge sees it.", "",
             "## Tiny model, end to end", "",
             "Real cloud-server (both shipped split points) and one edge worker; `image` makes "
             "a one-shot `edge-agent --mode image`'s two RPCs (GetServerInfo + upload), "
             "`codes@K` one AnswerFromCodes, `auto` one AutoAsker per condition starting with "
             "this edge's profile and no link knowledge.", ""]
    lines += _table(tiny, ["image", "codes@4", "codes@1", "auto"],
                    ["auto's warm-up (probe)", "answered"],
                    lambda c: [f"{c['auto_warmup']['total_ms']:,.0f} ms "
                               f"({c['auto_warmup']['probe_ms']:,.0f} ms probing)",
                               f"{c['answered']}/{c['requests']}"])
    geometry = report.get("llava7b")
    if geometry:
        edge = report["llava7b_edge"]
        late = [p for p in edge if p.startswith("codes@") and p != "codes@1"][0]
        lines += ["", "## LLaVA-1.5-7B geometry, from measured parts"
                  + (" (shrunken config: smoke run)" if edge.get("shrunken") else ""), "",
                  "Edge compute measured here on one thread (random weights, untrained codec); "
                  "network time measured with ProbeLink requests of each path's size over the "
                  "same link; the server's compute excluded.", "",
                  "| path | edge compute p50 (ms) | runs | request bytes (median) |",
                  "|---|---|---|---|"]
        for p, v in edge.items():
            if isinstance(v, dict):
                lines.append(f"| {p} | {v['edge_ms_p50']:,.2f} | {v['n']} | "
                             f"{v['request_bytes_median']:,} |")
        lines += [""]
        lines += _table(geometry, ["image", "codes@1", late, "auto"], ["upload / codes@1 p50"],
                        lambda c: [f"{c['upload_over_early_split_p50']:.2f}x"])
        lines += ["", f"The paper's claim for upload vs split: {PAPER_SPEEDUP} (its edge ran only "
                  "the patch embedding and part of the first CLIP block)."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    plt = _plt()
    parts = [("tiny", "tiny LLaVA, end to end")]
    if report.get("llava7b"):
        parts.append(("llava7b", "LLaVA-1.5-7B geometry (edge compute + network)"))
    rtts = sorted({c["rtt_ms"] for c in report["tiny"]})
    fig, axes = plt.subplots(len(parts), len(rtts), figsize=(5.5 * len(rtts), 4.2 * len(parts)),
                             squeeze=False)
    colors = {"image": "tab:red", "codes@1": "tab:blue", "auto": "black"}
    for row, (key, title) in enumerate(parts):
        for col, rtt in enumerate(rtts):
            ax = axes[row][col]
            conds = sorted((c for c in report[key] if c["rtt_ms"] == rtt),
                           key=lambda c: c["rate_mbit"])
            rates = [c["rate_mbit"] for c in conds]
            for p in conds[0]["paths"]:
                p50 = [c["paths"][p]["p50"] for c in conds]
                p95 = [c["paths"][p]["p95"] for c in conds]
                auto = p == "auto"
                ax.errorbar(rates, p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p95)]],
                            fmt="s--" if auto else "o-", lw=2.2 if auto else 1.2, capsize=3,
                            color=colors.get(p, "tab:green" if p == "codes@4" else "tab:orange"),
                            label=p + (" (chooser)" if auto else ""), alpha=0.9)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
            ax.set_xlabel(f"link rate, Mbit/s ({rtt} ms RTT)")
            ax.set_ylabel("latency, ms (p50; bar to p95)")
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    return _save(plt, fig, path, machine_info.line(report["machine"]) +
                 f"; {report['link']['kind']} link")
