// The hsmpool operators' console: plain JavaScript over /console/api (no build step).
// Every value from the server reaches the page as text (textContent), never as HTML.
"use strict";

const C = {
  session: null,        // GET /console/api/session
  instance: null,       // the instance shown
  tab: "overview",
  keys: [],             // compact rows (see KEY_FIELDS in kms/api/console.py)
  fields: {},           // field name -> column index
  filtered: [],         // indices into keys, after the filters
  keysInstance: null,
  timers: [],
  // Figures the browser test reads: the last render of the key inventory.
  stats: { keysRenderMs: null, keysLoadMs: null, keysCount: 0, renders: 0 },
};
window.hsmConsole = C.stats;

const ROW_H = 28;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function when(t) {
  if (!t) return "";
  return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
}
function day(t) { return t ? new Date(t * 1000).toISOString().slice(0, 10) : ""; }

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && C.session && C.session.csrf) headers["X-CSRF-Token"] = C.session.csrf;
  const r = await fetch(path, { method, headers, credentials: "same-origin",
                                body: body === undefined ? undefined : JSON.stringify(body) });
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (r.status === 401 && path !== "/console/api/session") { showSignIn(); }
  if (!r.ok) {
    const err = new Error((doc && doc.message) || ("HTTP " + r.status));
    err.status = r.status;
    throw err;
  }
  return doc;
}

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3000);
}

function confirmStep(text) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    d.returnValue = "";
    d.onclose = () => resolve(d.returnValue === "ok");
    d.showModal();
  });
}

// --- sign-in -------------------------------------------------------------------------

function showSignIn() {
  stopTimers();
  C.session = null;
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-secret").value = "";
}

async function signIn(ev) {
  ev.preventDefault();
  $("signin-error").textContent = "";
  const akid = $("signin-akid").value.trim();
  const secret = $("signin-secret").value;
  try {
    C.session = await api("POST", "/console/api/session",
                          { access_key_id: akid, secret_access_key: secret });
  } catch (e) {
    $("signin-error").textContent = e.message;
    return;
  } finally {
    $("signin-secret").value = "";
  }
  startApp();
}

async function signOut() {
  try { await api("POST", "/console/api/session/end", {}); } catch (e) { /* gone anyway */ }
  showSignIn();
}

function startApp() {
  const s = C.session;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").textContent = s.instance + "/" + s.name + (s.admin ? " (console administrator)" : "");
  const sel = $("instance");
  sel.replaceChildren(...s.instances.map((i) => el("option", { value: i }, i)));
  C.instance = s.instances.includes(s.instance) ? s.instance : s.instances[0];
  sel.value = C.instance;
  $("audit-verify").hidden = !s.admin;
  $("token-actions-head").textContent = s.admin ? "actions" : "";
  showTab(C.tab);
  stopTimers();
  every(1000, refreshOverview);
  every(3000, () => { if (C.tab === "audit") refreshAudit(); });
  every(30000, () => { if (C.tab === "keys") loadKeys(); });
}

function every(ms, fn) {
  fn();
  C.timers.push(setInterval(fn, ms));
}
function stopTimers() { C.timers.forEach(clearInterval); C.timers = []; }

function showTab(name) {
  C.tab = name;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== "tab-" + name;
  if (name === "keys" && C.keysInstance !== C.instance) loadKeys();
  if (name === "keys") renderKeys();
  if (name === "audit") refreshAudit();
  if (name === "secrets") refreshSecrets();
}

// --- overview ------------------------------------------------------------------------

function spark(rows) {
  const w = 160, h = 26, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h); svg.setAttribute("class", "spark");
  if (!rows.length) return svg;
  const span = 120, max = Math.max(1, ...rows.map((r) => r[1]));
  const x = (ago) => w - (ago / span) * w;
  for (const r of rows) {  // ejected seconds as red bars
    if (r[3] > 0) {
      const b = document.createElementNS(ns, "rect");
      b.setAttribute("x", x(r[0]) - 1.5); b.setAttribute("y", 0);
      b.setAttribute("width", 3); b.setAttribute("height", h); b.setAttribute("fill", "#f3b8b8");
      svg.append(b);
    }
  }
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", rows.map((r) => x(r[0]).toFixed(1) + "," +
                                        (h - 2 - (r[1] / max) * (h - 4)).toFixed(1)).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#2452c7");
  line.setAttribute("stroke-width", "1.5");
  svg.append(line);
  return svg;
}

// The circuit breaker of a token, in words: closed (serving), open (ejected after failures,
// the prober tries it with backoff), held (ejected by an operator until readmitted).
function breaker(t) {
  if (t.held) return "held by an operator";
  if (t.state === "healthy") return t.workers_healthy < t.workers ? "open in some workers" : "closed";
  if (t.state === "ejected") return "open: probing";
  return "-";
}

async function tokenAction(name, action) {
  const ok = await confirmStep((action === "eject" ? "Eject" : "Readmit") + " token " + name +
                               (action === "eject" ? " from the pool (every worker)?" : "?"));
  if (!ok) return;
  try {
    await api("POST", "/console/api/tokens/action", { token: name, action });
    toast("token " + name + ": " + action + " requested");
    refreshOverview();
  } catch (e) { toast(e.message); }
}

async function refreshOverview() {
  let o;
  try { o = await api("GET", "/console/api/overview"); } catch (e) { return; }
  const healthy = o.tokens.filter((t) => t.state === "healthy").length;
  const badge = $("health-badge");
  badge.textContent = healthy + "/" + o.tokens.length + " tokens healthy";
  badge.className = "badge " + (healthy === o.tokens.length && o.store_ok ? "ok" : "bad");
  $("workers").textContent = "(" + o.workers + " worker" + (o.workers === 1 ? "" : "s") + ")";
  const admin = C.session && C.session.admin;
  $("tokens").tBodies[0].replaceChildren(...o.tokens.map((t) => el("tr", { "data-token": t.name },
    el("td", { class: "mono" }, t.name), el("td", {}, t.label), el("td", {}, t.instances.join(", ")),
    el("td", { class: "state " + t.state, "data-state": t.state },
       t.state + (t.missing ? ": " + t.missing : "")),
    el("td", {}, breaker(t)),
    el("td", { class: "num" }, t.workers_healthy + "/" + t.workers),
    el("td", { class: "num" }, t.in_flight), el("td", { class: "num" }, t.ops_s),
    el("td", { class: "num" }, (t.error_rate * 100).toFixed(1) + " %"),
    el("td", { class: "num" }, t.p50_ms.toFixed(3)), el("td", { class: "num" }, t.p99_ms.toFixed(3)),
    el("td", { class: "num" }, t.ejections), el("td", {}, spark(o.series[t.name] || [])),
    el("td", {}, admin ? (t.held
      ? el("button", { class: "small", "data-action": "readmit", onclick: () => tokenAction(t.name, "readmit") }, "Readmit")
      : el("button", { class: "small", "data-action": "eject", onclick: () => tokenAction(t.name, "eject") }, "Eject")) : ""))));
  const state = Object.fromEntries(o.tokens.map((t) => [t.name, t.state]));
  $("instances").replaceChildren(...o.instances.map((i) => el("div", { class: "card", "data-instance": i.name },
    el("strong", {}, i.name), el("span", { class: "muted" }, "  account " + i.account + " · " +
                                 i.healthy + " of " + i.tokens.length + " healthy"),
    el("div", {}, ...i.tokens.map((t) => el("span", {},
      el("span", { class: "dot" + (state[t] === "healthy" ? "" : " down") }), t))))));
  $("events").replaceChildren(...o.events.slice().reverse().map((e) => el("li", {},
    when(e.time) + "  " + e.token + " " + e.what)));
  if (!o.events.length) $("events").append(el("li", { class: "muted" }, "none since this worker started"));
  $("requests").tBodies[0].replaceChildren(...o.requests.map((r) => el("tr", {},
    el("td", {}, r.frontend), el("td", {}, r.instance), el("td", {}, r.operation),
    el("td", { class: "num" }, r.per_s.toFixed(1)), el("td", { class: "num" }, r.failed_per_s.toFixed(1)),
    el("td", { class: "num" }, r.total), el("td", { class: "num" }, r.failed))));
}

// --- keys ----------------------------------------------------------------------------

async function loadKeys() {
  const inst = C.instance;
  const t0 = performance.now();
  let doc;
  try {
    doc = await api("GET", "/console/api/keys?instance=" + encodeURIComponent(inst));
  } catch (e) {
    C.keys = []; C.filtered = []; C.keysInstance = inst;
    $("key-count").textContent = e.status === 403 ? "not allowed to list keys" : e.message;
    renderKeys();
    return;
  }
  if (inst !== C.instance) return;
  const t1 = performance.now();
  C.fields = Object.fromEntries(doc.fields.map((f, i) => [f, i]));
  C.keys = doc.rows;
  C.keysInstance = inst;
  fillSelect($("key-spec"), "any spec", C.keys.map((r) => r[C.fields.spec]));
  fillSelect($("key-state"), "any state", C.keys.map((r) => r[C.fields.state]));
  applyFilters();
  C.stats.keysLoadMs = performance.now() - t0;
  C.stats.keysFetchMs = t1 - t0;
}

function fillSelect(sel, label, values) {
  const keep = sel.value;
  const uniq = [...new Set(values)].sort();
  sel.replaceChildren(el("option", { value: "" }, label), ...uniq.map((v) => el("option", { value: v }, v)));
  sel.value = uniq.includes(keep) ? keep : "";
}

function applyFilters() {
  const t0 = performance.now();
  const f = C.fields;
  const q = $("key-search").value.trim().toLowerCase();
  const spec = $("key-spec").value, state = $("key-state").value;
  const due = $("key-due").checked, deleting = $("key-deleting").checked;
  const soon = Date.now() / 1000 + 30 * 86400;
  const out = [];
  const rows = C.keys;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (spec && r[f.spec] !== spec) continue;
    if (state && r[f.state] !== state) continue;
    if (due && !(r[f.next_rotation] && r[f.next_rotation] <= soon)) continue;
    if (deleting && r[f.state] !== "PendingDeletion") continue;
    if (q && !(r[f.id].includes(q) || r[f.aliases].toLowerCase().includes(q) ||
               r[f.description].toLowerCase().includes(q))) continue;
    out.push(i);
  }
  C.filtered = out;
  $("key-viewport").scrollTop = 0;
  renderKeys();
  void $("key-rows").offsetHeight;  // layout included in the figure
  const ms = performance.now() - t0;
  C.stats.keysRenderMs = ms;
  C.stats.keysCount = C.keys.length;
  C.stats.renders += 1;
  $("key-count").textContent = out.length.toLocaleString("en") + " of " +
    C.keys.length.toLocaleString("en") + " keys";
  $("key-timing").textContent = "filtered and rendered " + C.keys.length.toLocaleString("en") +
    " keys in " + ms.toFixed(1) + " ms";
}

function keyActions(r) {
  const f = C.fields, st = r[f.state], out = [];
  const b = (action, label) => el("button", { class: "small", "data-action": action,
                                             onclick: () => keyAction(r[f.id], action, label) }, label);
  if (st === "Enabled") out.push(b("disable", "Disable"));
  if (st === "Disabled") out.push(b("enable", "Enable"));
  if (st === "PendingDeletion") out.push(b("cancel-deletion", "Cancel deletion"));
  if (st === "Enabled" && r[f.rotatable]) out.push(b("rotate", "Rotate"));
  return el("span", { class: "actions" }, ...out);
}

function renderKeys() {
  const vp = $("key-viewport");
  const n = C.filtered.length;
  $("key-spacer").style.height = (n * ROW_H) + "px";
  const first = Math.max(0, Math.floor(vp.scrollTop / ROW_H) - 5);
  const last = Math.min(n, first + Math.ceil((vp.clientHeight || 560) / ROW_H) + 10);
  const f = C.fields;
  const rows = [];
  for (let k = first; k < last; k++) {
    const r = C.keys[C.filtered[k]];
    rows.push(el("div", { class: "keyrow", "data-key-id": r[f.id] },
      el("span", { class: "mono" }, r[f.id]), el("span", { class: "aliases" }, r[f.aliases]),
      el("span", {}, r[f.spec]), el("span", {}, r[f.usage]),
      el("span", { class: "state " + r[f.state], "data-state": r[f.state] }, r[f.state]),
      el("span", {}, day(r[f.next_rotation])), el("span", {}, day(r[f.deletion])),
      el("span", { title: r[f.description] }, r[f.description]), keyActions(r)));
  }
  const box = $("key-rows");
  box.style.transform = "translateY(" + (first * ROW_H) + "px)";
  box.replaceChildren(...rows);
}

async function keyAction(keyId, action, label) {
  const ok = await confirmStep(label + " key " + keyId + " in instance " + C.instance + "?");
  if (!ok) return;
  try {
    const doc = await api("POST", "/console/api/keys/action",
                          { instance: C.instance, key_id: keyId, action });
    const i = C.keys.findIndex((r) => r[C.fields.id] === keyId);
    if (i >= 0) C.keys[i] = doc.row;
    renderKeys();
    toast(label + ": done (" + doc.row[C.fields.state] + ")");
  } catch (e) { toast(label + " failed: " + e.message); }
}

// --- secrets and audit ---------------------------------------------------------------

async function refreshSecrets() {
  let doc;
  try { doc = await api("GET", "/console/api/secrets?instance=" + encodeURIComponent(C.instance)); }
  catch (e) { $("secrets-none").textContent = e.message; return; }
  const none = $("secrets-none"), some = doc.available && doc.secrets.length > 0;
  none.textContent = doc.available ? "No secrets in this instance yet."
    : "Your policies do not let you list this instance's secrets.";
  none.hidden = some;
  $("secrets").hidden = !some;
  $("secrets").tBodies[0].replaceChildren(...doc.secrets.map((s) => el("tr", {},
    el("td", {}, s.name), el("td", {}, s.stages.join(", ")),
    el("td", {}, s.rotation_enabled ? "on" : "off"), el("td", {}, when(s.last_rotated)),
    el("td", {}, when(s.next_rotation)), el("td", { class: "num" }, s.rotation_failures),
    el("td", {}, s.last_rotation_error || ""), el("td", {}, day(s.deletion_date)))));
}

async function refreshAudit() {
  let doc;
  try { doc = await api("GET", "/console/api/audit?n=100&instance=" + encodeURIComponent(C.instance)); }
  catch (e) { $("audit-state").textContent = e.message; return; }
  const v = doc.verification, banner = $("audit-state");
  if (!v.enabled) { banner.textContent = "This server keeps no audit trail."; banner.className = "banner"; }
  else if (v.ok === null) { banner.textContent = "Verifying the audit chains…"; banner.className = "banner"; }
  else {
    let text = (v.ok ? "✓ Every audit chain verified" : "✗ The audit chains have problems") +
      " (checked " + when(v.checked) + " UTC";
    if (v.records !== undefined) text += ", " + v.records + " records in " + v.segments + " segments";
    text += ")";
    if (v.problems && v.problems.length) text += ": " + v.problems.join("; ");
    banner.textContent = text;
    banner.className = "banner " + (v.ok ? "ok" : "bad");
  }
  if (doc.own_records_only) banner.textContent += " · showing your own records";
  $("audit").tBodies[0].replaceChildren(...doc.records.slice().reverse().map((r) => el("tr", {},
    el("td", {}, when(r.time)), el("td", {}, r.instance), el("td", {}, r.principal),
    el("td", {}, r.action), el("td", { class: "mono" }, r.key || ""),
    el("td", { class: "mono" }, r.version ? r.version.slice(0, 8) : ""),
    el("td", { class: r.result === "ok" ? "ok-text" : "bad-text" }, r.result),
    el("td", { class: "mono" }, r.request), el("td", { class: "mono" }, r.segment + ":" + r.seq))));
}

async function verifyAudit() {
  if (!(await confirmStep("Verify every audit chain now?"))) return;
  try { await api("POST", "/console/api/audit/verify", {}); toast("verification started"); }
  catch (e) { toast(e.message); }
}

// --- start ---------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("instance").addEventListener("change", (e) => {
    C.instance = e.target.value; C.keysInstance = null; showTab(C.tab);
  });
  let pending = null;
  $("key-search").addEventListener("input", () => {
    clearTimeout(pending); pending = setTimeout(applyFilters, 80);
  });
  for (const id of ["key-spec", "key-state", "key-due", "key-deleting"]) $(id).addEventListener("change", applyFilters);
  $("key-refresh").addEventListener("click", loadKeys);
  let frame = 0;
  $("key-viewport").addEventListener("scroll", () => {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderKeys(); });
  });
  $("audit-verify").addEventListener("click", verifyAudit);
  try {
    const s = await api("GET", "/console/api/session");
    if (s && s.signed_in) { C.session = s; startApp(); return; }
  } catch (e) { /* not signed in */ }
  showSignIn();
});
