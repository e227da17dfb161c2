// livestream dashboard: reads /api/v1/* and redraws on every server-sent event.
// No external libraries: plots are drawn on <canvas> here.
"use strict";

const PAGE_SIZE = 8;
const POLL_MS = 10000; // a fallback when the event stream is down
const REFRESH_MS = 1000; // at most one refresh a second, however many events
const state = { exposures: [], session: null, class2d: null, page: 0, shownKey: "" };

function $(id) { return document.getElementById(id); }

function el(tag, props, children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children || []) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits === undefined ? 0 : digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "not catching up";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// -- plots ---------------------------------------------------------------------
const COLOURS = { true: "#3fb950", false: "#f85149", null: "#8b949e" };

function drawPlot(canvas, series, thresholds) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 46, right = 8, top = 8, bottom = 22;
  ctx.clearRect(0, 0, w, h);
  const points = series.flatMap((s) => s.points);
  canvas.dataset.points = String(points.length);
  ctx.fillStyle = "#8b95a3";
  ctx.font = "11px system-ui, sans-serif";
  if (points.length === 0) {
    ctx.fillText("no data yet", w / 2 - 30, h / 2);
    return;
  }
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y).concat(thresholds || []);
  const first = Math.min(...xs), last = Math.max(...xs);
  let x0 = first, x1 = last, y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad;
  const sx = (x) => left + (x - x0) / (x1 - x0) * (w - left - right);
  const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (h - top - bottom);
  ctx.strokeStyle = "#30363d";
  ctx.strokeRect(left, top, w - left - right, h - top - bottom);
  for (const y of [y0 + pad, (y0 + y1) / 2, y1 - pad]) {
    ctx.fillText(Math.abs(y) >= 100 ? y.toFixed(0) : y.toPrecision(3), 2, sy(y) + 4);
  }
  ctx.fillText(`#${first}`, left, h - 6);
  if (last !== first) ctx.fillText(`#${last}`, w - right - 30, h - 6);
  ctx.setLineDash([5, 4]);
  ctx.strokeStyle = "#d29922";
  for (const t of thresholds || []) {
    ctx.beginPath(); ctx.moveTo(left, sy(t)); ctx.lineTo(w - right, sy(t)); ctx.stroke();
  }
  ctx.setLineDash([]);
  for (const s of series) {
    if (s.line) {
      ctx.strokeStyle = s.colour; ctx.beginPath();
      s.points.forEach((p, i) => (i ? ctx.lineTo(sx(p.x), sy(p.y)) : ctx.moveTo(sx(p.x), sy(p.y))));
      ctx.stroke();
    }
    for (const p of s.points) {
      ctx.fillStyle = s.colour || COLOURS[p.c];
      ctx.beginPath(); ctx.arc(sx(p.x), sy(p.y), 2.6, 0, 2 * Math.PI); ctx.fill();
    }
  }
}

function figureSeries(name, scale) {
  const points = [];
  for (const e of state.exposures) {
    const v = e.figures[name];
    if (v !== null && v !== undefined) points.push({ x: e.index, y: v * (scale || 1), c: e.accepted });
  }
  return [{ points }];
}

function thresholdsOf(...names) {
  const curation = state.session ? Object.values(state.session.curation)[0] : null;
  if (!curation) return [];
  return names.map((n) => curation[n]).filter((v) => v !== null && v !== undefined);
}

function drawPlots() {
  drawPlot($("plot-defocus"), figureSeries("defocus_a", 1e-4),
    thresholdsOf("min_defocus_a", "max_defocus_a").map((v) => v * 1e-4));
  drawPlot($("plot-resolution"), figureSeries("fit_resolution_a"), thresholdsOf("max_ctf_resolution_a"));
  drawPlot($("plot-motion"), figureSeries("total_motion_a"), thresholdsOf("max_total_motion_a"));
  drawPlot($("plot-astigmatism"), figureSeries("astigmatism_a"), thresholdsOf("max_astigmatism_a"));
  const particles = state.exposures.some((e) => e.figures.n_particles !== undefined) ? "n_particles" : "n_picks";
  drawPlot($("plot-particles"), figureSeries(particles), []);
  const accepted = [], rejected = [];
  let a = 0, r = 0;
  for (const e of state.exposures) {
    if (e.accepted === null) continue;
    if (e.accepted) a += 1; else r += 1;
    accepted.push({ x: e.index, y: a }); rejected.push({ x: e.index, y: r });
  }
  drawPlot($("plot-curation"), [
    { points: accepted, colour: "#3fb950", line: true },
    { points: rejected, colour: "#f85149", line: true },
  ], []);
}

// -- session -------------------------------------------------------------------
function renderSession(s) {
  $("session-name").textContent = s.session.name;
  $("software").textContent = s.session.software;
  const m = s.microscope;
  $("microscope").textContent = m === null ? "not known yet" :
    [m.instrument_id || "unnamed instrument", m.detector, m.camera_mode.replace("_", " "),
      `${fmt(m.voltage_kv)} kV`, `${fmt(m.pixel_size_a, 3)} Å/px`, m.software_version].filter(Boolean).join(" · ");
  $("project").textContent = s.project;
  $("state").textContent = s.state;
  $("n-exposures").textContent = String(s.n_exposures);
  $("n-done").textContent = String(s.n_done);
  $("backlog").textContent = String(s.backlog);
  $("acquired-rate").textContent = fmt(s.acquired_per_hour);
  $("processed-rate").textContent = fmt(s.exposures_per_hour);
  const keeping = s.backlog <= 1 || s.exposures_per_hour >= s.acquired_per_hour;
  $("keeping-up").textContent = keeping ? "yes" : "no";
  $("keeping-up").className = keeping ? "ok" : "bad";
  $("catch-up").textContent = duration(s.catch_up_s);
  $("queue").textContent = `${s.in_flight} / ${s.queued}`;
  const states = ["pending", "running", "done", "failed", "quarantined"];
  const head = $("stages").tHead, body = $("stages").tBodies[0];
  head.replaceChildren(el("tr", {}, [el("th", {}, ["stage"]), ...states.map((x) => el("th", { className: "num" }, [x]))]));
  body.replaceChildren(...Object.entries(s.exposures).map(([stage, counts]) =>
    el("tr", {}, [el("td", {}, [stage]), ...states.map((x) => el("td", { className: "num" }, [String(counts[x] || 0)]))])));
  const rows = [];
  for (const [stage, params] of Object.entries(s.curation)) {
    for (const [key, value] of Object.entries(params)) {
      rows.push(el("tr", {}, [el("td", {}, [`${stage}.${key}`]), el("td", { className: "num" }, [value === null ? "off" : String(value)])]));
    }
  }
  $("thresholds").tBodies[0].replaceChildren(...(rows.length ? rows : [el("tr", {}, [el("td", {}, ["no curate stage in the chain"])])]));
  $("n-problems").textContent = `(${s.problems.length})`;
  $("problem-table").tBodies[0].replaceChildren(...s.problems.map((p) => el("tr", {}, [
    el("td", {}, [p.exposure_id]), el("td", {}, [p.stage]), el("td", {}, [p.state]),
    el("td", { className: "num" }, [String(p.attempts)]), el("td", { className: "error" }, [p.error]),
  ])));
}

// -- micrographs ---------------------------------------------------------------
function withPictures() {
  return state.exposures.filter((e) => e.images.picks || e.images.ctf).reverse(); // newest first
}

function version(e) {
  return Object.values(e.states).filter((s) => s === "done").length;
}

function renderThumbnails() {
  const all = withPictures();
  const pages = Math.max(1, Math.ceil(all.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = all.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  $("older").disabled = state.page >= pages - 1;
  $("newer").disabled = state.page === 0;
  $("page-label").textContent = all.length ? `page ${state.page + 1} of ${pages} (${all.length} micrographs)` : "no micrograph yet";
  const key = shown.map((e) => `${e.exposure_id}:${version(e)}:${e.accepted}`).join("|");
  if (key === state.shownKey) return;
  state.shownKey = key;
  $("thumbnails").replaceChildren(...shown.map((e) => {
    const images = [];
    if (e.images.picks) images.push(el("img", { src: `${e.images.picks}?v=${version(e)}`, alt: `${e.exposure_id} picks` }));
    if (e.images.ctf) images.push(el("img", { src: `${e.images.ctf}?v=${version(e)}`, alt: `${e.exposure_id} CTF` }));
    const n = e.figures.n_picks;
    const verdict = e.accepted === null ? "" : (e.accepted ? "accepted" : "rejected");
    const card = el("div", { className: `thumb ${verdict}`, title: e.exposure_id }, [
      el("div", { className: "pair" }, images),
      el("div", { className: "caption" }, [`#${e.index} ${verdict}${n !== undefined && n !== null ? `, ${n} picks` : ""}`]),
      el("div", { className: "caption" }, [e.exposure_id]),
    ]);
    card.addEventListener("click", () => openViewer(e));
    return card;
  }));
}

function openViewer(e) {
  $("viewer-title").textContent = `#${e.index} ${e.exposure_id}`;
  $("viewer-picks").src = e.images.picks ? `${e.images.picks}?v=${version(e)}` : "";
  $("viewer-ctf").src = e.images.ctf ? `${e.images.ctf}?v=${version(e)}` : "";
  $("viewer-picks").hidden = !e.images.picks;
  $("viewer-ctf").hidden = !e.images.ctf;
  $("viewer-figures").textContent = JSON.stringify({ figures: e.figures, accepted: e.accepted, rejected: e.rejected, stages: e.states }, null, 1);
  $("viewer").hidden = false;
}

// -- 2D classes ----------------------------------------------------------------
function renderClass2d(doc) {
  const snap = doc.snapshot;
  if (!snap) return;
  const key = `${snap.iteration}`;
  if ($("class2d-body").dataset.iteration === key) return;
  $("class2d-body").dataset.iteration = key;
  $("class2d-summary").textContent = `mini-batch ${snap.iteration}, ${snap.particles_seen} particles seen, ` +
    `${snap.n_selected_classes} of ${snap.classes.length} classes selected (${snap.selected_particles ?? "–"} particles), ` +
    `best ${fmt(snap.resolution_a, 1)} Å`;
  const rows = snap.classes.slice().sort((a, b) => (b.score ?? -1) - (a.score ?? -1)).map((c) =>
    el("tr", { className: c.selected ? "selected" : "rejected" }, [
      el("td", {}, [`#${c.class} ${c.selected ? "selected" : "rejected"}`]),
      el("td", { className: "num" }, [String(c.particles)]),
      el("td", { className: "num" }, [fmt(c.score, 2)]),
      el("td", { className: "num" }, [fmt(c.resolution_a, 1)]),
    ]));
  const table = el("table", { id: "class-table" }, [
    el("thead", {}, [el("tr", {}, [el("th", {}, ["class"]), el("th", { className: "num" }, ["particles"]),
      el("th", { className: "num" }, ["score"]), el("th", { className: "num" }, ["resolution (Å)"])])]),
    el("tbody", {}, rows),
  ]);
  const parts = [];
  if (snap.montage) parts.push(el("img", { src: snap.montage, alt: "2D class montage (green: selected, red: rejected)", id: "montage" }));
  parts.push(table);
  $("class2d-body").replaceChildren(...parts);
}

// -- 3D initial model ------------------------------------------------------------
function renderClass3d(doc) {
  const snap = doc.snapshot;
  if (!snap) return;
  const key = `${snap.iteration}`;
  if ($("class3d-body").dataset.iteration === key) return;
  $("class3d-body").dataset.iteration = key;
  $("class3d-summary").textContent = `mini-batch ${snap.iteration}, ${snap.particles_seen} of ` +
    `${snap.pool_particles} selected particles seen, ${snap.classes} class(es) ${snap.symmetry}, ` +
    `${fmt(snap.resolution_a, 1)} Å (half-set FSC), ${fmt(100 * snap.orientation_coverage, 0)}% of directions`;
  const parts = [];
  const pictures = [["slices_png", "central slices of the largest class", "class3d-slices"],
    ["fsc_png", "half-set FSC", "class3d-fsc"], ["directions_png", "viewing directions", "class3d-directions"]];
  for (const [field, alt, id] of pictures) {
    if (snap[field]) parts.push(el("img", { src: snap[field], alt, id }));
  }
  $("class3d-body").replaceChildren(...parts);
}

async function refreshClass3d() {
  // apart from the three documents a stopping service waits for: a failure here
  // leaves the card as it was
  try { renderClass3d(await getJson("api/v1/class3d")); } catch (error) { /* kept */ }
}

// -- refresh -------------------------------------------------------------------
let refreshing = false, again = false, timer = null;

async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const [session, exposures, class2d] = await Promise.all([
      getJson("api/v1/session"), getJson("api/v1/exposures"), getJson("api/v1/class2d"),
    ]);
    state.session = session; state.exposures = exposures.items; state.class2d = class2d;
    renderSession(session);
    drawPlots();
    renderThumbnails();
    renderClass2d(class2d);
    refreshClass3d();
    document.body.dataset.updated = String(Date.now());
    if (ended && session.state !== "stopped") connect(); // the service is back
    showStream(); // a refresh that failed before said so; this one worked
  } catch (error) {
    if (ended) { showStream(); return; } // the service stopped serving, as it said
    $("live").textContent = `error: ${error.message}`;
    $("live").className = "badge off";
  } finally {
    refreshing = false;
    if (again) { again = false; scheduleRefresh(); }
  }
}

function scheduleRefresh() {
  if (timer !== null) return;
  timer = setTimeout(() => { timer = null; refresh(); }, REFRESH_MS);
}

let source = null;
let ended = false; // the service said it stopped: the page keeps its last state

function showStream() {
  const live = $("live");
  const open = source !== null && source.readyState === EventSource.OPEN;
  if (ended) {
    live.textContent = "stopped";
    live.className = "badge off";
    return;
  }
  live.textContent = open ? "live" : "reconnecting";
  live.className = open ? "badge on" : "badge off";
}

function onEnded() {
  // the service's last word: read the final state now, before it stops serving,
  // and stop reconnecting; the slow poll notices when it serves again
  ended = true;
  source.close();
  refresh();
}

function connect() {
  ended = false;
  source = new EventSource("api/v1/events");
  source.onopen = showStream;
  source.onerror = showStream;
  source.addEventListener("ended", onEnded);
  for (const type of ["hello", "discovered", "ready", "import_quarantined", "stage_finished", "exposure_done", "class2d_snapshot", "class3d_snapshot"]) {
    source.addEventListener(type, scheduleRefresh);
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("older").addEventListener("click", () => { state.page += 1; renderThumbnails(); });
  $("newer").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); renderThumbnails(); });
  $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) $("viewer").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("viewer").hidden = true; });
  refresh();
  connect();
  setInterval(refresh, POLL_MS);
});
