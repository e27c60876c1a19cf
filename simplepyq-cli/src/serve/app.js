// The simplepyq dashboard: draws the overview (/) or a task's page (/tasks/ID) from the JSON
// API, again every second. Every value from the store goes into the page as text (append
// of a string, textContent) or as an attribute set with setAttribute: never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const READ_ONLY = document.querySelector('meta[name="read-only"]').content === "true";
const STATUSES = ["pending", "running", "delayed", "waiting", "done", "failed"];
const main = document.getElementById("main");
const notice = document.getElementById("notice");
// The channel the overview's page of channels starts after ("" for the first page).
let channelsAfter = "";

// An element with attributes (class, on<event> listeners, others as attributes) and children
// (nodes, or strings as text).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function human(ms) {
  const s = Math.floor(Math.max(ms, 0) / 1000);
  if (s === 0) return `${Math.max(ms, 0)}ms`;
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function when(ms, now) {
  if (ms === null || ms === undefined) return "–";
  const at = new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  return el("span", {}, `${at} (`, since("span", "", ms, now), ")");
}

// How far `at` is from `now`, in words.
function relative(at, now) {
  return at <= now ? `${human(now - at)} ago` : `in ${human(at - now)}`;
}

// An element telling how far `at` is from now; ageCells keeps it current between redraws.
function since(tag, cls, at, now) {
  return el(tag, { class: cls, "data-at": at }, relative(at, now));
}

function ageCells(now) {
  for (const node of main.querySelectorAll("[data-at]")) {
    node.textContent = relative(Number(node.dataset.at), now);
  }
}

function say(text, isError) {
  notice.textContent = text;
  notice.className = isError ? "error" : "";
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": CSRF },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

// Runs an action, says what it did, and draws again at once.
async function act(path, body, done, question) {
  if (question && !window.confirm(question)) return;
  try {
    say(done(await api(path, body)), false);
  } catch (e) {
    say(e.message, true);
  }
  refresh();
}

function channelsSection(data) {
  const head = el("tr", {}, el("th", {}, "channel"),
    ...STATUSES.map((s) => el("th", { class: "n" }, s)),
    el("th", { class: "n" }, "oldest pending"), READ_ONLY ? null : el("th", {}, ""));
  const rows = data.channels.map((c) => el("tr", { "data-channel": c.channel, class: c.paused ? "paused" : "" },
    el("td", {}, c.channel, c.paused ? el("span", { class: "paused-tag" }, "paused") : null,
      c.max_running === null || c.max_running === undefined ? null
        : el("span", { class: "limit-tag", title: "at most this many run at once, across every process" }, `≤ ${c.max_running} running`),
      (c.max_running_per_key ?? 1) === 1 ? null
        : el("span", { class: "limit-tag", title: "at most this many of one concurrency key run at once" }, `≤ ${c.max_running_per_key} per key`),
      c.rate ? el("span", { class: "limit-tag rate-tag", title: "at most this many start per window, across every process" }, `≤ ${c.rate.starts} starts / ${human(c.rate.per_ms)}`) : null,
      c.rate_per_key ? el("span", { class: "limit-tag key-rate-tag", title: "at most this many of one concurrency key start per window" }, `≤ ${c.rate_per_key.starts} starts / ${human(c.rate_per_key.per_ms)} per key`) : null,
      (c.stuck ?? 0) === 0 ? null
        : el("span", { class: "stuck-tag", title: "handlers past their timeout that still run: their tasks keep their leases until they return" }, `${c.stuck} stuck`)),
    ...STATUSES.map((s) => el("td", {
      class: `n ${s}-n${c[s] > 0 ? " nonzero" : ""}`, "data-status": s,
    }, c[s])),
    c.oldest_pending_age_ms === null ? el("td", { class: "n" }, "–")
      : since("td", "n", data.now_ms - c.oldest_pending_age_ms, data.now_ms),
    READ_ONLY ? null : el("td", { class: "actions" },
      c.paused ? el("button", {
        class: "resume", onclick: () => act("/api/resume", { channel: c.channel },
          () => `Resumed ${c.channel}: its tasks start again.`),
      }, "Resume") : el("button", {
        class: "pause", onclick: () => act("/api/pause", { channel: c.channel },
          () => `Paused ${c.channel}: no worker starts its tasks until it is resumed.`,
          `Pause ${c.channel} for every worker of every process?`),
      }, "Pause"), " ",
      c.failed === 0 ? "" : el("span", {},
      el("button", {
        class: "requeue", onclick: () => act("/api/requeue-failed", { channel: c.channel },
          (r) => `Requeued ${r.requeued} failed task(s) of ${c.channel}.`),
      }, "Requeue failed"), " ",
      el("button", {
        class: "clear danger", onclick: () => act("/api/clear-failed", { channel: c.channel },
          (r) => `Deleted ${r.cleared} failed task(s) of ${c.channel}.`,
          `Delete every failed task of ${c.channel}?`),
      }, "Clear failed")))));
  const table = rows.length === 0 ? el("p", { class: "muted" }, "No tasks.")
    : el("table", { id: "channels" }, el("thead", {}, head), el("tbody", {}, ...rows));
  // A page of channels at a time: the server counts only the channels it shows.
  const paging = data.channels_total > data.channels.length ? el("p", { class: "muted", id: "channel-pages" },
    `${data.channels.length} of ${data.channels_total} channels. `,
    channelsAfter === "" ? null : el("button", { id: "first-channels", onclick: () => { channelsAfter = ""; refresh(); } }, "First page"), " ",
    data.channels_next === null ? null : el("button", { id: "next-channels", onclick: () => { channelsAfter = data.channels_next; refresh(); } }, "Next page"))
    : null;
  return el("section", {}, el("h2", {}, `Channels (${data.channels_total})`), table, paging);
}

function chartSection(data) {
  const width = 600, height = 120, top = 4, bottom = 0;
  const most = Math.max(1, ...data.minutes.map((m) => m.done + m.failed));
  const scale = (height - top - bottom) / most;
  const bar = width / data.minutes.length;
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  data.minutes.forEach((m, i) => {
    const x = i * bar + 1, w = bar - 2, base = height - bottom;
    const label = `${new Date(m.bucket_ms).toISOString().slice(11, 16)} UTC: ${m.done} done, ${m.failed} failed`;
    const group = svg("g", {}, svg("title", {}, label));
    group.append(svg("rect", { class: "done", x, width: w, y: base - m.done * scale, height: m.done * scale }));
    group.append(svg("rect", { class: "failed", x, width: w, y: base - (m.done + m.failed) * scale, height: m.failed * scale }));
    chart.append(group);
  });
  const done = data.minutes.reduce((n, m) => n + m.done, 0);
  const failed = data.minutes.reduce((n, m) => n + m.failed, 0);
  return el("section", {}, el("h2", {}, "Done and failed per minute, last hour"),
    el("p", { class: "axis muted" }, `${most} per minute`), chart,
    el("p", { class: "axis muted ends" }, el("span", {}, "60 min ago"), el("span", {}, "now")),
    el("p", { class: "legend", id: "hour" }, el("span", { class: "done" }, `${done} done`), " ",
      el("span", { class: "failed" }, `${failed} failed`)));
}

function failedSection(data) {
  const title = el("h2", {}, `Failed tasks (${data.failed_total})`);
  if (data.failed.length === 0) return el("section", {}, title, el("p", { class: "muted" }, "None."));
  const rows = data.failed.map((t) => el("tr", { "data-task": t.id },
    el("td", {}, el("a", { href: `/tasks/${t.id}` }, `#${t.id}`)),
    el("td", {}, t.channel),
    el("td", { class: "n" }, t.attempts),
    el("td", {}, el("pre", { class: "error" }, t.last_error || "")),
    el("td", {}, el("code", { class: "json args" }, t.args)),
    since("td", "muted", t.updated_at_ms, data.now_ms)));
  const more = data.failed_total > data.failed.length
    ? el("p", { class: "muted" }, `The first ${data.failed.length}, by channel and id; \`simplepyq tasks --status failed\` pages through all.`) : null;
  return el("section", {}, title, el("table", { id: "failed" },
    el("thead", {}, el("tr", {}, ...["id", "channel", "attempts", "last error", "arguments", "failed"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows)), more);
}

function drawOverview(data) {
  main.replaceChildren(channelsSection(data), chartSection(data), failedSection(data));
}

function drawTask(t, now) {
  const fields = [
    ["channel", t.channel], ["status", el("span", { class: `status ${t.status}`, id: "task-status" }, t.status)],
    ["attempts", t.attempts], ["retries left", `${t.retries_left} of ${t.max_retries}`],
    ["priority", t.priority], ["unique key", t.unique_key ?? "–"],
    ["concurrency key", t.concurrency_key ?? "–"],
    ["timeout", t.timeout_ms === null || t.timeout_ms === undefined ? "the channel's" : `${t.timeout_ms} ms`],
    ["trace", t.traceparent ? el("code", { id: "task-trace", title: `traceparent ${t.traceparent}` }, t.traceparent.split("-")[1]) : "–"],
    ["run at", when(t.run_at_ms, now)], ["lease until", when(t.lease_until_ms, now)],
    ["stuck", t.stuck_since_ms === null || t.stuck_since_ms === undefined ? "–"
      : el("span", { class: "stuck-tag", id: "task-stuck" }, "past its timeout since ", when(t.stuck_since_ms, now))],
    ["enqueued", when(t.created_at_ms, now)], ["last change", when(t.updated_at_ms, now)],
    ["waits for", (t.parents ?? []).length === 0 ? "–" : el("span", { class: "parents" },
      ...t.parents.flatMap((id, i) => [i > 0 ? ", " : "", el("a", { href: `/tasks/${id}` }, `#${id}`)]))],
    ["last error", el("pre", { class: "error" }, t.last_error ?? "–")],
    ["arguments", el("code", { class: "json args" }, JSON.stringify(t.args, null, 2))],
    ["result", t.result === null || t.result === undefined ? "–"
      : el("code", { class: "json result" }, JSON.stringify(t.result, null, 2))],
  ];
  const list = el("dl", {}, ...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const cancellable = !READ_ONLY && ["pending", "delayed", "waiting"].includes(t.status);
  const cancel = cancellable ? el("p", {}, el("button", {
    class: "cancel danger", onclick: () => act("/api/cancel", { id: t.id },
      () => `Cancelled task #${t.id}.`, `Cancel task #${t.id}? It is deleted and never runs.`),
  }, "Cancel task")) : null;
  main.replaceChildren(el("section", {}, el("h1", {}, `Task #${t.id}`), list, cancel));
}

// What was drawn last: redrawing only when it changes keeps the page still (a selection
// of text, a button under the pointer) while nothing happens.
let drawn = "";

function redraw(key, draw) {
  if (key !== drawn) {
    drawn = key;
    draw();
  }
}

async function refresh() {
  const match = window.location.pathname.match(/^\/tasks\/(\d+)$/);
  try {
    if (match) {
      try {
        const task = await api(`/api/tasks/${match[1]}`);
        const { now_ms: now, ...rest } = task;
        redraw(JSON.stringify(rest), () => drawTask(task, now));
        ageCells(now);
      } catch (e) {
        redraw(e.message, () => main.replaceChildren(el("section", {}, el("h1", {}, `Task #${match[1]}`), el("p", {}, e.message))));
      }
    } else {
      const data = await api(`/api/overview?after=${encodeURIComponent(channelsAfter)}`);
      const key = JSON.stringify({
        ...data,
        now_ms: 0,
        channels: data.channels.map((c) => ({ ...c, oldest_pending_age_ms: c.oldest_pending_age_ms === null ? null : data.now_ms - c.oldest_pending_age_ms })),
      });
      redraw(key, () => drawOverview(data));
      ageCells(data.now_ms);
    }
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    say(`Cannot reach the dashboard's server: ${e.message}`, true);
  }
}

document.getElementById("mode").textContent = READ_ONLY ? "read-only" : "";
document.getElementById("find").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("find-id").value;
  if (/^\d+$/.test(id)) window.location.assign(`/tasks/${id}`);
});
// Draws again a second after each answer: requests never pile up on a slow store.
async function loop() {
  await refresh();
  setTimeout(loop, 1000);
}
loop();
