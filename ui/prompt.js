// One permission prompt. The allow buttons unlock a second after the window appears or comes
// to the front, so a click or key press meant for another window cannot answer it.
// Unanswered, the host rejects it when its time is up; the window closes when it is gone.
"use strict";

const $ = (id) => document.getElementById(id);
const id = decodeURIComponent(location.hash.slice(1));
const UNLOCK_MS = 1000;

function fact(name, value) {
  if (value === null || value === undefined || value === "" || (Array.isArray(value) && value.length === 0)) return;
  $("facts").append(Object.assign(document.createElement("dt"), { textContent: name }));
  $("facts").append(Object.assign(document.createElement("dd"), {
    textContent: Array.isArray(value) ? value.join(", ") : String(value),
  }));
}

let answered = false;

async function decide(decision) {
  answered = true;
  clearTimeout(unlock);
  for (const b of document.querySelectorAll("button")) b.disabled = true;
  const response = await fetch("/api/prompts/" + encodeURIComponent(id), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ decision }),
  });
  const body = await response.json();
  $("message").textContent = response.ok ? "Answered: " + decision.replaceAll("_", " ") : body.error;
}

async function load() {
  const response = await fetch("/api/prompts/" + encodeURIComponent(id));
  const p = await response.json();
  if (!response.ok) {
    $("heading").textContent = "This prompt was answered or timed out.";
    return;
  }
  const what = { command: "Run this command?", install: "Run this install?", "mcp-server": "Register this MCP server?", automation: "Turn automation on?" };
  $("heading").textContent = what[p.kind] || "Allow this?";
  document.title = `capbridge: allow? (${p.id})`;
  $("asker").textContent = `Asked by component ${p.component}` +
    (p.origin ? ` for the web app at ${p.origin}` : p.session === 0 ? " for the desktop bridge socket" : p.session ? ` for local client session ${p.session}` : "");
  $("command").textContent = p.summary;
  fact("Program", p.programPath);
  fact("Working directory", p.cwd);
  fact("URL", p.url);
  fact("Environment", p.envNames);
  fact("Headers", p.headerNames);
  fact("Standard input", p.hasStdin ? "yes" : null);
  fact("MCP server", p.serverId);
  for (const w of p.warnings) $("warnings").append(Object.assign(document.createElement("li"), { textContent: w }));
  $("always").hidden = !p.whitelistable;
  const tick = () => {
    const left = Math.max(0, Math.ceil((p.expiresAtMs - Date.now()) / 1000));
    $("countdown").textContent = left > 0 ? `Rejected in ${left} s unless you answer.` : "Rejected: nobody answered.";
  };
  tick();
  setInterval(tick, 250);
  lock();
  // Locked again whenever the window comes (back) to the front: a click meant for a prompt
  // just answered must not land on one that was waiting below it.
  window.addEventListener("focus", lock);
}

let unlock = null;
function lock() {
  $("once").disabled = true;
  $("always").disabled = true;
  clearTimeout(unlock);
  unlock = setTimeout(() => {
    if (answered) return;
    $("once").disabled = false;
    $("always").disabled = false;
  }, UNLOCK_MS);
}

$("once").addEventListener("click", () => decide("allow_once"));
$("always").addEventListener("click", () => decide("allow_and_whitelist"));
$("reject").addEventListener("click", () => decide("reject"));
load();
