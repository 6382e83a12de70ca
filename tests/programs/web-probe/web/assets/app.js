// The dashboard of tests/programs/web-probe. It calls its own owner route through the injected
// fetch and, when its parameters name them, tries what a hostile component page would: another
// component's owner route (with credentials, and no-cors), another component's page in a frame,
// and the contract. It writes what it saw into #report, posts it to `report` when given, then
// goes on to `then` when given.
//
// Parameters come from the query or the #fragment (a launch link keeps its fragment):
//   other   another component's base URL, http://<id>.localhost:<port>/plugins/<id>
//   bridge  the contract, http://127.0.0.1:<port>
//   report  where to post the report (no-cors)
//   then    where to go next
"use strict";
(async () => {
  const params = new URLSearchParams(location.search);
  for (const [k, v] of new URLSearchParams(location.hash.slice(1))) params.set(k, v);
  const cb = window.__capbridge || null;
  const report = {
    origin: location.origin,
    injected: cb ? { componentId: cb.componentId, baseUrl: cb.baseUrl, apiUrl: cb.apiUrl } : null,
    cookieVisible: document.cookie,
  };
  async function call(url, init) {
    try {
      const response = await (cb ? cb.fetch(url, init) : fetch(url, init));
      let body = await response.text();
      try { body = JSON.parse(body); } catch (e) { /* text */ }
      return { status: response.status, type: response.type, body };
    } catch (e) {
      return { error: String(e) };
    }
  }
  if (cb) report.whoami = await call(cb.apiUrl + "/whoami");
  const other = params.get("other");
  if (other) {
    report.otherRoute = await call(other + "/api/whoami", { credentials: "include" });
    report.otherRouteNoCors = await call(other + "/api/whoami", { mode: "no-cors", credentials: "include" });
    report.otherPage = await new Promise((resolve) => {
      const frame = document.createElement("iframe");
      frame.src = other + "/ui/";
      frame.onload = () => {
        try {
          resolve({ read: frame.contentDocument.body.innerText });
        } catch (e) {
          resolve({ error: String(e) });
        }
      };
      document.body.appendChild(frame);
      setTimeout(() => resolve({ error: "frame timed out" }), 5000);
    });
  }
  const bridge = params.get("bridge");
  if (bridge) {
    report.contract = await call(bridge + "/api/v1/session/handshake", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
  }
  const text = JSON.stringify(report);
  document.getElementById("report").textContent = text;
  const to = params.get("report");
  if (to) {
    try { await fetch(to, { method: "POST", mode: "no-cors", body: text }); } catch (e) { /* */ }
  }
  const then = params.get("then");
  if (then) location.href = then;
})();
