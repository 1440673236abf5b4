// The gateway's ops console. Vanilla JS, no build step, no other origin.
// Every value from the API is attacker-influenced (route matches, actor ids, paths, user agents, policy text):
// it is only ever put on the page with textContent / createTextNode, never parsed as markup.
"use strict";

(() => {
  const REFRESH_MS = 1000;
  const RING = 300; // samples kept per chart: 5 minutes (the default SLO window) at 1 s
  const PAGE_SIZE = 24;
  const MAX_AUDIT_ROWS = 500;
  const STORE = "gateway-ops-credential";
  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers: text only ----
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function button(label, onClick, className) {
    const b = el("button", className || "", label);
    b.type = "button";
    b.addEventListener("click", onClick);
    return b;
  }
  const fmt = {
    ms: (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(v < 10 ? 1 : 0)} ms`),
    pct: (v, d = 2) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(d)}%`),
    num: (v) => (v === null || v === undefined ? "–" : String(v)),
    burn: (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(2)}×`),
    time: (iso) => (iso ? String(iso).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "–"),
  };

  // ---- credentials: sessionStorage, sent as a header, never in a URL ----
  let credential = null;
  try { credential = JSON.parse(sessionStorage.getItem(STORE) || "null"); } catch (e) { credential = null; }

  function authHeaders() {
    if (!credential) return {};
    return credential.kind === "user" ? { "X-User-Id": credential.value }
      : { Authorization: `Bearer ${credential.value}` };
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.error)) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  // A poll is a read the refresh loop makes: the gateway does not audit successful ones (X-Ops-Poll).
  async function api(method, path, body, raw, poll) {
    const headers = { Accept: "application/json", ...authHeaders() };
    if (poll) headers["X-Ops-Poll"] = "1";
    const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["X-Requested-By"] = "ops-console"; // the CSRF header the ops API wants from browsers
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (raw && response.ok) return response;
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (response.status === 401 || response.status === 403) {
      if (!(data && data.error === "cross_origin")) signOut(data && data.detail);
    }
    if (!response.ok && !(data && typeof data === "object" && "valid" in data)) {
      throw new ApiError(response.status, data);
    }
    return data;
  }

  function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

  // ---- sign in / out ----
  function signOut(reason) {
    credential = null;
    sessionStorage.removeItem(STORE);
    stop();
    $("console").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = reason || "";
    $("token").focus();
  }

  async function signIn(value, kind) {
    credential = { kind, value };
    try {
      await api("GET", "/api/ops/policy");
    } catch (err) {
      credential = null;
      $("signin-error").textContent = err.message;
      return;
    }
    sessionStorage.setItem(STORE, JSON.stringify(credential));
    $("signin").hidden = true;
    $("console").hidden = false;
    $("token").value = "";
    start();
  }

  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) signIn(value, $("as-user").checked ? "user" : "bearer");
  });
  $("signout").addEventListener("click", () => signOut("Signed out."));

  // ---- confirmation dialog ----
  function confirmAction(text) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-yes").onclick = null;
        $("confirm-no").onclick = null;
        dialog.close();
        resolve(answer);
      };
      $("confirm-yes").onclick = () => done(true);
      $("confirm-no").onclick = () => done(false);
      dialog.showModal();
    });
  }

  // ---- charts: small SVG sparklines drawn with DOM calls ----
  const SVG = "http://www.w3.org/2000/svg";
  function spark(values, target, width = 130, height = 30) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    const numbers = values.filter((v) => typeof v === "number" && isFinite(v));
    // Scaled to the samples (a 2 ms p95 under a 300 ms target would otherwise be a flat line); the dashed
    // target line shows when it is within reach.
    const top = Math.max(1e-9, ...numbers) * 1.25;
    const y = (v) => (height - 2 - (v / top) * (height - 4)).toFixed(1);
    if (target && target <= top) {
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("class", "target");
      line.setAttribute("x1", 0); line.setAttribute("x2", width);
      line.setAttribute("y1", y(target)); line.setAttribute("y2", y(target));
      svg.appendChild(line);
    }
    const points = [];
    const step = width / Math.max(1, RING - 1);
    const offset = RING - values.length;
    values.forEach((v, i) => {
      if (typeof v === "number" && isFinite(v)) points.push(`${((offset + i) * step).toFixed(1)},${y(v)}`);
    });
    const poly = document.createElementNS(SVG, "polyline");
    poly.setAttribute("points", points.join(" "));
    svg.appendChild(poly);
    return svg;
  }
  function push(ring, value) { ring.push(value); if (ring.length > RING) ring.shift(); }

  // ---- Overview ----
  const history = new Map(); // route -> {p95: [], rate: []}
  const overview = { page: 0, routes: [] };

  function tileState(s) {
    const objectives = Object.values(s.objectives || {});
    if (s.compliant === null || s.compliant === undefined) return "grey";
    if (objectives.some((o) => o.met === false)) return "red";
    const burn = s.burn_rate || {};
    if ((burn["5m"] || 0) > 1 || (burn["1h"] || 0) > 1 ||
        (s.error_budget_remaining !== null && s.error_budget_remaining < 0.5)) return "amber";
    return "green";
  }

  function tile(s) {
    const h = history.get(s.route) || { p95: [], rate: [] };
    const state = tileState(s);
    const target = s.target || {};
    const objectives = s.objectives || {};
    const burn = s.burn_rate || {};
    const node = el("article", `tile ${state}`);
    node.dataset.route = s.route;
    node.appendChild(el("h3", "", s.route));
    node.appendChild(el("div", "match", s.match || ""));
    const dl = el("dl");
    const row = (label, value, bad) => {
      dl.appendChild(el("dt", "", label));
      dl.appendChild(el("dd", bad ? "bad" : "", value));
    };
    const p95 = s.latency_ms ? s.latency_ms.p95 : null;
    const latency = objectives.latency_p95;
    row("p95", `${fmt.ms(p95)} / target ${fmt.ms(target.p95_ms)}`, latency && latency.met === false);
    const errors = objectives.error_rate;
    row("error rate", `${fmt.pct(s.error_rate)} / target ${fmt.pct(target.error_rate)}`,
      errors && errors.met === false);
    const shares = Object.values(objectives).map((o) => o.good_share).filter((v) => v !== null);
    row("compliance", s.compliant === null ? "no data" : `${s.compliant ? "met" : "violated"}` +
      (shares.length ? ` (${fmt.pct(Math.min(...shares))} good)` : ""), s.compliant === false);
    row("burn 5m / 1h / 6h", `${fmt.burn(burn["5m"])} / ${fmt.burn(burn["1h"])} / ${fmt.burn(burn["6h"])}`,
      (burn["1h"] || 0) > 1);
    row("error budget left", fmt.pct(s.error_budget_remaining, 1),
      s.error_budget_remaining !== null && s.error_budget_remaining < 0);
    row("requests", `${fmt.num(s.requests)} in ${Math.round(s.window_seconds || 0)} s`);
    node.appendChild(dl);
    const charts = el("div", "charts");
    charts.appendChild(el("div", "", "p95", spark(h.p95, target.p95_ms)));
    charts.appendChild(el("div", "", "req/s", spark(h.rate, null)));
    node.appendChild(charts);
    return node;
  }

  function renderOverview() {
    const query = $("search").value.trim().toLowerCase();
    const shown = overview.routes.filter((s) => !query || s.route.toLowerCase().includes(query) ||
      String(s.match || "").toLowerCase().includes(query));
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    overview.page = Math.min(overview.page, pages - 1);
    $("page").textContent = `page ${overview.page + 1} of ${pages} (${shown.length} routes with an SLO)`;
    const tiles = clear($("tiles"));
    for (const s of shown.slice(overview.page * PAGE_SIZE, (overview.page + 1) * PAGE_SIZE)) tiles.appendChild(tile(s));
  }

  async function refreshMetrics() {
    const scope = $("scope").value === "instance" ? "instance" : "fleet";
    const data = await api("GET", `/api/ops/metrics?scope=${scope}`, undefined, false, true);
    const instances = Array.isArray(data.instances) ? data.instances.length : 1;
    $("scope").title = scope === "fleet" ? `${instances} instance(s) contributing` : `instance ${data.instance || ""}`;
    const metrics = data.metrics || {};
    const routes = metrics.routes || data.routes || {};
    const withSlo = [];
    for (const [name, s] of Object.entries(routes)) {
      if (!s || !s.target) continue;
      const h = history.get(name) || { p95: [], rate: [] };
      push(h.p95, s.latency_ms ? s.latency_ms.p95 : null);
      push(h.rate, s.window_seconds ? (s.requests || 0) / s.window_seconds : null);
      history.set(name, h);
      withSlo.push({ ...s, route: name });
    }
    withSlo.sort((a, b) => a.route.localeCompare(b.route));
    overview.routes = withSlo;
    limitsView.breaches = metrics.rate_limit_breaches || {};
    for (const [name, count] of Object.entries(limitsView.breaches)) {
      const ring = limitsView.rings.get(name) || { last: null, rate: [] };
      if (ring.last !== null) push(ring.rate, Math.max(0, (count - ring.last) / (REFRESH_MS / 1000)));
      ring.last = count;
      limitsView.rings.set(name, ring);
    }
  }

  $("scope").addEventListener("change", () => { history.clear(); refreshMetrics().then(renderOverview); });
  $("search").addEventListener("input", () => { overview.page = 0; renderOverview(); });
  $("prev").addEventListener("click", () => { overview.page = Math.max(0, overview.page - 1); renderOverview(); });
  $("next").addEventListener("click", () => { overview.page += 1; renderOverview(); });

  // ---- audit trail through the export endpoint ----
  const isoAgo = (seconds) => new Date(Date.now() - seconds * 1000).toISOString();
  async function exportAudit(filter, from, extra) {
    const body = { entities: ["audit"], range: { from }, filter, ...(extra || {}) };
    const data = await api("POST", "/api/ops/export", body, false, true);
    return data.audit;
  }

  // ---- Breakers ----
  async function act(label, fn) {
    try {
      showError(null);
      await fn();
      await tick(true);
    } catch (err) {
      showError(`${label}: ${err.message}`);
    }
  }

  async function refreshBreakers(slow) {
    const data = await api("GET", "/api/ops/breakers", undefined, false, true);
    const body = clear($("breakers").tBodies[0]);
    for (const b of data.breakers || []) {
      const tr = el("tr");
      tr.dataset.breaker = b.name;
      tr.appendChild(el("td", "", b.name));
      tr.appendChild(el("td", `state-${b.state}`, b.state.replace("_", "-") + (b.held ? " (held)" : "")));
      tr.appendChild(el("td", "", b.retry_in === null || b.retry_in === undefined ? "–" : `${b.retry_in.toFixed(1)} s`));
      tr.appendChild(el("td", "", `${b.failures} (${b.consecutive_failures} in a row)`));
      const w = b.window || {};
      tr.appendChild(el("td", "", `${fmt.num(w.calls)} / ${fmt.num(w.failures)} / ${fmt.num(w.slow)}`));
      tr.appendChild(el("td", "", fmt.num(b.rejected)));
      tr.appendChild(el("td", "", (b.transitions || []).map((t) => `${t.from}→${t.to} ×${t.count}`).join(", ") || "–"));
      const actions = el("td", "actions");
      for (const action of ["open", "close", "reset"]) {
        actions.appendChild(button(action[0].toUpperCase() + action.slice(1), async () => {
          if (!(await confirmAction(`${action} breaker "${b.name}"? This is audited under your identity.`))) return;
          await act(`${action} ${b.name}`, () =>
            api("POST", `/api/ops/breakers/${encodeURIComponent(b.name)}`, { action }));
        }, action === "open" ? "danger" : ""));
      }
      tr.appendChild(actions);
      body.appendChild(tr);
    }
    if (!slow) return;
    const audit = await exportAudit({ type: "circuit_state_change" }, isoAgo(3600), { limit: 5000 });
    const list = clear($("timeline"));
    const records = Array.isArray(audit) ? audit.slice(-100).reverse() : [];
    if (!records.length) list.appendChild(el("li", "muted", "no transitions in the last hour"));
    for (const r of records) {
      list.appendChild(el("li", "", `${fmt.time(r.time)}  ${r.breaker}: ${r.from} → ${r.to}` +
        (r.cause ? ` (${typeof r.cause === "string" ? r.cause : JSON.stringify(r.cause)})` : "")));
    }
  }

  // ---- Rate limits ----
  const limitsView = { breaches: {}, rings: new Map() };

  async function refreshLimits(slow) {
    const data = await api("GET", "/api/ops/rate_limits", undefined, false, true);
    $("limits-storage").textContent = `(storage: ${data.storage}${data.redis_up === false ? ", Redis down" : ""})`;
    const body = $("limits").tBodies[0];
    if (body.contains(document.activeElement) && document.activeElement.tagName === "INPUT") {
      return; // someone is typing an override: leave the table alone until they are done
    }
    const typed = {};
    for (const input of body.querySelectorAll("input.rate")) {
      if (input.dataset.dirty) typed[input.dataset.limit] = input.value;
    }
    clear(body);
    for (const [name, l] of Object.entries(data.limits || {})) {
      const tr = el("tr");
      tr.dataset.limit = name;
      tr.appendChild(el("td", "", name, l.shadow ? " (shadow)" : ""));
      tr.appendChild(el("td", "", `${l.policy_rate} / ${l.per}`));
      tr.appendChild(el("td", l.source === "override" ? "bad" : "", `${l.rate} / ${l.per} (burst ${l.burst})`));
      tr.appendChild(el("td", "", l.source));
      tr.appendChild(el("td", "", l.key));
      tr.appendChild(el("td", "", fmt.num(limitsView.breaches[name] || 0)));
      const ring = limitsView.rings.get(name);
      tr.appendChild(el("td", "", spark(ring ? ring.rate : [], null, 110, 24)));
      const cell = el("td", "actions");
      const input = el("input", "rate");
      input.type = "number";
      input.min = "1";
      input.step = "1";
      input.dataset.limit = name;
      input.setAttribute("aria-label", `override for ${name}`);
      input.value = name in typed ? typed[name] : String(l.rate);
      if (name in typed) input.dataset.dirty = "1";
      input.addEventListener("input", () => { input.dataset.dirty = "1"; });
      cell.appendChild(input);
      cell.appendChild(button("Set", async () => {
        const rate = Number(input.value);
        if (!Number.isInteger(rate) || rate < 1) { showError(`${name}: the rate must be a whole number ≥ 1`); return; }
        if (!(await confirmAction(`Set ${name} to ${rate} per ${l.per}? Audited under your identity.`))) return;
        delete input.dataset.dirty;
        await act(`override ${name}`, () => api("POST", "/api/ops/rate_limits", { [name]: rate }));
      }));
      cell.appendChild(button("Reset", async () => {
        if (!(await confirmAction(`Reset ${name} to the policy's ${l.policy_rate} per ${l.per}?`))) return;
        delete input.dataset.dirty;
        await act(`reset ${name}`, () => api("POST", "/api/ops/rate_limits", { [name]: null }));
      }));
      tr.appendChild(cell);
      body.appendChild(tr);
    }
    if (!slow) return;
    const top = await exportAudit({ type: "rate_limit_hit" }, isoAgo(3600), { group_by: "actor" });
    const actors = clear($("actors").tBodies[0]);
    const groups = top && Array.isArray(top.groups) ? top.groups.slice(0, 20) : [];
    if (!groups.length) actors.appendChild(el("tr", "", el("td", "muted", "no 429s in the last hour")));
    for (const g of groups) {
      actors.appendChild(el("tr", "", el("td", "", g.actor === null ? "(none)" : g.actor),
        el("td", "", g.count), el("td", "", fmt.time(g.first)), el("td", "", fmt.time(g.last))));
    }
  }

  $("reset-all").addEventListener("click", async () => {
    if (!(await confirmAction("Remove every rate-limit override (back to the policy's values)?"))) return;
    await act("reset all overrides", () => api("POST", "/api/ops/rate_limits", { reset: true }));
  });

  // ---- Policy ----
  async function refreshPolicy(slow) {
    const p = await api("GET", "/api/ops/policy", undefined, false, true);
    const facts = clear($("policy-facts"));
    const fact = (k, v) => { facts.appendChild(el("dt", "", k)); facts.appendChild(el("dd", "", v)); };
    fact("version", p.version);
    fact("loaded at", fmt.time(p.loaded_at));
    fact("source", p.source);
    fact("file on disk", p.file_differs ? "differs from the running policy" : "same as running");
    fact("history", (p.history || []).map((h) => `${h.version} (${fmt.time(h.loaded_at)})`).join(", "));
    fact("last reload", p.last_error ? `rejected at ${fmt.time(p.last_error.time)} (${p.last_error.trigger})`
      : "accepted (the running policy is the last one tried)");
    const problems = clear($("policy-problems"));
    if (p.last_error) for (const line of p.last_error.problems || []) problems.appendChild(el("li", "", line));
    else problems.appendChild(el("li", "muted", "none"));
    if (!slow) return;
    const loaded = Date.parse(p.loaded_at);
    const from = new Date((isFinite(loaded) ? loaded : Date.now()) - 60000).toISOString();
    const reloads = await exportAudit({ type: "policy_reload", result: "success" }, from, {});
    const last = Array.isArray(reloads) && reloads.length ? reloads[reloads.length - 1] : null;
    $("policy-diff").textContent = last
      ? `${fmt.time(last.time)} ${last.trigger || ""} → ${last.version}\n${JSON.stringify(last.diff, null, 2)}`
      : "no reload since this policy was loaded at start";
  }

  $("reload").addEventListener("click", () => act("reload", async () => {
    try {
      const r = await api("POST", "/api/ops/reload", {});
      $("policy-result").textContent = `reload: ${r.result} (version ${r.version})`;
    } catch (err) {
      $("policy-result").textContent = `reload rejected: ${err.message}`;
    }
  }));
  $("rollback").addEventListener("click", async () => {
    if (!(await confirmAction("Roll back to the previous policy held in memory?"))) return;
    await act("rollback", async () => {
      const r = await api("POST", "/api/ops/reload", { rollback: true });
      $("policy-result").textContent = `rollback: ${r.result} (version ${r.version})`;
    });
  });
  $("validate").addEventListener("click", () => act("validate", async () => {
    const r = await api("POST", "/api/ops/policy/validate", { text: $("candidate").value });
    $("validate-summary").textContent = r.valid ? r.summary : `${r.problems.length} problem(s):`;
    const list = clear($("validate-problems"));
    list.className = r.valid ? "problems ok" : "problems";
    for (const line of r.problems || []) list.appendChild(el("li", "", line));
  }));

  // ---- Audit: live tail by short polling ----
  const tail = { cursor: null, seen: new Set(), rows: [] };
  const WHO = ["actor", "principal"];
  const WHAT = ["route", "breaker", "action", "limit"];
  const pick = (record, names) => names.find((n) => record[n] !== null && record[n] !== undefined && record[n] !== "");

  function auditFilter() {
    const filter = {};
    if ($("f-type").value) filter.type = $("f-type").value;
    if ($("f-actor").value.trim()) filter.actor = $("f-actor").value.trim();
    if ($("f-route").value.trim()) filter.route = $("f-route").value.trim();
    return filter;
  }
  function auditFrom() {
    const v = $("f-from").value;
    return v ? new Date(v).toISOString() : isoAgo(900);
  }
  function resetTail() { tail.cursor = null; tail.seen.clear(); tail.rows = []; clear($("audit").tBodies[0]); }

  async function refreshAudit() {
    const from = tail.cursor || auditFrom();
    const records = await exportAudit(auditFilter(), from, { limit: MAX_AUDIT_ROWS });
    if (!Array.isArray(records)) return;
    const body = $("audit").tBodies[0];
    for (const r of records) {
      const key = r.id || JSON.stringify(r);
      if (tail.seen.has(key)) continue;
      tail.seen.add(key);
      tail.cursor = r.time;
      const who = pick(r, WHO);
      const what = pick(r, WHAT);
      const details = {};
      for (const [k, v] of Object.entries(r)) {
        if (!["time", "type", "id", "path", who, what].includes(k)) details[k] = v;
      }
      const tr = el("tr", "", el("td", "", fmt.time(r.time)), el("td", "", r.type),
        el("td", "", who ? r[who] : ""), el("td", "", what ? r[what] : ""),
        el("td", "", r.path || ""), el("td", "details", JSON.stringify(details)));
      body.insertBefore(tr, body.firstChild);
      while (body.rows.length > MAX_AUDIT_ROWS) body.deleteRow(body.rows.length - 1);
    }
    if (tail.seen.size > 20 * MAX_AUDIT_ROWS) tail.seen = new Set([...tail.seen].slice(-MAX_AUDIT_ROWS));
    $("audit-count").textContent = `${body.rows.length} shown, newest first`;
  }

  $("f-apply").addEventListener("click", () => { resetTail(); tick(true); });
  async function download(format) {
    const body = { entities: ["audit"], range: { from: auditFrom() }, filter: auditFilter(), format };
    const response = await api("POST", "/api/ops/export", body, true);
    const blob = await response.blob();
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = `audit.${format}`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }
  $("export-csv").addEventListener("click", () => act("export", () => download("csv")));
  $("export-ndjson").addEventListener("click", () => act("export", () => download("ndjson")));

  // ---- views and the refresh loop ----
  let view = (location.hash || "#overview").slice(1);
  let timer = null;
  let running = false;
  let ticks = 0;
  const VIEWS = ["overview", "breakers", "limits", "policy", "audit"];

  function show(name) {
    view = VIEWS.includes(name) ? name : "overview";
    for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
    for (const b of document.querySelectorAll("#tabs .tab")) b.classList.toggle("active", b.dataset.view === view);
    if (location.hash !== `#${view}`) history_replace(`#${view}`);
  }
  function history_replace(hash) { window.history.replaceState(null, "", hash); }
  for (const b of document.querySelectorAll("#tabs .tab")) {
    b.addEventListener("click", () => { show(b.dataset.view); tick(true); });
  }

  async function tick(slow) {
    if (!credential) return;
    ticks += 1;
    const full = slow || ticks % 4 === 1; // the audit-derived parts every ~4 s, the rest every tick
    try {
      await refreshMetrics();
      if (view === "overview") renderOverview();
      else if (view === "breakers") await refreshBreakers(full);
      else if (view === "limits") await refreshLimits(full);
      else if (view === "policy") await refreshPolicy(full);
      else if (view === "audit") await refreshAudit();
      $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if ($("error").textContent.startsWith("refresh")) showError(null);
    } catch (err) {
      if (credential) showError(`refresh failed: ${err.message}`);
    }
  }

  async function loop() {
    if (!credential || !running) return;
    const started = performance.now();
    await tick(false);
    // Once a second, unless a refresh costs more than a twentieth of that: with a thousand SLO routes the
    // metrics answer is about 1 MB and tens of milliseconds of the gateway's time, so back off in proportion.
    const delay = Math.max(REFRESH_MS, 20 * (performance.now() - started));
    if (running) timer = setTimeout(loop, Math.min(delay, 5000));
  }
  function start() { show(view); running = true; loop(); }
  function stop() { running = false; if (timer) clearTimeout(timer); timer = null; }

  if (credential) {
    $("console").hidden = false;
    start();
  } else {
    $("signin").hidden = false;
  }
})();
