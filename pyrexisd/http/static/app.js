// The PYREXIS dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
// It reads the HTTP API and stays live through Server-Sent Events (read with fetch, so
// that a token can go in the Authorization header, which EventSource cannot send).
// Lists are capped: at most MAX_ROWS running jobs are drawn, whatever their number, and
// the drawing happens at most once per animation frame, so 1,000 running jobs reporting
// progress cost the page the same as 100.
"use strict";

const MAX_ROWS = 100;          // running jobs drawn
const MAX_RUNNING = 10000;     // running jobs fetched at a resync
const MAX_LOG_LINES = 500;     // lines kept in a job page's log tail
const MAX_OUTPUTS = 200;       // outputs kept on a job page
const FAILURES = 20;           // recent failures shown
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

const $ = (sel) => document.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
};

// -- the API -----------------------------------------------------------------------------
let token = sessionStorage.getItem("pyrexis-token") || "";

class ApiError extends Error {
  constructor(status, error) {
    super(error ? `${error.code}: ${error.message}` : `HTTP ${status}`);
    this.status = status;
    this.error = error;
  }
}

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, data && data.error);
    if (response.status === 401) notice("This listener needs a token: use the token… button.");
    throw error;
  }
  return data;
}

// A Server-Sent Events stream read with fetch. onEvent(kind, data, id) for each event;
// onEnd(final) once: the "end" event's data ({ok, result} or {ok: false, error}), or
// null when the stream broke off. Returns {close()}.
function sse(path, onEvent, onEnd) {
  const abort = new AbortController();
  let ended = false;
  const finish = (final) => { if (!ended) { ended = true; onEnd(final); } };
  (async () => {
    const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal: abort.signal });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      finish({ ok: false, error: data && data.error, status: response.status });
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let kind = "message", data = "", id = null;
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
          else if (line.startsWith("id: ")) id = line.slice(4);
        }
        if (!data) continue;  // a keep-alive comment
        const parsed = JSON.parse(data);
        if (kind === "end") finish(parsed);
        else onEvent(kind, parsed, id);
      }
    }
    finish(null);
  })().catch(() => { if (!abort.signal.aborted) finish(null); });
  return { close: () => { ended = true; abort.abort(); } };
}

// -- small helpers -----------------------------------------------------------------------
function notice(text) {
  const box = $("#notice");
  box.textContent = text;
  box.hidden = !text;
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleTimeString() : "";
}

function pretty(value) {
  return value === null || value === undefined ? "" : JSON.stringify(value, null, 2);
}

function throttle(fn, ms) {
  let timer = null, again = false;
  const run = () => {
    timer = setTimeout(() => { timer = null; if (again) { again = false; run(); } }, ms);
    fn();
  };
  return () => { if (timer) again = true; else run(); };
}

function jobLink(id) {
  return el("a", { href: `#/job/${encodeURIComponent(id)}`, className: "id", textContent: id, title: id });
}

function setProgress(box, fraction, message) {
  const pct = fraction === null || fraction === undefined ? 0 : Math.max(0, Math.min(1, fraction)) * 100;
  box.querySelector(".bar").style.width = `${pct}%`;
  box.dataset.fraction = fraction === null || fraction === undefined ? "" : String(fraction);
  box.querySelector(".label").textContent =
    (fraction === null || fraction === undefined ? "" : `${Math.round(pct)}%`) + (message ? ` ${message}` : "");
}

function progressBox() {
  return el("div", { className: "progress" }, el("div", { className: "bar" }), el("span", { className: "label" }));
}

async function act(button, method, path, body) {
  button.disabled = true;
  try {
    const out = await api(method, path, body);
    notice("");
    return out;
  } catch (error) {
    notice(error.message);
    return null;
  } finally {
    button.disabled = false;
  }
}

// -- the overview ------------------------------------------------------------------------
const running = new Map();  // job_id -> {job_id, task, queue, started_at, fraction, message}
let lastByQueue = null;       // stats.by_queue at the previous poll, for throughput
let throughput = {};          // queue -> completed per minute
let drawPending = false;

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawRunning(); });
}

function drawRunning() {
  const jobs = [...running.values()].sort((a, b) => (a.started_at || 0) - (b.started_at || 0));
  const shown = jobs.slice(0, MAX_ROWS);
  const box = $("#running");
  const rows = new Map([...box.children].map((row) => [row.dataset.id, row]));
  const keep = new Set();
  let previous = null;
  for (const job of shown) {
    keep.add(job.job_id);
    let row = rows.get(job.job_id);
    if (!row) {
      const cancel = el("button", { type: "button", className: "danger", textContent: "Cancel" });
      cancel.addEventListener("click", () => act(cancel, "DELETE", `/jobs/${encodeURIComponent(job.job_id)}`));
      row = el("div", { className: "row" }, jobLink(job.job_id), el("span", { className: "task" }),
        el("span", { className: "queue muted" }), progressBox(), cancel);
      row.dataset.id = job.job_id;
    }
    row.querySelector(".task").textContent = job.task || "";
    row.querySelector(".queue").textContent = job.queue || "";
    setProgress(row.querySelector(".progress"), job.fraction, job.message);
    if (row.previousElementSibling !== previous || row.parentNode !== box) {
      if (previous) previous.after(row); else box.prepend(row);
    }
    previous = row;
  }
  for (const [id, row] of rows) if (!keep.has(id)) row.remove();
  $("#running-count").textContent = `(${running.size})`;
  const more = $("#running-more");
  more.hidden = running.size <= MAX_ROWS;
  more.textContent = `and ${running.size - MAX_ROWS} more (the oldest ${MAX_ROWS} are shown)`;
}

async function loadRunning() {
  const fresh = new Map();
  let after = null;
  do {
    const query = new URLSearchParams({ status: "running", limit: "1000" });
    if (after) query.set("after", after);
    const page = await api("GET", `/jobs?${query}`);
    for (const job of page.jobs) {
      const known = running.get(job.job_id);
      fresh.set(job.job_id, {
        job_id: job.job_id, task: job.task, queue: job.queue, started_at: job.started_at,
        fraction: known ? known.fraction : job.progress && job.progress.fraction,
        message: known ? known.message : job.progress && job.progress.message,
      });
    }
    after = page.next;
  } while (after && fresh.size < MAX_RUNNING);
  running.clear();
  for (const [id, job] of fresh) running.set(id, job);
  scheduleDraw();
}

async function loadQueues() {
  const [stats, queues] = await Promise.all([api("GET", "/stats"), api("GET", "/queues")]);
  const by = stats.by_status || {};
  const counts = Object.entries(by).filter(([s]) => s !== "running").map(([s, n]) => `${n} ${s}`);
  $("#stats").textContent = [`up ${Math.round(stats.uptime)} s`, `${by.running || 0} running`, ...counts,
    `${stats.completed_per_s.toFixed(1)} completed/s`].join(" · ");
  const now = Date.now() / 1000;
  if (lastByQueue) {
    const dt = Math.max(1e-3, now - lastByQueue.at);
    for (const [queue, counts] of Object.entries(stats.by_queue)) {
      const before = (lastByQueue.counts[queue] || {}).completed || 0;
      const rate = ((counts.completed || 0) - before) / dt * 60;
      throughput[queue] = throughput[queue] === undefined ? rate : 0.5 * throughput[queue] + 0.5 * rate;
    }
  }
  lastByQueue = { at: now, counts: stats.by_queue };
  const body = $("#queues tbody");
  body.replaceChildren(...queues.queues.map((q) => {
    const toggle = el("button", { type: "button", textContent: q.paused ? "Resume" : "Pause" });
    toggle.dataset.queue = q.queue;
    toggle.addEventListener("click", async () => {
      if (await act(toggle, "PATCH", `/queues/${encodeURIComponent(q.queue)}`, { paused: !q.paused })) refreshQueues();
    });
    return el("tr", {},
      el("td", { textContent: q.queue }),
      el("td", { className: "num", textContent: q.waiting }),
      el("td", { className: "num", textContent: q.running }),
      el("td", { className: "num", textContent: (throughput[q.queue] || 0).toFixed(1) }),
      el("td", {}, el("span", { className: `badge ${q.paused ? "paused" : "on"}`, textContent: q.paused ? "paused" : "active" })),
      el("td", {}, toggle));
  }));
}

async function loadFailures() {
  const page = await api("GET", `/jobs?status=failed&newest_first=true&limit=${FAILURES}`);
  $("#failures tbody").replaceChildren(...page.jobs.map((job) => {
    const retry = el("button", { type: "button", textContent: "Retry" });
    retry.addEventListener("click", async () => {
      if (await act(retry, "POST", `/jobs/${encodeURIComponent(job.job_id)}/retry`)) refreshFailures();
    });
    const error = job.error ? `${job.error.type}: ${job.error.message}` : "";
    return el("tr", {}, el("td", {}, jobLink(job.job_id)), el("td", { textContent: job.task }),
      el("td", { textContent: error }), el("td", { textContent: when(job.finished_at) }), el("td", {}, retry));
  }));
}

const quietly = (fn) => () => fn().catch((error) => notice(error.message));
const refreshQueues = throttle(quietly(loadQueues), 1000);
const refreshFailures = throttle(quietly(loadFailures), 1000);
const resyncRunning = throttle(quietly(loadRunning), 2000);

let events = null;

function watchAll() {
  if (events) events.close();
  const live = $("#live");
  events = sse("/events?kind=state&kind=progress", (kind, event) => {
    live.className = "badge on";
    live.textContent = "live";
    if (kind === "progress") {
      const job = running.get(event.job_id);
      if (job) {
        if (event.fraction !== undefined) job.fraction = event.fraction;
        if (event.message !== undefined) job.message = event.message;
        scheduleDraw();
      }
    } else if (kind === "state") {
      if (event.status === "running") {
        if (!running.has(event.job_id)) {
          running.set(event.job_id, { job_id: event.job_id, started_at: event.time, fraction: null, message: "" });
          resyncRunning();  // its task and queue
        }
      } else if (running.delete(event.job_id)) {
        if (event.status === "failed") refreshFailures();
      } else if (event.status === "failed") {
        refreshFailures();
      }
      scheduleDraw();
      refreshQueues();
    }
  }, () => {
    live.className = "badge off";
    live.textContent = "reconnecting";
    events = null;
    // The stream ended (the daemon stopped, or this page fell behind): start again.
    setTimeout(() => { if (route() === "overview") { watchAll(); resyncRunning(); } }, 1000);
  });
  live.className = "badge on";
  live.textContent = "live";
}

// -- the submit form, generated from the task's JSON Schema ------------------------------
let tasks = [];

function argField(name, schema, required) {
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  const title = `${name}${required ? " *" : ""}`;
  let input;
  if (schema.enum) {
    input = el("select", {}, ...schema.enum.map((v) => el("option", { value: JSON.stringify(v), textContent: String(v) })));
    input.dataset.kind = "json";
  } else if (type === "boolean") {
    input = el("input", { type: "checkbox", checked: schema.default === true });
    input.dataset.kind = "boolean";
  } else if (type === "integer" || type === "number") {
    input = el("input", { type: "number", step: type === "integer" ? "1" : "any" });
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    if (schema.default !== undefined) input.placeholder = String(schema.default);
    input.dataset.kind = type;
  } else if (type === "string") {
    input = el("input", { type: "text", placeholder: schema.default !== undefined ? String(schema.default) : "" });
    input.dataset.kind = "string";
  } else {
    input = el("textarea", { placeholder: "JSON" + (schema.default !== undefined ? ` (default ${JSON.stringify(schema.default)})` : "") });
    input.dataset.kind = "json";
  }
  input.name = name;
  input.id = `arg-${name}`;
  input.required = required && type !== "boolean";
  return el("label", { title: schema.description || "" }, `${title} `, input);
}

function showTaskForm() {
  const task = tasks.find((t) => t.name === $("#submit-task").value);
  const box = $("#submit-args");
  box.replaceChildren(el("legend", { textContent: "args" }));
  $("#submit-description").textContent = task ? task.description || "" : "";
  if (!task) return;
  const schema = task.schema || {};
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    box.append(argField(name, prop, required.has(name)));
  }
}

function formArgs() {
  const args = {};
  for (const input of $("#submit-args").querySelectorAll("input, select, textarea")) {
    const kind = input.dataset.kind;
    if (kind === "boolean") { args[input.name] = input.checked; continue; }
    if (input.value === "") continue;
    if (kind === "integer") args[input.name] = parseInt(input.value, 10);
    else if (kind === "number") args[input.name] = parseFloat(input.value);
    else if (kind === "string") args[input.name] = input.value;
    else {
      try { args[input.name] = JSON.parse(input.value); }
      catch { throw new Error(`${input.name}: not valid JSON`); }
    }
  }
  return args;
}

async function loadTasks() {
  tasks = (await api("GET", "/tasks")).tasks;
  const select = $("#submit-task");
  const chosen = select.value;
  select.replaceChildren(...tasks.map((t) => el("option", { value: t.name, textContent: t.name })));
  if (chosen && tasks.some((t) => t.name === chosen)) select.value = chosen;
  showTaskForm();
}

async function submitForm(event) {
  event.preventDefault();
  const result = $("#submit-result");
  let spec;
  try {
    spec = { task: $("#submit-task").value, args: formArgs() };
  } catch (error) {
    result.textContent = error.message;
    return;
  }
  if ($("#submit-queue").value) spec.queue = $("#submit-queue").value;
  if ($("#submit-priority").value) spec.priority = parseInt($("#submit-priority").value, 10);
  const job = await act($("#submit-button"), "POST", "/jobs", spec);
  if (job) {
    result.replaceChildren("submitted ", jobLink(job.job_id));
    location.hash = `#/job/${encodeURIComponent(job.job_id)}`;
  }
}

// -- a job's page --------------------------------------------------------------------------
let jobStreams = [];

function closeJobStreams() {
  for (const stream of jobStreams) stream.close();
  jobStreams = [];
}

function showRecord(job) {
  $("#job-status").textContent = job.status;
  $("#job-status").className = `status ${job.status}`;
  const fields = ["task", "queue", "mode", "priority", "attempts", "max_retries", "created_at", "started_at",
    "finished_at", "run_at", "args", "error", "labels", "depends_on", "owner"];
  $("#job-record tbody").replaceChildren(...fields.map((name) => {
    const value = job[name];
    const text = name.endsWith("_at") ? (value ? `${when(value)} (${value})` : "") :
      typeof value === "object" && value !== null ? JSON.stringify(value) : value === null ? "" : String(value);
    return el("tr", {}, el("td", { textContent: name }), el("td", { textContent: text }));
  }));
  $("#job-result").textContent = job.status === "completed" ? pretty(job.result) : job.error ? pretty(job.error) : "";
  const progress = $("#job-progress");
  if (job.status === "completed") setProgress(progress, 1, "");
  else if (job.progress) setProgress(progress, job.progress.fraction, job.progress.message);
  else if (job.status !== "running") setProgress(progress, null, "");
  $("#job-cancel").hidden = TERMINAL.has(job.status);
  $("#job-retry").hidden = !(job.status === "failed" || job.status === "cancelled");
}

function appendLog(line) {
  const log = $("#job-log");
  log.append(`${line.stream === "stderr" ? "! " : ""}${line.line}\n`);
  while (log.childNodes.length > MAX_LOG_LINES) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}

const outputs = new Map();

function showOutputs() {
  const items = [...outputs.values()].sort((a, b) => a.seq - b.seq).slice(-MAX_OUTPUTS);
  $("#job-outputs").textContent = items.map((o) => JSON.stringify(o.value)).join("\n");
  $("#job-outputs-count").textContent = outputs.size ? `(${outputs.size})` : "";
}

async function openJob(id) {
  closeJobStreams();
  $("#job-id").textContent = id;
  $("#job-log").textContent = "";
  outputs.clear();
  showOutputs();
  setProgress($("#job-progress"), null, "");
  const path = `/jobs/${encodeURIComponent(id)}`;
  let job;
  try {
    job = await api("GET", path);
  } catch (error) {
    notice(error.message);
    return;
  }
  showRecord(job);
  const reload = throttle(quietly(async () => showRecord(await api("GET", path))), 250);
  jobStreams.push(sse(`/events?job_id=${encodeURIComponent(id)}&kind=state&kind=progress&kind=output`, (kind, event) => {
    if (kind === "progress") setProgress($("#job-progress"), event.fraction, event.message);
    else if (kind === "output") { outputs.set(event.seq, event); showOutputs(); }
    else if (kind === "state") reload();
  }, () => {}));
  jobStreams.push(sse(`${path}/logs?follow=1`, (kind, event) => { if (kind === "log") appendLog(event); }, () => {}));
  const stored = await api("GET", `${path}/outputs`);
  for (const item of stored.outputs) outputs.set(item.seq, item);
  showOutputs();
}

// -- routing ---------------------------------------------------------------------------
function route() {
  return location.hash.startsWith("#/job/") ? "job" : "overview";
}

function show() {
  const page = route();
  $("#overview").hidden = page !== "overview";
  $("#job-page").hidden = page !== "job";
  if (page === "job") {
    openJob(decodeURIComponent(location.hash.slice("#/job/".length)));
  } else {
    closeJobStreams();
    refreshQueues();
    refreshFailures();
    resyncRunning();
    if (!events) watchAll();
  }
}

function start() {
  $("#submit-task").addEventListener("change", showTaskForm);
  $("#submit-form").addEventListener("submit", submitForm);
  $("#token-button").addEventListener("click", () => {
    const given = prompt("Bearer token for this listener (kept for this tab only):", token);
    if (given !== null) {
      token = given.trim();
      sessionStorage.setItem("pyrexis-token", token);
      notice("");
      loadTasks().catch((error) => notice(error.message));
      if (events) events.close();
      events = null;
      show();
    }
  });
  $("#job-cancel").addEventListener("click", (e) => act(e.target, "DELETE", `/jobs/${encodeURIComponent($("#job-id").textContent)}`));
  $("#job-retry").addEventListener("click", async (e) => {
    const id = $("#job-id").textContent;
    if (await act(e.target, "POST", `/jobs/${encodeURIComponent(id)}/retry`)) openJob(id);
  });
  window.addEventListener("hashchange", show);
  setInterval(() => { if (route() === "overview") refreshQueues(); }, 5000);
  loadTasks().catch((error) => notice(error.message));
  show();
}

start();
