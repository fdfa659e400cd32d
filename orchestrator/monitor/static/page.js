// The status page: polls the server's JSON (api/status every 2 s, the curves, events and
// samples when the chain moved, or every 15 s) and draws it. Plain JS and hand-drawn SVG:
// nothing is fetched from anywhere but this server (the machines may have no internet).
"use strict";

const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#1b7c83", "#d1242f", "#6e7781"];
const STATUS_POLL_MS = 2000;
const SLOW_POLL_MS = 15000;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function tokens(n) {
  if (n === null || n === undefined) return "–";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(2) + "B";
  if (a >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return String(Math.round(n));
}
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}
function clock(t) {
  if (!t) return "–";
  const d = new Date(t * 1000), now = new Date();
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return d.toDateString() === now.toDateString() ? hm : d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm;
}
const loss = (x) => (x === null || x === undefined ? "–" : Number(x).toFixed(4));
const cls = (s) => "s-" + String(s || "").replace(/\s+/g, "-");

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${(await r.text()).trim()}`);
  return r.json();
}

// -- the chain at a glance -------------------------------------------------------------------

let lastMove = null; // what, when it changes, makes the slower parts reload at once

function renderStatus(info) {
  const d = info.daemon, chain = info.chain, c = info.current;
  document.title = `${info.name || "orchestrator"}: ${d.state}`;
  $("chain-name").textContent = info.name || "orchestrator";
  const state = $("daemon-state");
  state.textContent = d.state;
  state.className = "pill " + cls(d.state);
  $("daemon-detail").textContent = (d.pid ? `pid ${d.pid} · ` : "") + `since ${clock(d.since)}` + (d.reason ? ` · ${d.reason}` : "");
  $("run-dir").textContent = info.run_dir;

  const banners = [];
  if (chain.blocked) banners.push(["red", `the chain waits: ${chain.blocked}`]);
  if (!info.schedule.valid) banners.push(["red", `schedule edit refused (the previous schedule stays in force):\n${info.schedule.error}`]);
  for (const p of info.parts) if (p.status === "failed") banners.push(["red", `${p.id} failed: ${p.error || ""}\n(orchestrator retry ${p.id})`]);
  for (const r of info.releases || []) if (r.status === "failed") banners.push(["yellow", `${r.id} was given up: ${r.error || ""} (the chain went on)`]);
  for (const [who, p] of Object.entries(info.paused || {})) if (p) banners.push(["yellow", `paused (${who}): ${p.reason} since ${clock(p.since)}`]);
  if (d.state === "not running" || d.state === "stopped") banners.push(["yellow", `no daemon is running: this is the chain as it was left (${d.state})`]);
  $("banners").innerHTML = banners.map(([color, text]) => `<div class="banner-${color}">${esc(text)}</div>`).join("");

  const trained = chain.global_tokens + (c && !c.release ? c.tokens || 0 : 0);
  $("parts-done").textContent = `${chain.parts_done} / ${chain.parts_total}`;
  $("chain-bar").style.width = `${chain.planned_tokens ? (100 * trained) / chain.planned_tokens : 0}%`;
  $("chain-tokens").textContent = `${tokens(trained)} of ${tokens(chain.planned_tokens)} tokens`;
  $("chain-eta").textContent = duration(chain.eta_s);
  const lr = chain.lr;
  $("chain-lr").textContent = lr ? `learning rate ${lr.factor.toFixed(3)} × peak (${lr.phase})` : "";
  $("latest-checkpoint").textContent = chain.latest_checkpoint ? `latest: ${chain.latest_checkpoint.split("/").pop()}` : "no checkpoint yet";

  if (c) {
    $("current-id").textContent = c.id + (c.release ? " (release)" : "");
    $("part-bar").style.width = `${c.tokens_total ? (100 * c.tokens) / c.tokens_total : 0}%`;
    const bits = [
      `attempt ${c.attempt}`,
      c.phase,
      `step ${c.step}/${c.steps_total || "?"}`,
      `loss ${loss(c.loss)}`,
      `${tokens(c.tokens_per_s)} tok/s`,
      `ETA ${duration(c.eta_s)}`,
    ];
    if (c.lr_factor !== null && c.lr_factor !== undefined) bits.push(`lr ${c.lr_factor.toFixed(3)} × peak (${c.lr_phase})`);
    if (c.paused_reason) bits.push(`paused: ${c.paused_reason}`);
    if (c.last_checkpoint_step !== null && c.last_checkpoint_step !== undefined)
      bits.push(`checkpoint at step ${c.last_checkpoint_step}, ${duration(c.last_checkpoint_age_s)} ago`);
    $("current-detail").textContent = bits.join(" · ");
  } else {
    $("current-id").textContent = d.state === "idle" ? "every part is done" : "no part running";
    $("part-bar").style.width = "0";
    $("current-detail").textContent = d.reason || "";
  }

  const hw = info.hardware;
  const items = [];
  if (hw) {
    const shown = [["gpu_temp_c", (v) => `GPU ${v.toFixed(0)} °C`], ["gpu_power_w", (v) => `${v.toFixed(0)} W`],
      ["gpu_util_pct", (v) => `${v.toFixed(0)}% busy`], ["cpu_temp_c", (v) => `CPU ${v.toFixed(0)} °C`],
      ["disk_free_gb", (v) => `${v.toFixed(1)} GB disk free`], ["ram_available_gb", (v) => `${v.toFixed(1)} GB RAM free`]];
    for (const [k, f] of shown) if (typeof hw[k] === "number") items.push(f(hw[k]));
    if (hw.on_battery !== null && hw.on_battery !== undefined) items.push(hw.on_battery ? "on battery" : "on AC");
    if (hw.duty_cycle !== null && hw.duty_cycle < 1) items.push(`throttled to ${Math.round(hw.duty_cycle * 100)}%`);
    for (const [k, why] of Object.entries(hw.failed || {})) items.push(`sensor ${k} failed: ${why}`);
  }
  $("hardware").innerHTML = items.length ? items.map(esc).join("<br>") : "no sensors";

  renderParts(info.rows);
  renderReleases(info.releases || []);
  $("updated").textContent = `updated ${clock(info.now)}`;
  const move = `${chain.parts_done}|${chain.global_tokens}|${d.state}|${(info.releases || []).length}|${info.events.length ? info.events[info.events.length - 1].time : ""}`;
  const moved = move !== lastMove;
  lastMove = move;
  return { moved, running: !!d.pid };
}

function renderParts(rows) {
  $("parts").tBodies[0].innerHTML = rows
    .map((r) => {
      if (r.fold) {
        const last = r.last.split("/").slice(1).join("/");
        return `<tr><td>${esc(r.first)} .. ${esc(last)}</td><td class="${cls(r.status)}">${esc(r.status)} (${r.count} parts)</td><td></td><td></td><td></td><td></td><td></td></tr>`;
      }
      const note = r.checkpoint ? r.checkpoint.split("/").pop() : (r.error || "").slice(0, 80);
      return `<tr><td>${esc(r.id)}</td><td class="${cls(r.status)}">${esc(r.status)}</td><td class="num">${r.attempts ?? ""}</td>` +
        `<td class="num">${tokens(r.tokens || r.planned_tokens)}</td><td class="num">${loss(r.loss)}</td>` +
        `<td class="num">${loss(r.val_loss)}</td><td class="dim">${esc(note)}</td></tr>`;
    })
    .join("");
}

function renderReleases(releases) {
  const body = $("releases").tBodies[0];
  if (!releases.length) {
    body.innerHTML = `<tr><td colspan="6" class="dim">none (schedule <code>release.every_parts</code>)</td></tr>`;
    return;
  }
  body.innerHTML = releases
    .map((r) => {
      const losses = Object.entries(r.eval || {}).map(([n, v]) => `${n} ${Number(v).toFixed(3)}`).join(", ");
      const note = r.status === "done" ? losses : (r.error || "").slice(0, 80);
      return `<tr><td>${esc(r.name)}</td><td class="${cls(r.status)}">${esc(r.status)}</td><td class="num">${tokens(r.branch_tokens)}</td>` +
        `<td class="num">${tokens(r.tokens || r.decay_tokens)}</td><td class="num">${loss(r.val_loss)}</td><td class="dim">${esc(note)}</td></tr>`;
    })
    .join("");
}

function renderEvents(events) {
  $("events").tBodies[0].innerHTML = events
    .slice()
    .reverse()
    .map((e) => `<tr><td>${esc(clock(e.time))}</td><td>${esc(e.event)}</td><td>${esc(String(e.message || "").split("\n")[0].slice(0, 160))}</td></tr>`)
    .join("");
}

function renderSamples(evals) {
  if (!evals.length) {
    $("samples").innerHTML = `<div class="dim">none yet (schedule <code>eval.prompts</code> are completed at each evaluation)</div>`;
    return;
  }
  $("samples").innerHTML = evals
    .map((e) => {
      const head = `<div class="dim">after ${esc(e.part)} (${tokens(e.global_tokens)} tokens${e.source === "release" ? ", release" : ""}), ${esc(clock(e.time))}</div>`;
      const items = (e.samples || []).map((s) => `<div><span class="prompt">${esc(s.prompt)}</span><span class="text">${esc(s.text)}</span></div>`).join("");
      return `<div class="sample">${head}${items}</div>`;
    })
    .join("");
}

// -- charts: SVG drawn by hand ------------------------------------------------------------------

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function timeLabel(t, span) {
  const d = new Date(t * 1000);
  if (span > 2 * 86400) return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString([], { hour: "2-digit" });
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", ...(span < 600 ? { second: "2-digit" } : {}) });
}

// opts: {series: [{name, color, points: [[x, y]], dash, width, opacity, dots, right}], time, spans, vlines, yFmt}
function chart(el, opts) {
  const W = Math.max(el.clientWidth, 300), H = Math.max(el.clientHeight, 160);
  const m = { l: 48, r: opts.series.some((s) => s.right) ? 44 : 12, t: 8, b: 34 };
  const series = opts.series.filter((s) => s.points.length);
  const legend = opts.series.filter((s) => s.name && s.points.length)
    .map((s) => `<span><i style-color="${s.color}"></i>${esc(s.name)}</span>`).join("");
  if (!series.length) {
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}"><text class="empty" x="${W / 2}" y="${H / 2}" text-anchor="middle">${esc(opts.empty || "no data yet")}</text></svg>`;
    return;
  }
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (opts.time && opts.now) x1 = Math.max(x1, Math.min(opts.now, x1 + 60));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const bounds = (ss) => {
    const ys = ss.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null && isFinite(v));
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (opts.zero) lo = Math.min(lo, 0);
    if (hi === lo) { hi += Math.abs(hi) * 0.05 || 1; lo -= Math.abs(lo) * 0.05 || (opts.zero ? 0 : 1); }
    const pad = (hi - lo) * 0.05;
    return [opts.zero && lo >= 0 ? lo : lo - pad, hi + pad];
  };
  const left = series.filter((s) => !s.right), right = series.filter((s) => s.right);
  const [y0, y1] = bounds(left.length ? left : series);
  const [r0, r1] = right.length ? bounds(right) : [0, 1];
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (y, r) => (r ? H - m.b - ((y - r0) / (r1 - r0)) * (H - m.t - m.b) : H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b));
  const parts = [];
  for (const [a, b] of opts.spans || []) {
    if (b < x0 || a > x1) continue;
    const xa = X(Math.max(a, x0)), xb = X(Math.min(b, x1));
    parts.push(`<rect class="pause" x="${xa}" y="${m.t}" width="${Math.max(xb - xa, 1.5)}" height="${H - m.t - m.b}"/>`);
  }
  for (const v of opts.vlines || []) if (v > x0 && v < x1) parts.push(`<line class="boundary" x1="${X(v)}" x2="${X(v)}" y1="${m.t}" y2="${H - m.b}"/>`);
  parts.push(`<line class="axis" x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}"/>`);
  const fmt = opts.yFmt || ((v) => +v.toPrecision(3));
  for (const v of niceTicks(y0, y1, 4)) {
    parts.push(`<line class="axis" x1="${m.l}" x2="${W - m.r}" y1="${Y(v)}" y2="${Y(v)}" opacity="0.5"/>`);
    parts.push(`<text class="tick" x="${m.l - 4}" y="${Y(v) + 3}" text-anchor="end">${esc(fmt(v))}</text>`);
  }
  if (right.length) for (const v of niceTicks(r0, r1, 4)) parts.push(`<text class="tick" x="${W - m.r + 4}" y="${Y(v, true) + 3}">${esc(+v.toPrecision(3))}</text>`);
  for (const v of niceTicks(x0, x1, Math.max(2, Math.floor((W - m.l - m.r) / 90)))) {
    const label = opts.time ? timeLabel(v, x1 - x0) : tokens(v);
    parts.push(`<text class="tick" x="${X(v)}" y="${H - m.b + 14}" text-anchor="middle">${esc(label)}</text>`);
  }
  if (opts.xLabel) parts.push(`<text class="tick" x="${(m.l + W - m.r) / 2}" y="${H - 4}" text-anchor="middle">${esc(opts.xLabel)}</text>`);
  for (const s of series) {
    const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1]));
    if (s.dots || pts.length === 1)
      for (const p of pts) parts.push(`<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1], s.right).toFixed(1)}" r="${s.dots || 2.5}" fill="${s.color}"/>`);
    if (pts.length > 1 && s.line !== false) {
      // a series over time breaks where nothing was logged (a worker starting, the daemon stopped)
      const steps = pts.slice(1).map((p, i) => p[0] - pts[i][0]).sort((a, b) => a - b);
      const gap = s.gaps ? 20 * Math.max(steps[Math.floor(steps.length / 2)], 1e-3) : Infinity;
      const d = pts.map((p, i) => `${i && p[0] - pts[i - 1][0] <= gap ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1], s.right).toFixed(1)}`).join("");
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="${s.width || 1.5}" opacity="${s.opacity || 1}"${s.dash ? ` stroke-dasharray="${s.dash}"` : ""}><title>${esc(s.name || "")}</title></path>`);
    }
  }
  el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" role="img">${parts.join("")}</svg>` + (legend ? `<div class="legend">${legend}</div>` : "");
  // legend swatches: colours set through the DOM (the page allows no inline style attributes)
  el.querySelectorAll(".legend i").forEach((i) => (i.style.background = i.getAttribute("style-color")));
}

function renderCurves(c) {
  chart($("chart-loss"), {
    series: [
      { name: "training loss", color: COLORS[0], points: c.loss.map((p) => [p[0], p[1]]), width: 1, opacity: 0.3 },
      { name: "smoothed", color: COLORS[0], points: c.loss.map((p) => [p[0], p[2]]), width: 2 },
    ],
    vlines: c.boundaries,
    xLabel: "tokens trained",
    empty: "no training steps yet",
  });
  chart($("chart-val"), {
    series: Object.entries(c.val).map(([name, pts], i) => ({ name, color: COLORS[(i + 1) % COLORS.length], points: pts, dots: 3 })),
    xLabel: "tokens trained",
    empty: "no evaluation yet",
  });
  chart($("chart-lr"), {
    series: [
      { name: "trained", color: COLORS[2], points: c.lr, width: 2 },
      { name: "planned", color: COLORS[2], points: c.lr_planned, dash: "5 4", width: 1, opacity: 0.7 },
    ],
    xLabel: "tokens trained",
    zero: true,
  });
  chart($("chart-speed"), {
    series: [{ name: "", color: COLORS[3], points: c.speed, width: 1.2, gaps: true }],
    time: true, now: c.now, spans: c.paused, zero: true, yFmt: (v) => tokens(v),
    empty: "no training steps yet",
  });
  chart($("chart-temp"), {
    series: [
      { name: "GPU °C", color: COLORS[1], points: c.temp, width: 1.5, gaps: true },
      { name: "GPU W (right axis)", color: COLORS[4], points: c.power, width: 1.2, right: true, gaps: true },
    ],
    time: true, now: c.now, spans: c.paused,
    empty: "no GPU readings (no NVIDIA GPU, or no sensor file)",
  });
}

// -- polling -------------------------------------------------------------------------------------

let slowDue = 0;
let lastCurves = null;

async function refresh() {
  let delay = STATUS_POLL_MS;
  try {
    const info = await getJSON("api/status");
    const { moved, running } = renderStatus(info);
    if (!running) delay = SLOW_POLL_MS / 3;
    if (moved || Date.now() >= slowDue) {
      slowDue = Date.now() + SLOW_POLL_MS;
      const [curves, events, samples] = await Promise.all([getJSON("api/curves"), getJSON("api/events"), getJSON("api/samples")]);
      lastCurves = curves;
      renderCurves(curves);
      renderEvents(events);
      renderSamples(samples);
    }
    document.body.classList.remove("offline");
  } catch (e) {
    $("banners").innerHTML = `<div class="banner-red">${esc("cannot reach the page's server (orchestrator serve): " + e.message)}</div>`;
    delay = SLOW_POLL_MS / 3;
  }
  setTimeout(refresh, delay);
}

window.addEventListener("resize", () => lastCurves && renderCurves(lastCurves));
refresh();
