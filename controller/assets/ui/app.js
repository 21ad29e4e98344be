// The conductor dashboard: a client of the REST API, like any other.
//
// Rules this file keeps:
// - every value from the API reaches the page through textContent (the `el` helper),
//   never as HTML: an event message or a parameter holding <script> stays text;
// - the token is asked once and kept in sessionStorage (this tab, this session), and every
//   API call sends it; the event stream is read with fetch + ReadableStream because
//   EventSource cannot send an Authorization header;
// - a token that may not write sees no write control: GET /api/whoami says the caller's
//   scopes, nothing is tried and refused to find out;
// - parameters are written with If-Match (the version they were loaded at): a concurrent
//   change answers 412 and is shown, never overwritten; a plan is previewed before apply.
import { dump as dumpYaml, load as parseYaml } from "./js-yaml.min.mjs";

const TOKEN_KEY = "conductor.token";
const SERVICES_EVERY = 2000;
const INSTANCES_EVERY = 5000;
const HISTORY_EVERY = 5000;
const MAX_EVENTS = 300;
const STREAM_RETRY = 2000;

const $ = (id) => document.getElementById(id);
// YAML as a person edits it: long strings stay on one line (no folding).
const toYaml = (value) => dumpYaml(value, { lineWidth: -1 });

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  canWrite: false,
  instance: "",          // the selected DeploymentParameters object
  defaultInstance: "",   // the controller's own
  version: "",           // the parameters' ETag as loaded into the editor
  previewed: null,       // the editor text the last plan was made of
  history: [],
  services: new Map(),   // name -> row parts, updated in place
  stream: null,          // AbortController of the running event stream
  lastEventId: "",
  timers: [],
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.code = this.body.error || "";
  }
}

// An element with text (never HTML), attributes and children.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (key === "data") Object.assign(node.dataset, value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function instanceQuery(extra = {}) {
  const q = { ...extra };
  if (state.instance && state.instance !== state.defaultInstance) q.instance = state.instance;
  return q;
}

async function api(method, path, { body, query, headers, probe } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== "") url.searchParams.set(k, v);
  }
  const h = { Accept: "application/json", ...(headers || {}) };
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const resp = await fetch(url, {
    method, headers: h, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text.slice(0, 300) }; }
  }
  if (resp.status === 401 && !probe) signIn("the token was refused: " + ((data && data.message) || ""));
  if (!resp.ok) throw new ApiError(resp.status, data);
  return { data, headers: resp.headers, status: resp.status };
}

function notice(text, isError = false) {
  const n = $("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
}

function failed(what) {
  return (e) => notice(`${what}: ${e.message}${e.code ? ` (${e.code})` : ""}`, true);
}

// --- sign in ---------------------------------------------------------------------------

function signIn(message = "") {
  stopAll();
  $("main").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

function stopAll() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  if (state.stream) state.stream.abort();
  state.stream = null;
}

async function start() {
  $("login").hidden = true;
  let status;
  try {
    status = (await api("GET", "/api/status")).data;
  } catch (e) {
    if (e.status !== 401) signIn(`cannot reach the API: ${e.message}`);
    return;
  }
  state.defaultInstance = status.instance;
  // A token limited to other instances gets no `instance` (the controller's own) in the
  // status, only its own instances: start on the first of them.
  const own = (status.instances || [])[0];
  state.instance = state.instance || status.instance || (own ? own.name : undefined);
  $("app-name").textContent = `${status.app || ""} · ${status.namespace || ""}`;
  state.canWrite = await probeWrite();
  $("who").textContent = state.canWrite ? "read and write" : "read-only";
  if (!state.canWrite) for (const node of document.querySelectorAll("[data-write]")) node.remove();
  $("signout").hidden = !state.token;
  $("main").hidden = false;
  $("params-view").hidden = state.canWrite;
  refreshInstances(status);
  refreshServices();
  loadParameters();
  refreshHistory();
  startStream();
  state.timers.push(setInterval(refreshServices, SERVICES_EVERY));
  state.timers.push(setInterval(() => refreshInstances(), INSTANCES_EVERY));
  state.timers.push(setInterval(refreshHistory, HISTORY_EVERY));
}

async function probeWrite() {
  try {
    // The caller's scopes as the server sees them ("write" with auth off, "read" for public
    // reads without a token). A 401 here only says "no write": not a sign-in.
    const me = (await api("GET", "/api/whoami", { probe: true })).data;
    return Boolean(me && Array.isArray(me.scopes) && me.scopes.includes("write"));
  } catch (e) {
    return false;
  }
}

// --- instances -------------------------------------------------------------------------

async function refreshInstances(status) {
  try {
    if (!status) status = (await api("GET", "/api/status")).data;
    const { instances } = (await api("GET", "/api/parameters/instances")).data;
    const suspended = await Promise.all(instances.map((i) =>
      api("GET", "/api/parameters", { query: i.default ? {} : { instance: i.name } })
        .then((r) => Boolean(r.data && r.data.suspend), () => null)));
    const rows = instances.map((inst, n) => {
      const last = inst.name === status.instance && status.lastPass
        ? `${status.lastPass.result} · ${status.lastPass.time} · ${status.lastPass.operation}` : "";
      return el("tr", {
        class: inst.name === state.instance ? "selected" : "",
        data: { instance: inst.name },
        on: { click: () => selectInstance(inst.name) },
      },
      el("td", { text: inst.name + (inst.default ? " (this controller)" : "") }),
      el("td", {}, el("span", { class: `badge ready-${inst.ready}`, text: inst.ready })),
      el("td", { text: inst.lastAppliedRevision || "" }),
      el("td", { text: suspended[n] === null ? "?" : suspended[n] ? "yes" : "no" }),
      el("td", { text: last }));
    });
    $("instances").tBodies[0].replaceChildren(...rows);
  } catch (e) { failed("instances")(e); }
}

function selectInstance(name) {
  if (name === state.instance) return;
  state.instance = name;
  state.services.clear();
  $("services").tBodies[0].replaceChildren();
  $("plan").replaceChildren();
  $("rollback-plan").replaceChildren();
  refreshInstances();
  refreshServices();
  loadParameters();
  refreshHistory();
}

// --- services --------------------------------------------------------------------------

async function refreshServices() {
  $("instance-name").textContent = state.instance;
  let services;
  try {
    services = (await api("GET", "/api/services/health", { query: instanceQuery() })).data.services;
  } catch (e) { failed("service health")(e); return; }
  const body = $("services").tBodies[0];
  for (const s of services) {
    let row = state.services.get(s.name);
    if (!row) {
      row = {
        tr: el("tr", { data: { service: s.name } }),
        status: el("span", { class: "badge" }),
        reason: el("td", { class: "reason" }),
        hint: el("td", { class: "hint" }),
        objects: el("ul", { class: "objects" }),
      };
      row.tr.append(el("td", { text: s.name }), el("td", {}, row.status), row.reason, row.hint,
        el("td", {}, row.objects));
      if (state.canWrite) {
        row.tr.append(el("td", {}, el("div", { class: "row-actions" }, ...["up", "update", "down"].map(
          (op) => el("button", { type: "button", text: op, data: { op },
                                 on: { click: () => deploy(op, s.name) } })))));
      }
      state.services.set(s.name, row);
      body.append(row.tr);
    }
    row.tr.dataset.status = s.status;
    row.status.textContent = s.status;
    row.status.className = `badge status-${s.status}`;
    row.reason.textContent = s.reason || "";
    row.hint.textContent = s.hint || "";
    row.objects.replaceChildren(...(s.objects || []).map((o) =>
      el("li", { text: `${o.resource}: ${o.status} ${o.reason || ""} ${o.message || ""}`.trim() })));
  }
}

async function deploy(op, service) {
  const what = op === "down" ? `Remove every object of ${service} (down)?`
    : `Run ${op} for ${service} in ${state.instance}?`;
  if (!(await confirmAction(what))) return;
  notice(`${op} ${service}: running…`);
  try {
    const { data, status } = await api("POST", `/api/${op}`,
      { body: { services: [service] }, query: instanceQuery() });
    notice(status === 202 ? data.message : `${op} ${service}: ${data.message}`);
  } catch (e) { failed(`${op} ${service}`)(e); }
  refreshServices();
}

async function suspend(on) {
  const verb = on ? "suspend" : "resume";
  if (!(await confirmAction(`${verb} ${state.instance}?`))) return;
  try {
    const { data } = await api("POST", `/api/${verb}`, { query: instanceQuery() });
    notice(data.message);
  } catch (e) { failed(verb)(e); }
  refreshInstances();
}

function confirmAction(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (answer) => () => {
      $("confirm-ok").onclick = $("confirm-cancel").onclick = dialog.oncancel = null;
      dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = done(true);
    $("confirm-cancel").onclick = dialog.oncancel = done(false);
    dialog.showModal();
  });
}

// --- parameters ------------------------------------------------------------------------

function editable(spec) {
  // A replace (POST) takes global and services; suspend and ignore are kept by the server.
  const out = {};
  for (const key of ["global", "services"]) if (spec && spec[key] !== undefined) out[key] = spec[key];
  return out;
}

async function loadParameters() {
  $("params-conflict") && ($("params-conflict").hidden = true);
  try {
    const { data, headers } = await api("GET", "/api/parameters", { query: instanceQuery() });
    state.version = headers.get("ETag") || "";
    $("params-version").textContent = state.version ? `version ${state.version}` : "";
    $("params-view").textContent = toYaml(data || {});
    if (state.canWrite) {
      $("params-text").value = toYaml(editable(data));
      state.previewed = null;
      $("params-apply").disabled = true;
    }
  } catch (e) { failed("parameters")(e); }
}

function draft() {
  let doc;
  try { doc = parseYaml($("params-text").value); } catch (e) {
    throw new ApiError(400, { error: "invalid_yaml", message: `not valid YAML: ${e.message}` });
  }
  if (!doc || typeof doc !== "object" || Array.isArray(doc)) {
    throw new ApiError(400, { error: "invalid_yaml", message: "the parameters must be a mapping (global, services)" });
  }
  return doc;
}

async function previewParameters() {
  const text = $("params-text").value;
  $("params-apply").disabled = true;
  try {
    const { data } = await api("POST", "/api/plan", { body: { parameters: draft() }, query: instanceQuery() });
    renderPlan($("plan"), data, "Plan of the edited parameters");
    const loaded = state.version.replace(/^W\//, "").replace(/"/g, "");
    if (data.basedOn && loaded && data.basedOn !== loaded) {
      // Planned against newer parameters than the editor holds: applying would answer 412.
      showConflict({ body: { details: { current: data.basedOn } } });
      return;
    }
    state.previewed = text;
    $("params-apply").disabled = false;
  } catch (e) {
    $("plan").replaceChildren(el("p", { class: "error", text: `Plan failed: ${e.message}` }));
  }
}

async function applyParameters() {
  if (state.previewed !== $("params-text").value) return;
  if (!(await confirmAction(`Apply these parameters to ${state.instance}?`))) return;
  const headers = state.version ? { "If-Match": state.version } : {};
  try {
    const { data } = await api("POST", "/api/parameters",
      { body: draft(), query: instanceQuery(), headers });
    notice(`${data.message} (${data.revision || ""})`);
    $("plan").replaceChildren();
    await loadParameters();
    refreshHistory();
  } catch (e) {
    if (e.status === 412 || e.code === "precondition_failed" || e.code === "conflict") showConflict(e);
    else failed("apply")(e);
  }
}

function showConflict(e) {
  const current = e.body && e.body.details && e.body.details.current;
  $("params-conflict-text").textContent = "The parameters changed since you loaded them"
    + (current ? ` (now version ${current})` : "") + ". Nothing was written: reload, then edit again.";
  $("params-conflict").hidden = false;
  $("params-apply").disabled = true;
}

function renderPlan(target, plan, title) {
  const counts = Object.entries(plan.counts || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  const head = el("p", { class: "plan-summary", text:
    `${title}: ${counts || "no change"}${plan.basedOn ? ` · based on ${plan.basedOn}` : ""}`
    + `${plan.planId ? ` · plan ${plan.planId}` : ""}` });
  const changes = (plan.changes || []).filter((c) => c.action !== "unchanged" && c.action !== "noop");
  target.replaceChildren(head, ...changes.map((c) => el("div", { class: "change", data: { resource: c.resource } },
    el("div", { text: `${c.action} ${c.resource} (${c.service || "shared"})${c.reason ? `: ${c.reason}` : ""}` }),
    c.error ? el("div", { class: "error", text: JSON.stringify(c.error) }) : null,
    c.diff ? diffView(c.diff) : null)));
}

function diffView(text) {
  const pre = el("pre", { class: "diff" });
  for (const line of text.split("\n")) {
    const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") && !line.startsWith("+++") ? "add"
      : line.startsWith("-") && !line.startsWith("---") ? "del" : "ctx";
    pre.append(el("span", { class: kind, text: line || " " }));
  }
  return pre;
}

// --- history ---------------------------------------------------------------------------

async function refreshHistory() {
  try {
    const { history } = (await api("GET", "/api/parameters/history",
      { query: instanceQuery({ limit: "20" }) })).data;
    state.history = history;
    $("history").tBodies[0].replaceChildren(...history.map((h) => el("tr", { data: { revision: h.revision } },
      el("td", { text: h.revision }), el("td", { text: h.timestamp }), el("td", { text: h.source }),
      el("td", { text: h.applied === null || h.applied === undefined ? "?" : h.applied ? "yes" : "no" }),
      state.canWrite ? el("td", {}, el("button", { type: "button", text: "Preview rollback",
        data: { action: "preview-rollback" }, on: { click: () => previewRollback(h) } })) : null)));
  } catch (e) { failed("history")(e); }
}

async function previewRollback(entry) {
  const target = $("rollback-plan");
  try {
    const { data } = await api("POST", "/api/plan",
      { body: { parameters: editable(entry.parameters) }, query: instanceQuery() });
    renderPlan(target, data, `Rollback to ${entry.revision}`);
    target.append(el("div", { class: "actions" },
      el("button", { type: "button", text: `Roll back to ${entry.revision}`, data: { action: "rollback" },
        on: { click: () => rollback(entry.revision) } }),
      el("button", { type: "button", text: "Cancel", on: { click: () => target.replaceChildren() } })));
  } catch (e) {
    target.replaceChildren(el("p", { class: "error", text: `Plan failed: ${e.message}` }));
  }
}

async function rollback(revision) {
  if (!(await confirmAction(`Roll ${state.instance} back to ${revision}?`))) return;
  const headers = state.version ? { "If-Match": state.version } : {};
  try {
    const { data } = await api("POST", "/api/parameters/rollback",
      { body: { revision }, query: instanceQuery(), headers });
    notice(data.message);
    $("rollback-plan").replaceChildren();
    await loadParameters();
    refreshHistory();
  } catch (e) {
    if (e.status === 412 || e.code === "precondition_failed") showConflict(e);
    else failed("rollback")(e);
  }
}

// --- the event stream ------------------------------------------------------------------

function filters() {
  return { type: $("ev-type").value, service: $("ev-service").value.trim(),
           resource: $("ev-resource").value.trim() };
}

function restartStream() {
  state.lastEventId = "";
  $("events").replaceChildren();
  startStream();
}

function startStream() {
  if (state.stream) state.stream.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  readStream(ctrl.signal, filters());
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

async function readStream(signal, query) {
  while (!signal.aborted) {
    const url = new URL("/api/events/stream", location.origin);
    for (const [k, v] of Object.entries({ ...query, limit: "50", duration: "300",
                                          lastEventId: state.lastEventId })) {
      if (v) url.searchParams.set(k, v);
    }
    const headers = { Accept: "text/event-stream" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    try {
      const resp = await fetch(url, { headers, signal, cache: "no-store" });
      if (resp.status === 401) { signIn("the token was refused"); return; }
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        $("ev-state").textContent = `stream refused: ${body.message || resp.status}`;
      } else {
        $("ev-state").textContent = "live";
        await consume(resp.body, signal);
      }
    } catch (e) {
      if (signal.aborted) return;
    }
    if (signal.aborted) return;
    $("ev-state").textContent = "reconnecting…";
    await sleep(STREAM_RETRY, signal);
  }
}

async function consume(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done || signal.aborted) return;  // a stream replaced by new filters adds nothing
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = "";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue;  // a comment or a keep-alive
      if (id) state.lastEventId = id;
      try { addEvent(JSON.parse(data.join("\n"))); } catch { /* not an event: skip it */ }
    }
  }
}

function addEvent(ev) {
  const list = $("events");
  const row = el("li", { data: { type: ev.type, reason: ev.reason || "", service: ev.service || "",
                                 resource: ev.resource || "", id: ev.id } },
    el("span", { class: "time", text: ev.timestamp }),
    el("span", {}, el("span", { class: `badge type-${ev.type}`, text: ev.type })),
    el("span", { class: "service", text: ev.service || "" }),
    el("span", { class: "resource", text: `${ev.resource || ""} ${ev.reason || ""}`.trim() }),
    el("span", { class: "message", text: ev.message || "" }));
  list.prepend(row);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// --- wiring ----------------------------------------------------------------------------

function wire() {
  const login = () => {
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    location.reload();  // a fresh page for the new token (its write controls included)
  };
  $("login-button").addEventListener("click", login);
  $("token").addEventListener("keydown", (e) => { if (e.key === "Enter") login(); });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  $("suspend").addEventListener("click", () => suspend(true));
  $("resume").addEventListener("click", () => suspend(false));
  $("params-reload").addEventListener("click", loadParameters);
  $("params-conflict-reload").addEventListener("click", loadParameters);
  $("params-preview").addEventListener("click", previewParameters);
  $("params-apply").addEventListener("click", applyParameters);
  $("params-text").addEventListener("input", () => {
    $("params-apply").disabled = state.previewed !== $("params-text").value;
  });
  let typing;
  const refilter = () => { clearTimeout(typing); typing = setTimeout(restartStream, 300); };
  $("ev-type").addEventListener("change", restartStream);
  $("ev-service").addEventListener("input", refilter);
  $("ev-resource").addEventListener("input", refilter);
  $("ev-errors").addEventListener("click", () => { $("ev-type").value = "error,warning"; restartStream(); });
  $("ev-all").addEventListener("click", () => {
    $("ev-type").value = "";
    $("ev-service").value = "";
    $("ev-resource").value = "";
    restartStream();
  });
}

wire();
start();
