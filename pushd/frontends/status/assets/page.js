"use strict";
// pushd's status page.  Everything is built with DOM calls and textContent: no string
// ever becomes HTML (the policy enforces that with Trusted Types).

const TOKEN_KEY = "pushd-status-token";
const DATA_URL = "status.json"; // relative, so the page works under a proxy's prefix
const REFRESH_MS = 5000;
const EXPIRY_WARN_DAYS = 14;
const DAY_SECONDS = 86400;
const SPARK_WIDTH = 150;
const SPARK_HEIGHT = 28;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let timer = null;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function cell(field, text, className) {
  const td = element("td", text, className);
  td.dataset.field = field;
  return td;
}

function badge(state) {
  return element("span", state, "badge " + state);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  if (seconds < 2 * DAY_SECONDS) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / DAY_SECONDS) + " days";
}

function percent(rate) {
  return rate === null || rate === undefined ? "–" : (rate * 100).toFixed(1) + " %";
}

function sparkline(buckets, slots) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", SPARK_WIDTH);
  svg.setAttribute("height", SPARK_HEIGHT);
  svg.setAttribute("role", "img");
  const base = document.createElementNS(SVG_NS, "line");
  base.setAttribute("x1", 0);
  base.setAttribute("x2", SPARK_WIDTH);
  base.setAttribute("y1", SPARK_HEIGHT - 0.5);
  base.setAttribute("y2", SPARK_HEIGHT - 0.5);
  svg.appendChild(base);
  const peak = Math.max(1, ...buckets.map((b) => b[0] + b[1] + b[2] + b[3]));
  // One slot per bucket of the full window, newest on the right: a young window
  // fills from the right instead of stretching a few bars across the chart.
  const width = SPARK_WIDTH / Math.max(slots, buckets.length, 1);
  const first = Math.max(slots, buckets.length) - buckets.length;
  buckets.forEach((bucket, position) => {
    const index = first + position;
    let top = SPARK_HEIGHT;
    const parts = [["good", bucket[0] + bucket[1]], ["bad", bucket[2]], ["retry", bucket[3]]];
    for (const [kind, value] of parts) {
      if (!value) continue;
      const height = Math.max(1, (value / peak) * (SPARK_HEIGHT - 2));
      top -= height;
      const rect = document.createElementNS(SVG_NS, "rect");
      rect.setAttribute("class", kind);
      rect.setAttribute("x", (index * width + 0.5).toFixed(2));
      rect.setAttribute("y", top.toFixed(2));
      rect.setAttribute("width", Math.max(1, width - 1).toFixed(2));
      rect.setAttribute("height", height.toFixed(2));
      svg.appendChild(rect);
    }
  });
  const total = buckets.reduce((sum, b) => sum + b[0] + b[1] + b[2] + b[3], 0);
  svg.setAttribute("aria-label", total + " outcomes in the window");
  return svg;
}

function credentialCell(credential, now) {
  const td = cell("credential", credential.kind);
  if (credential.expires_at === null) {
    td.appendChild(element("span", "does not expire", "reason"));
    return td;
  }
  const left = (credential.expires_at - now) / DAY_SECONDS;
  const date = new Date(credential.expires_at * 1000).toISOString().slice(0, 10);
  const text = left < 0 ? "expired " + date : "expires " + date + " (" + Math.floor(left) + " days)";
  const note = element("span", text, "reason");
  if (left < EXPIRY_WARN_DAYS) note.classList.add("expiring");
  td.appendChild(note);
  return td;
}

function appRow(app, now, slots) {
  const row = document.createElement("tr");
  row.dataset.app = app.name;
  row.dataset.state = app.state;
  const name = cell("name", app.name);
  const env = app.environment ? app.provider + ", " + app.environment : app.provider;
  name.appendChild(element("span", env, "reason"));
  row.appendChild(name);
  const state = cell("state");
  state.appendChild(badge(app.state));
  if (app.circuit !== "closed") state.appendChild(badge("circuit " + app.circuit));
  if (app.reason) state.appendChild(element("span", app.reason, "reason"));
  row.appendChild(state);
  const recent = app.recent;
  row.appendChild(cell("per_minute", recent.per_minute.toFixed(1), "num"));
  row.appendChild(cell("delivered", recent.delivered, "num"));
  row.appendChild(cell("removed", recent.removed, "num"));
  row.appendChild(cell("failed", recent.failed, "num"));
  row.appendChild(cell("retrying", recent.retrying, "num"));
  row.appendChild(cell("error_rate", percent(recent.error_rate), "num"));
  const chart = cell("chart");
  chart.appendChild(sparkline(recent.buckets, slots));
  row.appendChild(chart);
  row.appendChild(cell("spool_depth", app.spool.depth, "num"));
  row.appendChild(cell("oldest_due", app.spool.depth ? duration(app.spool.oldest_due_age) : "–", "num"));
  row.appendChild(credentialCell(app.credential, now));
  return row;
}

function serverRow(server) {
  const row = document.createElement("tr");
  row.dataset.server = server.protocol + "/" + server.name;
  row.appendChild(cell("protocol", server.protocol));
  row.appendChild(cell("name", server.name));
  const state = cell("state");
  state.appendChild(badge(server.state === "active" ? "ok" : server.state));
  row.appendChild(state);
  const age = server.last_request_age;
  row.appendChild(cell("last_request", age === null ? "not since start" : duration(age) + " ago"));
  return row;
}

function render(data) {
  const overall = $("overall");
  overall.textContent = data.status;
  overall.className = "badge " + data.status;
  overall.hidden = false;
  const clock = new Date(data.generated_at * 1000).toLocaleTimeString();
  $("updated").textContent = "pushd " + data.version + " · updated " + clock;
  const seconds = Math.max(...data.apps.map((a) => a.recent.seconds), 0);
  const full = (data.buckets - 1) * data.bucket_seconds;
  const span = seconds < full - data.bucket_seconds
    ? "since pushd started " + duration(seconds) + " ago"
    : "over the last " + duration(seconds);
  $("window-note").textContent =
    "Outcomes " + span + " (bars of " + data.bucket_seconds +
    " s: green ended, red failed, amber retry decisions). Removed: dead tokens deleted." +
    (data.store.state === "ok" ? "" : " Store: " + data.store.state + " (" + data.store.reason + ").");
  const rows = data.apps.map((app) => appRow(app, data.generated_at, data.buckets));
  $("apps").tBodies[0].replaceChildren(...rows);
  $("servers").tBodies[0].replaceChildren(...data.servers.map(serverRow));
  $("no-servers").hidden = data.servers.length > 0;
  const missing = $("servers-missing");
  missing.hidden = !data.servers_missing;
  missing.textContent = data.servers_missing ? "Registered servers not shown: " + data.servers_missing : "";
  $("content").hidden = false;
  document.body.dataset.loaded = "true";
}

function showLogin(message) {
  clearTimeout(timer);
  $("content").hidden = true;
  $("overall").hidden = true;
  $("signout").hidden = true;
  $("updated").textContent = "";
  $("trouble").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
  delete document.body.dataset.loaded;
}

async function refresh() {
  clearTimeout(timer);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showLogin();
    return;
  }
  try {
    const response = await fetch(DATA_URL, {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      let message = "The token was refused.";
      try {
        message = "The token was refused: " + (await response.json()).error.message + ".";
      } catch (ignored) { /* keep the plain message */ }
      showLogin(message);
      return;
    }
    if (!response.ok) throw new Error("pushd answered " + response.status);
    render(await response.json());
    $("login").hidden = true;
    $("signout").hidden = false;
    $("trouble").hidden = true;
  } catch (error) {
    const trouble = $("trouble");
    trouble.textContent = "Cannot refresh (" + error.message + "); trying again.";
    trouble.hidden = false;
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-error").textContent = "";
  refresh();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("Token forgotten.");
});

refresh();
