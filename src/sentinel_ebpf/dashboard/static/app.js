// sentinel-ebpf dashboard: plain JavaScript over the dashboard's JSON API, charts by uPlot.
// Text from the daemon is only ever put in the page as text (textContent), never as HTML.
"use strict";
(() => {
  const WINDOW_MS = 300_000; // what the daemon keeps
  const MIN_WINDOW_MS = 60_000; // a young daemon's charts span at least this, not 5 empty minutes
  const SECTIONS = ["resources", "flowRules", "isolationRules", "circuitBreakerRules", "hotSpotParamRules", "systemRules"];
  const BLOCK_TYPES = ["flow", "isolation", "circuit_breaking", "system", "hotspot"];
  const state = {
    daemon: 0, token: sessionStorage.getItem("sentinel-ebpf-token") || "", editsEnabled: false,
    points: new Map(), // resource -> Map(t_ms -> point)
    toMs: 0, startMs: 0, ticks: 0, transitions: [], cards: new Map(), stats: null, rules: null, base: "", busy: false,
  };

  const $ = (sel) => document.querySelector(sel);
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  const fill = (node, ...children) => node.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  const fmtTime = (s) => new Date(s * 1000).toLocaleTimeString();
  const fmtNum = (n, d = 0) => Number(n).toLocaleString(undefined, { maximumFractionDigits: d });

  class ApiError extends Error { constructor(status, msg) { super(msg); this.status = status; } }
  async function api(path, body) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const opts = { method: "GET", headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      opts.method = "POST"; headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body);
    }
    const r = await fetch("/api/" + path, opts);
    const doc = await r.json().catch(() => ({ error: r.statusText }));
    if (!r.ok) throw new ApiError(r.status, doc.error || r.statusText);
    return doc;
  }
  const setStatus = (text, bad) => { const s = $("#status"); s.textContent = text; s.className = bad ? "error" : "muted"; };

  // -- resources: live charts ---------------------------------------------------------------------------
  function mergeMetrics(doc) {
    for (const [name, pts] of Object.entries(doc.resources)) {
      if (!state.points.has(name)) state.points.set(name, new Map());
      const m = state.points.get(name);
      for (const p of pts) m.set(p.t, p);
    }
    const seen = new Set(state.transitions.map((t) => `${t.t}|${t.resource}|${t.breaker}|${t.to}`));
    for (const t of doc.transitions) if (!seen.has(`${t.t}|${t.resource}|${t.breaker}|${t.to}`)) state.transitions.push(t);
    state.toMs = Math.max(state.toMs, doc.to_ms);
    if (!state.startMs) state.startMs = doc.from_ms; // the oldest second the daemon had
    const oldest = state.toMs - WINDOW_MS;
    for (const m of state.points.values()) for (const t of m.keys()) if (t < oldest) m.delete(t);
    state.transitions = state.transitions.filter((t) => t.t >= oldest);
  }

  function series(name) {
    const xs = [], cols = { pass: [], block: [], complete: [], error: [], avg_rt_ms: [], concurrency: [] };
    const m = state.points.get(name) || new Map();
    const blocks = Object.fromEntries(BLOCK_TYPES.map((k) => [k, 0]));
    const end = state.toMs || Math.floor(Date.now() / 1000) * 1000;
    const begin = Math.max(end - WINDOW_MS, Math.min(state.startMs || end, end - MIN_WINDOW_MS));
    for (let t = begin; t < end; t += 1000) {
      xs.push(t / 1000);
      const p = m.get(t);
      for (const k of Object.keys(cols)) cols[k].push(p ? p[k] : 0);
      if (p) for (const k of BLOCK_TYPES) blocks[k] += p.block_by_type[k] || 0;
    }
    return { xs, cols, blocks };
  }

  // Breaker transitions as vertical lines, labelled with the state entered (colours apart from the
  // series'; labels of transitions close to each other are stacked).
  const TRANSITION_COLORS = { open: "#d81b60", half_open: "#b26a00", closed: "#546e7a" };
  function transitionsPlugin(name) {
    return { hooks: { draw: [(u) => {
      const ctx = u.ctx, placed = [];
      ctx.save();
      for (const t of state.transitions) {
        if (t.resource !== name) continue;
        const x = Math.round(u.valToPos(t.t / 1000, "x", true)); // whole pixels: a crisp line
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.strokeStyle = TRANSITION_COLORS[t.to] || "#000";
        ctx.lineWidth = 2 * devicePixelRatio;
        ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
        ctx.fillStyle = ctx.strokeStyle;
        ctx.font = `${11 * devicePixelRatio}px sans-serif`;
        ctx.textAlign = "left"; // uPlot leaves the context as its axes last set it
        ctx.textBaseline = "alphabetic";
        const label = `${t.breaker} → ${t.to}`, w = ctx.measureText(label).width;
        const row = placed.filter((px) => Math.abs(px - x) < w + 8 * devicePixelRatio).length;
        placed.push(x);
        const left = x - 4 * devicePixelRatio - w; // left of the line, or right of it near the left edge
        ctx.fillText(label, left < u.bbox.left ? x + 4 * devicePixelRatio : left, u.bbox.top + (12 + 13 * row) * devicePixelRatio);
      }
      ctx.restore();
    }] } };
  }

  function makeCard(name) {
    const facts = el("div", { class: "facts" });
    const breakers = el("div", { class: "breakers" });
    const reasons = el("div", { class: "reasons small" });
    const qpsBox = el("div", { class: "chart-qps" }), rtBox = el("div", { class: "chart-rt" });
    const card = el("div", { class: "card resource", "data-resource": name },
      el("h3", {}, name), facts, breakers, reasons, el("div", { class: "charts" }, qpsBox, rtBox));
    $("#resource-list").append(card);
    const width = Math.max(320, Math.floor((card.clientWidth - 40) / 2));
    const { xs, cols } = series(name);
    const qps = new uPlot({
      title: "requests per second", width, height: 190, legend: { live: false }, plugins: [transitionsPlugin(name)],
      scales: { x: { time: true } },
      // complete is dashed: it equals pass for quick requests, and pass must stay visible under it
      series: [{}, { label: "pass", stroke: "#2e7d32", width: 2 }, { label: "block", stroke: "#c62828" },
        { label: "complete", stroke: "#1565c0", dash: [5, 5] }, { label: "error", stroke: "#ef6c00" }],
      axes: [{}, { label: "req/s" }],
    }, [xs, cols.pass, cols.block, cols.complete, cols.error], qpsBox);
    const rt = new uPlot({
      title: "average RT and concurrency", width, height: 190, legend: { live: false }, plugins: [transitionsPlugin(name)],
      scales: { x: { time: true }, conc: {} },
      series: [{}, { label: "avg RT ms", stroke: "#6a1b9a" }, { label: "concurrency", stroke: "#00838f", scale: "conc" }],
      axes: [{}, { label: "ms" }, { side: 1, scale: "conc", label: "in flight", grid: { show: false } }],
    }, [xs, cols.avg_rt_ms, cols.concurrency], rtBox);
    const c = { card, facts, breakers, reasons, qps, rt };
    state.cards.set(name, c);
    return c;
  }

  function renderResources(stats) {
    const names = Object.keys(stats.resources);
    for (const [name, c] of state.cards) if (!names.includes(name)) { c.qps.destroy(); c.rt.destroy(); c.card.remove(); state.cards.delete(name); }
    if (!names.length) fill($("#resource-list"), el("p", { class: "muted" }, "no resources in force"));
    else if (!state.cards.size) fill($("#resource-list"));
    for (const name of names) {
      const r = stats.resources[name];
      const c = state.cards.get(name) || makeCard(name);
      const { xs, cols, blocks } = series(name);
      const last = (k) => cols[k][cols[k].length - 1] || 0;
      fill(c.facts,
        ...[["pass/s", last("pass")], ["block/s", last("block")], ["complete/s", last("complete")], ["error/s", last("error")],
          ["avg RT ms", last("avg_rt_ms")], ["concurrency", r.concurrency],
          ["total pass", r.pass], ["total block", r.block]].map(([k, v]) => el("span", {}, `${k} `, el("b", {}, fmtNum(v)))),
        r.source === "tls_trace" ? el("span", { class: "muted" }, "(tls, observed: never blocked)") : null);
      fill(c.breakers, ...(r.circuit_breakers.length ? ["circuit breakers: ",
        ...r.circuit_breakers.map((b) => el("span", { class: `badge state-${b.state}`, "data-breaker": b.id }, `${b.id}: ${b.state}`))] : []));
      const total = BLOCK_TYPES.filter((k) => r.block_by_type[k]);
      fill(c.reasons, total.length
        ? `blocked by: ${BLOCK_TYPES.map((k) => `${k} ${fmtNum(blocks[k])}`).join(", ")} (last 5 min); ` +
          `since load: ${total.map((k) => `${k} ${fmtNum(r.block_by_type[k])}`).join(", ")}`
        : "nothing blocked since the rules were loaded");
      c.qps.setData([xs, cols.pass, cols.block, cols.complete, cols.error]);
      c.rt.setData([xs, cols.avg_rt_ms, cols.concurrency]);
    }
  }

  function table(head, rows) {
    return el("table", {}, el("tr", {}, ...head.map((h) => el("th", {}, h))),
      ...rows.map((r) => el("tr", {}, ...r.map((v, i) => el("td", { class: i && typeof v === "number" ? "num" : "" }, typeof v === "number" ? fmtNum(v) : v)))));
  }

  function renderDataplane(stats) {
    fill($("#dp-counters"), table(["counter", "total"], Object.entries(stats.dataplane || {})));
    const ports = Object.entries(stats.ports || {});
    const kinds = ports.length ? Object.keys(ports[0][1]) : [];
    fill($("#dp-ports"), ports.length
      ? table(["port (passed unclassified)", ...kinds], ports.map(([p, c]) => [p, ...kinds.map((k) => c[k])]))
      : el("p", { class: "muted" }, "no protected port has passed unclassified traffic"));
  }

  async function renderFleet() {
    let f;
    try { f = await api("fleet"); } catch (e) { fill($("#fleet-nodes"), el("p", { class: "error" }, e.message)); return; }
    fill($("#fleet-nodes"), table(["node", "health", "version", "rules revision", "rules in force since"],
      f.nodes.map((n) => [n.node, n.health === "up" ? "up" : `down: ${n.error}`, n.version || "", n.rules_revision || "",
        n.loaded_at ? fmtTime(n.loaded_at) : ""])),
      f.same_rules ? null : el("p", { class: "error" }, "the nodes do not run the same rules"));
    const keys = ["pass_qps", "block_qps", "concurrency", "pass", "block", "complete", "error", "nodes"];
    fill($("#fleet-sums"), el("h3", { class: "small" }, "per resource, summed over the nodes that are up"),
      table(["resource", ...keys], Object.entries(f.resources).map(([name, r]) => [name, ...keys.map((k) => r[k])])));
  }

  async function renderDoctor() {
    let d;
    try { d = await api("doctor"); } catch (e) { fill($("#doctor"), el("p", { class: "error" }, e.message)); return; }
    if (d.state === "running") { fill($("#doctor"), el("p", { class: "muted" }, "doctor is running…")); setTimeout(renderDoctor, 2000); return; }
    if (d.state === "failed") { fill($("#doctor"), el("p", { class: "error" }, d.error)); return; }
    fill($("#doctor"),
      el("p", {}, `kernel ${d.kernel} (${d.arch}): `, el("b", { class: d.ok ? "state-closed" : "state-open" }, d.ok ? "everything essential is available" : "an essential feature is missing")),
      table(["feature", "available", "missing"], d.features.map((f) => [f.name + (f.essential ? " (essential)" : ""), f.available ? "yes" : "no", f.missing.join(", ")])),
      d.not_ok.length ? el("p", { class: "muted" }, "checks not ok: " + d.not_ok.map((c) => `${c.name} (${c.status}${c.detail ? ": " + c.detail : ""})`).join("; ")) : null);
  }

  // -- rules: tables per kind, editing ----------------------------------------------------------------
  const show = (v) => (v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

  function cellInput(spec, value, editable) {
    let input;
    if (spec.enum || spec.kind === "bool") {
      const options = spec.enum ? [...spec.enum] : ["true", "false"];
      const cur = show(value);
      if (cur && !options.includes(cur)) options.unshift(cur);
      input = el("select", { disabled: !editable }, el("option", { value: "" }, ""), ...options.map((o) => el("option", { value: o }, o)));
      input.value = cur;
    } else {
      input = el("input", { type: "text", value: show(value), disabled: !editable, spellcheck: false });
    }
    input.setAttribute("aria-label", spec.key);
    return input;
  }

  function ruleRow(section, schema, rule, editable) {
    const tr = el("tr", { class: "rule-row" });
    for (const spec of schema) {
      tr.append(el("td", { "data-field": spec.key }, cellInput(spec, rule[spec.key], editable)));
    }
    const del = el("button", { type: "button", disabled: !editable, title: "remove this rule" }, "×");
    del.addEventListener("click", () => { tr.remove(); renumber(section); });
    tr.append(el("td", { class: "row-problems" }, del));
    return tr;
  }

  function renumber(section) {
    document.querySelectorAll(`table[data-section="${section}"] tr.rule-row`).forEach((tr, i) => tr.setAttribute("data-index", i));
  }

  function renderRules(doc, note) {
    state.rules = doc; state.base = doc.revision;
    const editable = doc.editable && state.editsEnabled;
    const why = !doc.editable ? doc.not_editable : !state.editsEnabled ? "read-only: start the dashboard with --token-file FILE and enter the token to edit" : "";
    fill($("#rules-status"),
      note ? el("p", { class: "applied" }, note) : null,
      el("p", {}, `file ${doc.file}, revision `, el("code", { id: "rules-revision" }, doc.revision),
        `, in force since `, el("b", { id: "rules-loaded-at" }, fmtTime(doc.loaded_at))),
      why ? el("p", { class: "muted" }, why) : null);
    fill($("#rules-problems"));
    const tables = [];
    for (const section of SECTIONS) {
      const schema = doc.schema[section];
      const rules = (doc.document && doc.document[section]) || [];
      const t = el("table", { "data-section": section },
        el("tr", {}, ...schema.map((s) => el("th", { title: s.kind + (s.default !== null ? `, default ${s.default}` : "") }, s.key)), el("th", {}, "")));
      rules.forEach((r) => t.append(ruleRow(section, schema, r, editable)));
      const add = el("button", { type: "button", disabled: !editable }, `add to ${section}`);
      add.addEventListener("click", () => { t.append(ruleRow(section, schema, {}, true)); renumber(section); });
      tables.push(el("div", { class: "rules-table" }, el("h3", {}, `${section} (${rules.length})`), t, add));
    }
    const reject = el("textarea", { disabled: !editable, spellcheck: false, value: JSON.stringify((doc.document || {}).reject || {}, null, 1) });
    reject.setAttribute("aria-label", "reject");
    tables.push(el("div", { class: "rules-table", "data-section": "reject" }, el("h3", {}, "reject (what a block looks like)"), el("div", { class: "cell" }, reject)));
    fill($("#rules-tables"), ...tables);
    for (const s of SECTIONS) renumber(s);
    for (const id of ["#rules-check", "#rules-apply", "#rules-discard"]) $(id).disabled = !editable;
  }

  function parseValue(spec, text) {
    if (text === "") return undefined; // the field's default
    if (spec.kind === "int" || spec.kind === "float") { const n = Number(text); return text.trim() !== "" && Number.isFinite(n) ? n : text; }
    if (spec.kind === "bool") return text === "true" ? true : text === "false" ? false : text;
    if (spec.kind === "any") { try { return JSON.parse(text); } catch { return text; } }
    return text; // str and enum names: the validator says what is wrong
  }

  function collect() {
    const document_ = {};
    for (const section of SECTIONS) {
      const schema = state.rules.schema[section];
      const rows = [...document.querySelectorAll(`table[data-section="${section}"] tr.rule-row`)].map((tr) => {
        const rule = {};
        schema.forEach((spec, i) => { const v = parseValue(spec, tr.children[i].firstChild.value); if (v !== undefined) rule[spec.key] = v; });
        return rule;
      });
      if (rows.length || (state.rules.document && section in state.rules.document)) document_[section] = rows;
    }
    const text = document.querySelector('[data-section="reject"] textarea').value.trim();
    if (text) { try { document_.reject = JSON.parse(text); } catch { document_.reject = text; } }
    return document_;
  }

  function clearProblems() {
    document.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
    document.querySelectorAll("#rules-tables .problem").forEach((e) => e.remove());
    fill($("#rules-problems"));
  }

  function showProblems(problems, summary) {
    clearProblems();
    for (const p of problems) {
      const msg = el("div", { class: "problem" }, p.reason);
      const top = p.field ? String(p.field).split(/[.[]/)[0] : null;
      let target = null;
      if (p.section === "reject") target = document.querySelector('[data-section="reject"] .cell');
      else if (p.section !== null && p.index !== null) {
        const row = document.querySelector(`table[data-section="${CSS.escape(String(p.section))}"] tr[data-index="${CSS.escape(String(p.index))}"]`);
        if (row) target = (top && row.querySelector(`td[data-field="${CSS.escape(top)}"]`)) || row.querySelector("td.row-problems");
      }
      if (target) { target.classList.add("invalid"); target.append(msg); }
      else $("#rules-problems").append(el("li", {}, [p.section, p.index, p.field].filter((x) => x !== null && x !== undefined).join(" ") + (p.section ? ": " : "") + p.reason));
    }
    if (summary) $("#rules-problems").prepend(el("li", { class: "summary" }, summary));
  }

  async function check() {
    try {
      const r = await api(`daemons/${state.daemon}/rules/check`, { document: collect() });
      if (r.valid) { clearProblems(); $("#rules-problems").append(el("li", { class: "state-closed" }, "valid: Apply puts it in force")); }
      else showProblems(r.problems, `${r.problems.length} problem(s); nothing was changed`);
    } catch (e) { showProblems([], e.message); }
  }

  async function apply() {
    $("#rules-apply").disabled = true;
    try {
      const r = await api(`daemons/${state.daemon}/rules/apply`, { document: collect(), base: state.base });
      if (!r.applied) { showProblems(r.problems, `${r.problems.length} problem(s); nothing was changed`); return; }
      // in force once the daemon reports the new revision
      for (let i = 0; i < 50; i++) {
        const doc = await api(`daemons/${state.daemon}/rules`);
        if (doc.revision === r.revision) {
          renderRules(doc, `applied: in force since ${fmtTime(doc.loaded_at)} (revision ${doc.revision})`);
          return;
        }
        await new Promise((ok) => setTimeout(ok, 200));
      }
      showProblems([], "applied, but the daemon does not report it in force yet");
    } catch (e) { showProblems([], e.message); } finally { $("#rules-apply").disabled = !(state.rules.editable && state.editsEnabled); }
  }

  async function loadRules(note) {
    try { renderRules(await api(`daemons/${state.daemon}/rules`), note); }
    catch (e) { fill($("#rules-status"), el("p", { class: "error" }, e.message)); }
  }

  // -- polling --------------------------------------------------------------------------------------
  async function tick() {
    if (state.busy) return;
    state.busy = true;
    try {
      const [stats, metrics] = await Promise.all([api(`daemons/${state.daemon}/stats`), api(`daemons/${state.daemon}/metrics?since=${state.toMs}`)]);
      mergeMetrics(metrics);
      state.stats = stats;
      renderResources(stats);
      renderDataplane(stats);
      if (!(state.ticks++ % 5)) renderFleet(); // asks every daemon twice: not every second
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
      if (state.rules && stats.loaded_at && Math.abs(stats.loaded_at - state.rules.loaded_at) > 0.001 && !$("#rules-stale")) {
        $("#rules-status").append(el("p", { id: "rules-stale", class: "error" }, "the rules in force changed since this table was loaded: Discard edits shows them"));
      }
    } catch (e) {
      setStatus(e.status === 401 ? "enter the token" : e.message, true);
    } finally { state.busy = false; }
  }

  async function start() {
    $("#token").value = state.token;
    $("#token-use").onclick = () => { state.token = $("#token").value.trim(); sessionStorage.setItem("sentinel-ebpf-token", state.token); start(); };
    $("#rules-check").onclick = check;
    $("#rules-apply").onclick = apply;
    $("#rules-discard").onclick = () => loadRules();
    let overview;
    try { overview = await api("overview"); } catch (e) { setStatus(e.status === 401 ? "this dashboard needs its token" : e.message, true); return; }
    state.editsEnabled = overview.edits_enabled && !!state.token;
    const sel = $("#daemon");
    sel.replaceChildren(...overview.daemons.map((d) => el("option", { value: d.id }, d.socket + (d.up ? "" : " (down)"))));
    sel.value = String(state.daemon);
    sel.onchange = () => {
      state.daemon = Number(sel.value); state.points.clear(); state.transitions = []; state.toMs = state.startMs = 0;
      for (const c of state.cards.values()) { c.qps.destroy(); c.rt.destroy(); }
      state.cards.clear(); fill($("#resource-list")); loadRules(); tick();
    };
    await loadRules();
    renderDoctor();
    await tick();
    if (!state.timer) state.timer = setInterval(tick, 1000);
  }
  start();
})();
