"""`orchestrator status`: the chain at a glance, from files only (never torch, well under a second).

Sources: state.json (the chain), the running part's heartbeat.json (live progress), the
daemon lock (is a daemon alive?), events.jsonl (recent events). They are read as plain
JSON: building the pydantic models would cost more than the rest of the command.
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.guard.sensors import FILE_KEYS
from orchestrator.records import progress
from orchestrator.records.rundir import existing, locate
from runtime.atomic import read_json, read_json_object, tail_jsonl
from runtime.lockfile import holder_role
from runtime.paths import RunPaths


def hardware(paths: RunPaths) -> dict[str, Any] | None:
    """The latest readings: every standard reading (null where absent), failures, the guard's verdict."""
    hw = read_json_object(paths.hardware)
    if hw is None:
        return None
    readings = hw.get("readings", {})
    out = {key: readings.get(key) for key in FILE_KEYS}
    out.update({k: v for k, v in readings.items() if k not in ("sources",)})
    out["guard_pause"] = hw.get("pause")
    out["duty_cycle"] = hw.get("duty_cycle")
    return out


def bits_per_byte(paths: RunPaths) -> dict[str, dict[str, float]]:
    """{part or release id: {set: bits per byte}} from its latest evaluation in evals.jsonl.
    Only lines that carry bits per byte are parsed (a substring test first): the file holds
    a line per evaluated part, and `status` must stay fast on a chain of thousands."""
    out: dict[str, dict[str, float]] = {}
    try:
        with open(paths.evals, "rb") as f:
            for raw in f:
                if b'"bpb"' not in raw:
                    continue  # an evaluation of an earlier release: losses only
                try:
                    record = json.loads(raw)
                    sets, part = record["sets"], record["part"]
                    found = {name: r["bpb"] for name, r in sets.items() if "bpb" in r}
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a torn or odd line is skipped, as every reader of the file does
                if isinstance(part, str):
                    out[part] = found
    except OSError:
        pass
    return out


def gather(paths: RunPaths, holder=holder_role) -> dict[str, Any]:
    """Everything `status` shows, as the JSON that `status --json` prints. `holder` says who
    holds the daemon's lock ((pid, role) or (None, None)); `orchestrator serve` passes one
    that only reads (orchestrator.monitor.view.lock_holder)."""
    state = read_json_object(paths.state) or {}
    parts = state.get("parts", [])
    pid, role = holder(paths.lock)
    if role not in (None, "daemon"):
        pid = None  # fsck or an offline skip holds the run, not a daemon
    releases = state.get("releases", [])  # absent in the state of an older release: none
    running = next((p for p in [*parts, *releases] if p["status"] == "running"), None)
    if running and "name" in running:  # a release: its id is release:<name>
        running = {**running, "id": f"release:{running['name']}"}
    hb = read_json_object(paths.work(running["id"]).heartbeat) if running else None
    if hb and running.get("worker_pid") and running["worker_pid"] not in (hb.get("pid"), hb.get("launcher_pid")):
        hb = None  # an earlier attempt's heartbeat
    hb = hb or {}
    now = time.time()
    daemon = state.get("daemon", {})
    daemon_state = daemon.get("state") if pid else ("stopped" if daemon.get("state") == "stopped" else "not running")
    left = progress.remaining_tokens(
        ((p["status"], p.get("planned_tokens", 0)) for p in parts), hb.get("part_tokens"), hb.get("part_tokens_total")
    )
    current = None
    if running:
        stage, part = (running["stage"], running["name"]) if "name" in running else running["id"].split("/", 1)
        part_left = max(hb["part_tokens_total"] - hb["part_tokens"], 0) if hb.get("part_tokens_total") else None
        ckpt_time = hb.get("last_checkpoint_time")
        current = {
            "stage": stage,
            "part": part,
            "id": running["id"],
            "attempt": running.get("attempts"),
            "release": "name" in running,
            "phase": hb.get("phase", "starting"),
            "paused_reason": hb.get("paused_reason"),
            "step": hb.get("step", 0),
            "steps_total": hb.get("steps_total"),
            "tokens": hb.get("part_tokens", 0),
            "tokens_total": hb.get("part_tokens_total"),
            "loss": hb.get("loss"),
            "lr": hb.get("lr"),
            "lr_factor": hb.get("lr_factor"),
            "lr_phase": hb.get("lr_phase"),
            "tokens_per_s": hb.get("tokens_per_s"),
            "eta_s": progress.eta(part_left, hb.get("tokens_per_s")),
            "last_checkpoint_step": hb.get("last_checkpoint_step"),
            "last_checkpoint_age_s": now - ckpt_time if ckpt_time else None,
            "heartbeat_age_s": now - hb["time"] if "time" in hb else None,
            "device": hb.get("device"),
            "precision": hb.get("precision"),
        }
    schedule = state.get("schedule", {})
    bpb = bits_per_byte(paths)
    return {
        "name": state.get("name"),
        "run_dir": str(paths.root),
        "daemon": {
            "pid": pid if pid and pid > 0 else None,
            "state": daemon_state,
            "since": daemon.get("since"),
            "reason": daemon.get("reason"),
        },
        "schedule": {
            "path": schedule.get("path"),
            "valid": schedule.get("valid", True),
            "error": schedule.get("error"),
        },
        "paused": {"user": state.get("user_pause"), "guard": state.get("guard_pause")},
        "current": current,
        "chain": {
            "global_tokens": state.get("global_tokens", 0),
            "planned_tokens": sum(
                p["tokens"] if p["status"] == "done" else p.get("planned_tokens", 0)
                for p in parts
                if p["status"] != "skipped"
            ),
            "remaining_tokens": left,
            "eta_s": progress.eta(left, hb.get("tokens_per_s")),
            "latest_checkpoint": state.get("latest_checkpoint"),
            "lr": curve_now(paths, state),
            "blocked": state.get("blocked"),
            "parts_done": sum(p["status"] == "done" for p in parts),
            "parts_total": len(parts),
        },
        "parts": [
            {
                k: p.get(k)
                for k in (
                    "id",
                    "stage",
                    "status",
                    "attempts",
                    "tokens",
                    "planned_tokens",
                    "loss",
                    "val_loss",
                    "checkpoint",
                    "error",
                    "retry_at",
                )
            }
            # bits per byte on the part's own stage, where its evaluation recorded it
            | {"val_bpb": bpb.get(p.get("id"), {}).get(p.get("stage"))}
            for p in parts
        ],
        "releases": [
            {
                "id": f"release:{r['name']}",
                **{
                    k: r.get(k)
                    for k in (
                        "name",
                        "part",
                        "stage",
                        "status",
                        "attempts",
                        "branch",
                        "branch_tokens",
                        "decay_tokens",
                        "tokens",
                        "loss",
                        "val_loss",
                        "eval",
                        "checkpoint",
                        "error",
                        "retry_at",
                    )
                },
                "eval_bpb": bpb.get(f"release:{r['name']}") or None,
            }
            for r in releases
        ],
        "hardware": hardware(paths),
        "events": tail_jsonl(paths.events, 8),
        "latest_eval": next(iter(tail_jsonl(paths.evals, 1)), None),
    }


STATUS_STYLE = {"done": "green", "running": "bold cyan", "pending": "dim", "failed": "bold red", "skipped": "yellow"}
DAEMON_STYLE = {
    "running": "green",
    "idle": "green",
    "paused": "yellow",
    "waiting": "yellow",
    "failed": "red",
    "not running": "red",
    "stopped": "dim",
    "stopping": "yellow",
    "starting": "cyan",
}


def _rows(parts: list[dict], show_all: bool) -> list[dict | tuple[str, int, dict, dict]]:
    """Parts, with long runs of done or pending parts folded into one row (unless show_all)."""
    if show_all or len(parts) <= 24:
        return parts
    rows: list = []
    i = 0
    while i < len(parts):
        j = i
        while (
            j + 1 < len(parts)
            and parts[j + 1]["status"] == parts[i]["status"]
            and parts[i]["status"] in ("done", "pending")
        ):
            j += 1
        if j - i >= 3:
            rows.append((parts[i]["status"], j - i + 1, parts[i], parts[j]))
        else:
            rows.extend(parts[i : j + 1])
        i = j + 1
    return rows


def render(info: dict, show_all: bool = False):
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    d = info["daemon"]
    head = Text.assemble((info["name"], "bold"), "  daemon ", (d["state"], DAEMON_STYLE.get(d["state"], "")))
    if d["pid"]:
        head.append(f" (pid {d['pid']})")
    head.append(f" since {progress.clock(d['since'])}")
    if d["reason"]:
        head.append(f": {d['reason']}")
    parts = [head]
    chain = info["chain"]
    if chain.get("blocked"):
        parts.append(Text(f"the chain waits: {chain['blocked']}", style="bold red"))
    parts.append(
        Text(
            f"chain: {chain['parts_done']}/{chain['parts_total']} parts done, "
            f"{progress.tokens(chain['global_tokens'])} of {progress.tokens(chain['planned_tokens'])} tokens, "
            f"ETA {progress.duration(chain['eta_s'])}, latest checkpoint {chain['latest_checkpoint'] or '-'}"
        )
    )
    lr = chain.get("lr")
    if lr and not info["current"]:
        parts.append(Text(f"learning rate: {lr['factor']:.3f} of its peak ({lr['phase']}){lr_plan(lr)}"))
    current = info["current"] or {}
    bars = Table.grid(padding=(0, 1))
    bars.add_row(
        "chain",
        ProgressBar(
            total=max(chain["planned_tokens"], 1),
            # a release's tokens are its own, never the chain's
            completed=chain["global_tokens"] + (0 if current.get("release") else current.get("tokens") or 0),
            width=40,
        ),
    )
    c = info["current"]
    if c:
        bars.add_row(
            "release" if c["release"] else "part ",
            ProgressBar(total=max(c["tokens_total"] or 1, 1), completed=c["tokens"], width=40),
        )
        line = (
            f"{c['id']} (attempt {c['attempt']}): {c['phase']}, step {c['step']}/{c['steps_total'] or '?'}, "
            f"loss {progress.loss(c['loss'])}, {progress.tokens(c['tokens_per_s'])} tok/s, "
            f"ETA {progress.duration(c['eta_s'])}"
        )
        if c.get("lr_factor") is not None:
            line += f", learning rate {c['lr_factor']:.3f} of its peak ({c['lr_phase']})"
        if c["paused_reason"]:
            line += f" (paused: {c['paused_reason']})"
        ckpt = (
            f"last checkpoint: step {c['last_checkpoint_step']}, {progress.duration(c['last_checkpoint_age_s'])} ago"
            if c["last_checkpoint_step"] is not None
            else "no checkpoint in this part yet"
        )
        parts += [Text(line), Text(ckpt + (f"  [{c['device']}, {c['precision']}]" if c["device"] else ""), style="dim")]
    parts.append(bars)
    for who, p in (info["paused"] or {}).items():
        if p:
            parts.append(Text(f"paused ({who}): {p['reason']} since {progress.clock(p['since'])}", style="yellow"))

    table = Table(show_edge=False, header_style="bold")
    table.add_column("part", no_wrap=True)
    table.add_column("status", no_wrap=True)
    # val loss and bits per byte share a column: apart, they would push "ckpt" past 80 columns
    for col in ("tries", "tokens", "loss", "val loss/bpb"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("ckpt")
    for row in _rows(info["parts"], show_all):
        if isinstance(row, tuple):
            status, n, first, last = row
            table.add_row(
                f"{first['id']} .. {last['id'].split('/', 1)[1]}",
                Text(f"{status} ({n} parts)", style=STATUS_STYLE[status]),
                "",
                "",
                "",
                "",
                "",
            )
            continue
        note = row["checkpoint"].rsplit("/", 1)[-1].split("-", 1)[0] if row["checkpoint"] else (row["error"] or "")[:60]
        table.add_row(
            row["id"],
            Text(row["status"], style=STATUS_STYLE[row["status"]]),
            str(row["attempts"]),
            progress.tokens(row["tokens"] or row["planned_tokens"]),
            progress.loss(row["loss"]),
            _val(row["val_loss"], row.get("val_bpb")),
            note,
        )
    parts.append(table)
    if info.get("releases"):
        parts.append(_releases_table(info["releases"]))
    if info["hardware"]:
        parts.append(_hardware_line(info["hardware"]))
    if not info["schedule"]["valid"]:
        parts.append(Panel(info["schedule"]["error"] or "", title="schedule edit refused", border_style="red"))
    failed = [p for p in info["parts"] if p["status"] == "failed"]
    for r in info.get("releases", []):
        if r["status"] == "failed":  # never stops the chain; said here so it is not missed
            parts.append(
                Text(
                    f"{r['id']} was given up: {r['error']} (the chain went on; "
                    f"`orchestrator retry {r['id']}` tries again)",
                    style="yellow",
                )
            )
    for p in failed:
        parts.append(
            Panel(p["error"] or "", title=f"{p['id']} failed (`orchestrator retry {p['id']}`)", border_style="red")
        )
    ev = info.get("latest_eval")
    if ev:
        lines = [
            Text(
                f"after {ev['part']} ({progress.tokens(ev['global_tokens'])} tokens): "
                + ", ".join(
                    f"{name} {r['loss']:.3f} (ppl {r['ppl']:.1f}"
                    + (f", {r['bpb']:.3f} bits/byte)" if "bpb" in r else ")")
                    for name, r in ev["sets"].items()
                )
            )
        ]
        lines += [Text(f"> {s['prompt']}{s['text']}"[:200], style="italic") for s in ev.get("samples", [])]
        parts.append(Panel(Group(*lines), title="latest evaluation", border_style="blue"))
    if info["events"]:
        ev = Table.grid(padding=(0, 1))
        for e in info["events"]:
            ev.add_row(
                Text(progress.clock(e.get("time")), style="dim"),
                e.get("event", ""),
                Text(str(e.get("message", "")).splitlines()[0][:100]),
            )
        parts.append(Panel(ev, title="recent events", border_style="dim"))
    return Group(*parts)


def _val(loss: float | None, bpb: float | None) -> str:
    """A part's validation loss and bits per byte ("-" for one not recorded: a part not yet
    done, or evaluated by an earlier release)."""
    if loss is None:
        return "-"
    return f"{loss:.4f} " + ("-" if bpb is None else f"{bpb:.3f}")


def _releases_table(releases: list[dict]):
    """Cooled releases: where each branched, how long it cooled, its validation losses."""
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title="releases (cooled branches; `sample`/`export --checkpoint release:NAME`)",
        show_edge=False,
        header_style="bold",
        title_justify="left",
    )
    for col, justify in (
        ("release", "left"),
        ("status", "left"),
        ("branch at", "right"),
        ("cooled", "right"),
        ("val loss", "right"),
        ("", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=col != "")
    for r in releases:
        bpb = r.get("eval_bpb") or {}
        losses = ", ".join(
            f"{n} {v:.3f}" + (f" ({bpb[n]:.3f} bits/byte)" if n in bpb else "") for n, v in (r["eval"] or {}).items()
        )
        note = losses if r["status"] == "done" else (r["error"] or "")[:80]
        table.add_row(
            r["name"],
            Text(r["status"], style=STATUS_STYLE.get(r["status"], "")),
            progress.tokens(r["branch_tokens"]),
            progress.tokens(r["tokens"] or r["decay_tokens"]),
            progress.loss(r["val_loss"]),
            note,
        )
    return table


def _hardware_line(hw: dict):
    from rich.text import Text

    shown = [
        (key, fmt)
        for key, fmt in (
            ("gpu_temp_c", "GPU {:.0f} °C"),
            ("gpu_power_w", "{:.0f} W"),
            ("gpu_util_pct", "{:.0f}% busy"),
            ("cpu_temp_c", "CPU {:.0f} °C"),
            ("disk_free_gb", "{:.1f} GB disk free"),
            ("ram_available_gb", "{:.1f} GB RAM free"),
        )
        if hw.get(key) is not None
    ]
    items = [fmt.format(hw[key]) for key, fmt in shown]
    if hw.get("on_battery") is not None:
        items.append("on battery" if hw["on_battery"] else "on AC")
    if hw.get("duty_cycle") is not None and hw["duty_cycle"] < 1:
        items.append(f"throttled to {hw['duty_cycle']:.0%}")
    line = Text("hardware: " + (", ".join(items) or "no sensors"))
    for key, why in (hw.get("failed") or {}).items():
        line.append(f"\n  sensor {key} failed: {why}", style="red")
    return line


def cmd_status(args) -> int:
    paths = existing(locate(args.run_dir, args.schedule))
    if args.json:
        print(json.dumps(gather(paths), indent=2, default=str))
        return 0
    from rich.console import Console

    console = Console()
    if not args.watch:
        console.print(render(gather(paths), args.all))
        return 0
    from rich.live import Live

    with Live(render(gather(paths), args.all), console=console, refresh_per_second=2) as live:
        try:
            while True:
                time.sleep(args.interval)
                live.update(render(gather(paths), args.all))
        except KeyboardInterrupt:
            pass
    return 0


def curve_now(paths, state: dict) -> dict | None:
    """Where the chain stands on its learning-rate curve: the newest checkpoint's curve
    (runtime.curve) at the chain's tokens (None: nothing trained yet, or a checkpoint of an
    earlier release, which recorded no curve)."""
    record = curve_record(paths, state.get("latest_checkpoint"))
    if record is None:
        return None
    curve, tokens = record.curve, state.get("global_tokens", 0)
    fall = curve.fall
    return {
        "factor": round(curve.at(tokens), 6),
        "phase": curve.phase(tokens),
        "decay_start": round(fall.start) if fall else None,
        "end": fall.end if fall else None,
        "floor": fall.floor if fall else None,
    }


def lr_plan(lr: dict) -> str:
    if lr["end"] is None:
        return ""
    if lr["phase"] in ("warmup", "stable"):
        return f"; the decay starts at {progress.tokens(lr['decay_start'])} tokens"
    return f"; it reaches {lr['floor']:g} of the peak at {progress.tokens(lr['end'])} tokens"


def curve_record(paths, latest: str | None = None):
    """The newest checkpoint's learning-rate record (runtime.curve.CurveRecord), or None."""
    from runtime.curve import CurveRecord

    if latest is None:
        try:
            latest = read_json(paths.state).get("latest_checkpoint")
        except (OSError, ValueError):
            return None
    try:
        meta = read_json(paths.root / latest / "meta.json") if latest else None
        return CurveRecord.model_validate(meta["lr"]) if meta and meta.get("lr") else None
    except (OSError, ValueError, KeyError):
        return None
