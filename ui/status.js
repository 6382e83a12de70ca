// The status and settings views. Talks only to the app's own origin (capbridge-ui://app/api/…);
// builds every element with textContent, never HTML from data.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function fill(list, items, empty, render) {
  if (items.length > 0) {
    list.replaceChildren(...items.map(render));
  } else if (list.tagName === "TBODY") {
    const cell = el("td", empty, "empty");
    cell.colSpan = 4;
    const row = el("tr");
    row.append(cell);
    list.replaceChildren(row);
  } else {
    list.replaceChildren(el("li", empty, "empty"));
  }
}

async function api(path, options) {
  const response = await fetch("/api/" + path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function time(iso) {
  return new Date(iso).toLocaleTimeString();
}

function renderStatus(s) {
  const b = s.bind;
  const line = b.state === "bound"
    ? `Listening on http://127.0.0.1:${b.boundPort} (configured port ${b.configuredPort})`
    : `Not listening: port ${b.port} is not bound (configured port ${b.configuredPort})`;
  $("bind-line").textContent = line;
  $("bind-error").hidden = !b.error;
  $("bind-error").textContent = b.error || "";
  $("bind-hint").hidden = !b.hint;
  $("bind-hint").textContent = b.hint || "";
  $("retry").hidden = b.state !== "not-bound";
  $("tray-line").hidden = s.tray.icon === "off";
  $("tray-line").textContent = s.tray.icon === "shown"
    ? "Tray mode: closing this window keeps capbridge serving; Show Status in the tray icon's menu brings it back."
    : `Tray mode is on, but no tray icon shows: ${s.tray.reason}`;
  document.title = b.state === "bound" ? `capbridge: ${b.boundPort}` : "capbridge: not listening";
  if (b.boundPort) {
    $("openapi").href = `http://127.0.0.1:${b.boundPort}/api/v1/openapi.json`;
    $("openapi-line").hidden = false;
  }

  const now = Date.now();
  const automation = s.automation.filter((a) => a.untilMs > now);
  $("automation-card").hidden = automation.length === 0;
  fill($("automation"), automation, "", (a) =>
    el("li", `${a.component}, session ${a.session}, until ${new Date(a.untilMs).toLocaleTimeString()}` +
      (a.lastActionMs ? ` (last action ${new Date(a.lastActionMs).toLocaleTimeString()})` : "")));

  fill($("prompts"), s.prompts, "No prompts waiting.", (p) =>
    el("li", `${p.id}: ${p.summary} (from ${p.component}) — answer in its window`));

  fill($("connections"), s.connections, "No requests yet.", (c) => {
    const row = el("tr");
    row.append(el("td", time(c.time)));
    row.append(el("td", `${c.method} ${c.path}${c.websocket ? " (WebSocket)" : ""}`));
    row.append(el("td", c.error ? `${c.status} ${c.error}` : String(c.status), c.status >= 400 ? "fail" : ""));
    row.append(el("td", c.origin || "—"));
    return row;
  });

  fill($("components"), s.components, "No components.", (c) => {
    const item = el("li");
    item.append(el("strong", c.id + " "));
    item.append(el("span", c.state, "state-" + c.state));
    if (c.reason) item.append(el("div", c.reason, "error"));
    if (c.grants.length) item.append(el("div", "grants: " + c.grants.join("; "), "hint"));
    return item;
  });

  fill($("holds"), s.awakeHolds, "Nothing keeps the machine awake.", (h) =>
    el("li", `${h.reason} (${h.component}, since ${new Date(h.acquiredAtMs).toLocaleTimeString()})`));

  fill($("runs"), s.commandRuns, "No commands run.", (r) => {
    const d = r.detail || {};
    const what = d.program || d.template || JSON.stringify(d);
    return el("li", `${new Date(r.timeMs).toLocaleTimeString()} ${r.kind} ${r.outcome}: ${typeof what === "string" ? what : JSON.stringify(what)}`);
  });
}

async function refresh() {
  try {
    renderStatus(await api("status"));
  } catch (e) {
    $("bind-line").textContent = "capbridge is not answering: " + e.message;
  }
}

async function loadSettings() {
  const s = await api("settings");
  $("config-path").textContent = s.configPath;
  $("port").value = s.port;
  $("origins").value = s.origins.join("\n");
  $("dev-mode").checked = s.devMode;
  $("tray-mode").checked = s.trayMode;
}

async function saveSettings(event) {
  event.preventDefault();
  const message = $("settings-message");
  const change = {
    port: Number($("port").value),
    origins: $("origins").value.split("\n").map((o) => o.trim()).filter((o) => o),
    devMode: $("dev-mode").checked,
    trayMode: $("tray-mode").checked,
  };
  try {
    await api("settings", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(change),
    });
    message.className = "";
    message.textContent = "Saved. Restart capbridge for the change to take effect.";
  } catch (e) {
    message.className = "error";
    message.textContent = "Not saved: " + e.message;
  }
}

function showView() {
  const settings = location.hash === "#settings";
  $("view-status").hidden = settings;
  $("view-settings").hidden = !settings;
  $("tab-status").className = settings ? "" : "current";
  $("tab-settings").className = settings ? "current" : "";
  if (settings) loadSettings().catch((e) => { $("settings-message").textContent = e.message; });
}

$("settings").addEventListener("submit", saveSettings);
$("stop-input").addEventListener("click", async () => {
  await api("stop-input", { method: "POST" });
  refresh();
});

$("retry").addEventListener("click", async () => {
  try { await api("ensure-server", { method: "POST" }); } catch (_) { /* shown by refresh */ }
  refresh();
});
window.addEventListener("hashchange", showView);
showView();
refresh();
setInterval(refresh, 1000);
