"""The report's PNG figures (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, machine: str) -> Path:
    """Every figure carries the machine it was measured on, in small grey print at the foot."""
    fig.text(0.01, 0.005, machine, fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_bytes(section: dict, path: Path, machine: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points = section["points"]
    trained = [p for p in points if p["mode"] == "alignedvq" and not p.get("shipped")]
    curve = sorted((p for p in trained if p["stages"] == 1), key=lambda p: p["bytes_per_image"])
    ax.plot([p["bytes_per_image"] for p in curve], [p["accuracy"] for p in curve], "o-",
            color="tab:blue", label="AlignedVQ, 1 stage (trained by this run)")
    staged = [p for p in trained if p["stages"] > 1]
    if staged:
        ax.plot([p["bytes_per_image"] for p in staged], [p["accuracy"] for p in staged], "P",
                ms=9, color="tab:cyan", label="AlignedVQ, residual stages (this run)")
    for p in trained:
        ax.annotate(f"{p['bits']}b" + (f"x{p['stages']}" if p["stages"] > 1 else ""),
                    (p["bytes_per_image"], p["accuracy"]), textcoords="offset points",
                    xytext=(4, 6) if p["stages"] > 1 else (4, -12), fontsize=8)
    # "jpeg": the image mode's name in reports written before it was renamed.
    markers = {"fp16": ("s", "tab:orange"), "int8": ("D", "tab:green"),
               "image": ("^", "tab:red"), "jpeg": ("^", "tab:red")}
    for p in points:
        if p.get("shipped"):
            ax.plot(p["bytes_per_image"], p["accuracy"], "*", ms=12, color="tab:purple",
                    label=p["label"])
        elif p["mode"] in markers:
            m, c = markers[p["mode"]]
            ax.plot(p["bytes_per_image"], p["accuracy"], m, ms=8, color=c, label=p["label"])
        elif p["mode"] == "original":
            ax.axhline(p["accuracy"], color="gray", ls="--", lw=1, label=p["label"])
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image on the wire (serialised request, log scale)")
    ax.set_ylabel(f"accuracy (ShapesVQA, {points[0]['n']} questions)")
    ax.set_title("Accuracy against bytes per image, embedded tiny LLaVA", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(plt, fig, path, machine)


def bytes_per_image(section: dict, path: Path, machine: str) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key in zip(axes, ("tiny", "llava7b")):
        rows = section[key]["rows"]
        names = [r["encoding"] for r in rows]
        values = [r["bytes_mean"] for r in rows]
        colors = ["tab:blue" if n.startswith("alignedvq") else
                  "tab:red" if n.startswith("JPEG") else "tab:orange" for n in names]
        bars = ax.barh(names, values, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        for bar, v in zip(bars, values):
            ax.text(v * 1.1, bar.get_y() + bar.get_height() / 2, f"{v:,.0f} B", va="center",
                    fontsize=7)
        ax.set_xlim(min(values) / 2, max(values) * 12)
        ax.set_title({"tiny": "embedded tiny LLaVA (64 x 128 at the cut, 128 px)",
                      "llava7b": "LLaVA-1.5-7B geometry (576 x 1024, 336 px)"}[key],
                     fontsize=9)
        ax.set_xlabel("bytes per image (mean, log scale)")
        ax.tick_params(axis="y", labelsize=8)
    return _save(plt, fig, path, machine)


def latency_vs_link(section: dict, path: Path, machine: str) -> Path:
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    modes = list(dict.fromkeys(p["mode"] for p in section["points"]))
    names = {"alignedvq": "split, AlignedVQ indices", "image": "cloud-only JPEG-90",
             "fp16": "split, fp16 features"}
    colors = {"alignedvq": "tab:blue", "image": "tab:red", "fp16": "tab:orange"}
    rates = section["rates_mbit"]
    for mode in modes:
        pts = sorted((p for p in section["points"] if p["mode"] == mode),
                     key=lambda p: p["rate_mbit"])
        ax.plot([p["rate_mbit"] for p in pts], [p["total_ms"] for p in pts], "o-",
                color=colors.get(mode), label=names.get(mode, mode))
    ax.set_xscale("log")
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_xlabel("link rate, Mbit/s (20 ms RTT)")
    ax.set_ylabel(f"end-to-end latency, ms (median of {section['repeats']})")
    ax.set_title(f"Latency against link speed ({section['link']['kind']} link)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        pts = {p["rate_mbit"]: p for p in section["points"] if p["mode"] == mode}
        xs = [k + i * width for k in range(len(rates))]
        bottom = [0.0] * len(rates)
        for part, hatch in (("edge_ms", ""), ("network_ms", "//"), ("cloud_ms", "..")):
            vals = [pts[r][part] for r in rates]
            bx.bar(xs, vals, width, bottom=bottom, color=colors.get(mode), hatch=hatch,
                   edgecolor="white", alpha=0.85,
                   label=f"{names.get(mode, mode)}: {part[:-3]}")
            bottom = [b + v for b, v in zip(bottom, vals)]
    bx.set_xticks([k + width * (len(modes) - 1) / 2 for k in range(len(rates))],
                  [f"{r:g} Mbit/s" for r in rates])
    bx.set_ylabel("ms (medians of each part)")
    bx.set_title("Breakdown: edge compute / network / cloud compute", fontsize=10)
    bx.legend(fontsize=6, ncol=1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(plt, fig, path, machine)
