"""`orchestrator plot --out FILE.png`: the chain in one figure.

    1. training loss (raw and smoothed) and each stage's validation loss, over tokens,
       with part boundaries
    2. each stage's validation bits per byte, over tokens (the figure other tokenizers
       and models can be compared on)
    3. the learning rate, over tokens
    4. tokens/s, over time, paused intervals shaded
    5. GPU temperature and power, over time, paused intervals shaded

Reads the run's files only (metrics/, evals.jsonl, hardware.jsonl, events.jsonl).
matplotlib is an optional extra: pip install 'gpt-orchestrator[plot]'.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.records.rundir import existing, locate
from runtime.atomic import read_json, read_jsonl
from runtime.errors import UserError
from runtime.paths import RunPaths

PAUSE_EVENTS = {
    "paused": 1,
    "resumed": -1,
    "guard-pause": 1,
    "guard-resume": -1,
    "worker-paused": 1,
    "worker-resumed": -1,
}


def training_metrics(paths: RunPaths, read=read_jsonl) -> list[dict]:
    """Every logged optimizer step of the chain, finished parts and the running one, in token
    order. (`read`: how a JSON-lines file is read; `orchestrator serve` caches files that did
    not change.)"""
    lines = [m for f in sorted(paths.metrics.glob("*.jsonl")) for m in read(f)]
    lines += [
        m
        for f in sorted(paths.work_root.glob("*/*/metrics.jsonl"))
        for m in read(f)
        if not f.parent.parent.name.startswith(".")
    ]  # a release's cool-down is not the chain
    return sorted(lines, key=lambda m: m.get("global_tokens", 0))


def planned_curve(paths: RunPaths, points: int = 400) -> tuple[list[int], list[float]] | None:
    """The learning-rate curve as the chain's newest checkpoint holds it, from the first token
    to its planned end (runtime.curve)."""
    from orchestrator.commands.status import curve_record

    record = curve_record(paths)
    if record is None or record.curve.fall is None:
        return None
    end = record.curve.fall.end
    xs = [round(end * i / points) for i in range(points + 1)]
    return xs, [record.curve.at(x) for x in xs]


def part_boundaries(paths: RunPaths) -> list[float]:
    """Global token counts where each done part ended, in chain order."""
    try:
        parts = read_json(paths.state).get("parts", [])
    except (OSError, ValueError):
        return []
    done = sorted((p for p in parts if p["status"] == "done" and p.get("seq")), key=lambda p: p["seq"])
    ends, total = [], 0
    for p in done:
        total += p["tokens"]
        ends.append(total)
    return ends


def paused_intervals(paths: RunPaths, read=read_jsonl) -> list[tuple[float, float]]:
    """Wall-clock intervals in which a pause (user, guard or worker) held."""
    intervals, depth, start = [], 0, None
    events = read(paths.events)
    for e in events:
        step = PAUSE_EVENTS.get(e.get("event"))
        if step is None:
            continue
        depth = max(depth + step, 0)
        if depth > 0 and start is None:
            start = e["time"]
        elif depth == 0 and start is not None:
            intervals.append((start, e["time"]))
            start = None
    if start is not None:
        intervals.append((start, max([e["time"] for e in events], default=start)))
    return intervals


def smooth(values: list[float], weight: float = 0.95) -> list[float]:
    """Exponential moving average, debiased (no lag toward the first value at the start)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def draw(paths: RunPaths, out: Path, width: int, height: int) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError(
            "plot needs matplotlib: pip install 'gpt-orchestrator[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = training_metrics(paths)
    if not metrics:
        raise UserError(f"{paths.root}: no training metrics yet")
    t0 = min(m["time"] for m in metrics)
    hours = lambda t: (t - t0) / 3600  # noqa: E731
    pauses = [(hours(a), hours(b)) for a, b in paused_intervals(paths)]
    fig, (loss_ax, bpb_ax, lr_ax, speed_ax, hw_ax) = plt.subplots(5, 1, figsize=(width / 100, height / 100), dpi=100)

    tokens = [m["global_tokens"] for m in metrics]
    losses = [m["loss"] for m in metrics]
    loss_ax.plot(tokens, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="training loss")
    loss_ax.plot(tokens, smooth(losses), color="tab:blue", linewidth=1.6, label="smoothed")
    evals = [e for e in read_jsonl(paths.evals) if e.get("sets")]
    for name in sorted({n for e in evals for n in e["sets"]}):
        points = [(e["global_tokens"], e["sets"][name]["loss"]) for e in evals if name in e["sets"]]
        loss_ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1.2, label=f"val: {name}")
    for end in part_boundaries(paths):
        loss_ax.axvline(end, color="grey", linewidth=0.5, linestyle=":")
    loss_ax.set(ylabel="loss", xlabel="tokens trained (dotted: part boundaries)")
    loss_ax.legend(fontsize=8, loc="upper right")

    drawn = False
    for name in sorted({n for e in evals for n in e["sets"]}):
        # evaluations of an earlier release recorded no bits per byte: their points are left out
        points = [(e["global_tokens"], e["sets"][name]["bpb"]) for e in evals if "bpb" in e["sets"].get(name, {})]
        if points:
            bpb_ax.plot(*zip(*points), marker="o", markersize=3, linewidth=1.2, label=f"val: {name}")
            drawn = True
    if drawn:
        bpb_ax.legend(fontsize=8, loc="upper right")
    else:
        bpb_ax.text(0.5, 0.5, "no bits per byte recorded", ha="center", va="center", transform=bpb_ax.transAxes)
    bpb_ax.set(ylabel="bits per byte", xlabel="tokens trained")

    peak = max((m["lr"] for m in metrics), default=0) or 1.0
    trained = [m["lr_factor"] if m.get("lr_factor") is not None else m["lr"] / peak for m in metrics]
    lr_ax.plot(tokens, trained, color="tab:green", label="trained")
    planned = planned_curve(paths)
    if planned:
        lr_ax.plot(*planned, color="tab:green", linestyle="--", linewidth=0.8, alpha=0.7, label="planned")
    lr_ax.set(ylabel="learning rate (x peak)", xlabel="tokens trained")
    lr_ax.legend(fontsize=8, loc="upper right")

    speed_ax.plot(
        [hours(m["time"]) for m in metrics], [m["tokens_per_s"] for m in metrics], ".", markersize=2, color="tab:purple"
    )
    speed_ax.set(ylabel="tokens/s", xlabel="hours")

    hardware = read_jsonl(paths.hardware_log)
    temps = [(hours(h["time"]), h["gpu_temp_c"]) for h in hardware if "gpu_temp_c" in h]
    power = [(hours(h["time"]), h["gpu_power_w"]) for h in hardware if "gpu_power_w" in h]
    if temps:
        hw_ax.plot(*zip(*temps), color="tab:red", label="GPU °C")
    if power:
        twin = hw_ax.twinx()
        twin.plot(*zip(*power), color="tab:orange", label="GPU W")
        twin.set_ylabel("watts")
    if not temps and not power:
        hw_ax.text(0.5, 0.5, "no GPU readings", ha="center", va="center", transform=hw_ax.transAxes)
    hw_ax.set(ylabel="°C", xlabel="hours (shaded: paused)")
    for ax in (speed_ax, hw_ax):
        for a, b in pauses:
            ax.axvspan(a, b, color="gold", alpha=0.3)
    fig.suptitle(f"{paths.root.name}: {len(part_boundaries(paths))} parts done, {tokens[-1]:,} tokens")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def cmd_plot(args) -> int:
    paths = existing(locate(args.run_dir, args.schedule))
    width, _, height = args.size.partition("x")
    try:
        w, h = int(width), int(height)
    except ValueError:
        w = h = 0
    if not (100 <= w <= 20000 and 100 <= h <= 20000):
        raise UserError(f"--size {args.size!r}: expected WIDTHxHEIGHT in pixels between 100 and 20000, like 1200x1000")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    draw(paths, args.out, w, h)
    print(f"wrote {args.out} ({w}x{h})")
    return 0
