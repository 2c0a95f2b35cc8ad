// proconsul's web UI: one script, no dependencies, no build step.
//
// The agent serves index.html for every path under the content path, with its settings
// in <script id="settings">. This script reads the path (Consul's layout:
// <dc>/services, <dc>/services/<name>, <dc>/nodes, <dc>/kv/..., plus <dc>/wan), draws
// the page from the HTTP API (`?dc=` for other datacenters) and keeps it live with
// blocking queries. Everything from the API is put in the page as text, never as HTML.
"use strict";

const SETTINGS = JSON.parse(document.getElementById("settings").textContent || "{}");
const BASE = SETTINGS.ContentPath || "/ui/";
const LOCAL_DC = SETTINGS.LocalDatacenter || "dc1";
const TOKEN_KEY = "proconsul:token";

// Blocking queries: how long the agent may hold one, and the back-off after errors.
const WAIT = "60s";
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
// Reads without an index (the WAN pool, the datacenter list) are polled.
const POLL_MS = 10000;
// A blocking answer that did not move the index waits this long before the next.
const SAME_INDEX_PAUSE_MS = 1000;

// ---- small helpers -------------------------------------------------------------

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const enc = (s) => encodeURIComponent(s);
const encPath = (s) => s.split("/").map(enc).join("/");

function token() {
  try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; }
}
function setToken(t) {
  try {
    if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* storage off: the token lives until the page closes */ }
}

/** A failed API call: status and the agent's text. */
class ApiError extends Error {
  constructor(status, text) { super(text || ("HTTP " + status)); this.status = status; }
}

/** Calls the agent's API; `dc` adds `?dc=`. Returns the Response of a 2xx. */
async function api(path, { dc, params, method, body, signal } = {}) {
  const q = new URLSearchParams(params || {});
  if (dc && dc !== LOCAL_DC) q.set("dc", dc);
  const qs = q.toString();
  const headers = {};
  const t = token();
  if (t) headers["X-Consul-Token"] = t;
  const res = await fetch("/v1/" + path + (qs ? "?" + qs : ""), {
    method: method || "GET", headers, body, signal, cache: "no-store",
  });
  if (!res.ok) throw new ApiError(res.status, (await res.text()).trim());
  return res;
}

// ---- page state and live reads ---------------------------------------------------

const state = {
  gen: 0,                      // bumped on every navigation; stale loops stop
  abort: new AbortController(),
  dc: LOCAL_DC,
  dcs: [],                     // /v1/internal/ui/datacenters
};

function newPage() {
  state.gen += 1;
  state.abort.abort();
  state.abort = new AbortController();
  return state.gen;
}

/**
 * Keeps `path` live: the first read returns at once, later ones block on the index the
 * previous answer carried. `onData(json)` draws; `onError(err)` says what went wrong.
 * Stops when the page changes. Errors back off from 1 s to 30 s.
 */
function live(path, { dc, params, onData, onError, poll }) {
  const gen = state.gen;
  const signal = state.abort.signal;
  (async () => {
    let index = 0;
    let backoff = 0;
    while (gen === state.gen) {
      const p = Object.assign({}, params || {});
      if (index && !poll) { p.index = String(index); p.wait = WAIT; }
      try {
        const res = await api(path, { dc, params: p, signal });
        const next = Number(res.headers.get("X-Consul-Index")) || 0;
        const data = await res.json();
        if (gen !== state.gen) return;
        backoff = 0;
        aclNotice(res.headers.get("X-Consul-Results-Filtered-By-ACLs") === "true");
        onData(data);
        if (poll || !next) { await sleep(POLL_MS); index = 0; continue; }
        if (next === index) await sleep(SAME_INDEX_PAUSE_MS);
        // An index that went backwards (a restored snapshot, another server): start over.
        index = next < index ? 0 : next;
      } catch (e) {
        if (gen !== state.gen || signal.aborted) return;
        if (onError) onError(e);
        if (e instanceof ApiError && (e.status === 403 || e.status === 401)) return;
        backoff = Math.min(Math.max(BACKOFF_MIN_MS, backoff * 2), BACKOFF_MAX_MS);
        await sleep(backoff);
      }
    }
  })();
}

// ---- routing --------------------------------------------------------------------

function dcHref(dc, ...rest) { return BASE + enc(dc) + (rest.length ? "/" + rest.join("/") : ""); }

/** The route for a path under BASE: { page, dc, ... } */
function route(pathname) {
  if (!pathname.startsWith(BASE)) return { page: "not-found" };
  const rest = pathname.slice(BASE.length);
  const trailing = rest.endsWith("/");
  const seg = rest.split("/").filter((s) => s !== "").map((s) => {
    try { return decodeURIComponent(s); } catch (_) { return s; }
  });
  if (seg.length === 0) return { page: "home" };
  const dc = seg[0];
  const [section, ...more] = seg.slice(1);
  switch (section) {
    case undefined: return { page: "dc-home", dc };
    case "services":
      if (more.length === 0) return { page: "services", dc };
      if (more.length === 1 || (more.length === 2 && ["instances", "tags"].includes(more[1])))
        return { page: "service", dc, name: more[0], tab: more[1] || "instances" };
      if (more[1] === "instances" && (more.length === 4 ||
          (more.length === 5 && ["health-checks", "addresses", "metadata"].includes(more[4]))))
        return { page: "instance", dc, name: more[0], node: more[2], id: more[3] };
      return { page: "not-found", dc };
    case "nodes":
      if (more.length === 0) return { page: "nodes", dc };
      if (more.length === 1 || (more.length === 2 &&
          ["health-checks", "service-instances", "round-trip-time", "metadata"].includes(more[1])))
        return { page: "node", dc, node: more[0] };
      return { page: "not-found", dc };
    case "kv": {
      // Raw segments keep the key as written (keys may hold any character).
      const raw = rest.slice(rest.indexOf("/kv") + 3).replace(/^\//, "");
      let key;
      try { key = decodeURIComponent(raw); } catch (_) { key = raw; }
      if (key.endsWith("/edit")) return { page: "kv-edit", dc, key: key.slice(0, -5) };
      if (key === "create") return { page: "kv-create", dc, folder: "" };
      if (key.endsWith("/create")) return { page: "kv-create", dc, folder: key.slice(0, -6) };
      if (key === "" || trailing) return { page: "kv", dc, folder: key };
      return { page: "kv-edit", dc, key };
    }
    case "wan":
      if (more.length === 0) return { page: "wan", dc };
      return { page: "not-found", dc };
    default:
      return { page: "not-found", dc };
  }
}

function navigate(url, replace) {
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  render();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest && ev.target.closest("a[href]");
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(BASE) || a.target) return;
  ev.preventDefault();
  const details = document.getElementById("dcs");
  if (details) details.open = false;
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => render());

// ---- chrome: header, datacenter switcher, banner -----------------------------------

const SECTIONS = [["services", "Services"], ["nodes", "Nodes"], ["kv", "Key/Value"], ["wan", "WAN pool"]];

function drawHeader(r) {
  const dc = r.dc || LOCAL_DC;
  document.getElementById("brand").setAttribute("href", dcHref(dc, "services"));
  document.getElementById("sections").replaceChildren(...SECTIONS.map(([s, label]) =>
    h("a", { href: dcHref(dc, s) + (s === "kv" ? "/" : ""), class: r.page.startsWith(s.replace(/s$/, "")) ? "active" : "" }, label)));
  const auth = document.getElementById("auth");
  if (SETTINGS.AclsEnabled) {
    auth.replaceChildren(token()
      ? h("button", { class: "link", id: "logout", onclick: () => { setToken(""); render(); } }, "Log out")
      : h("a", { href: "#login", onclick: (e) => { e.preventDefault(); showLogin(); } }, "Log in"));
  } else {
    auth.replaceChildren();
  }
  drawDatacenters(r);
}

function section(r) {
  const s = (r.page || "").split("-")[0];
  if (s === "service" || s === "instance") return "services";
  if (s === "node") return "nodes";
  if (s === "kv") return "kv/";
  if (s === "wan") return "wan";
  return "services";
}

function rttText(d) {
  if (d.Local) return "local";
  if (typeof d.RTTMs !== "number") return "RTT unknown";
  return (d.RTTMs < 1 ? d.RTTMs.toFixed(2) : Math.round(d.RTTMs)) + " ms";
}

function reachText(d) {
  if (d.Reachable === true) return "reachable";
  if (d.Reachable === false) return "unreachable";
  return "unknown";
}

function drawDatacenters(r) {
  const dc = r.dc || LOCAL_DC;
  const current = state.dcs.find((d) => d.Name === dc);
  const summary = document.getElementById("dc-current");
  summary.replaceChildren(h("span", { class: "dot " + (current ? reachText(current) : "unknown") }), dc);
  const list = state.dcs.length ? state.dcs : [{ Name: LOCAL_DC, Local: true, Reachable: true }];
  document.getElementById("dc-list").replaceChildren(...list.map((d) =>
    h("li", { class: d.Name === dc ? "current" : "" },
      h("a", { href: dcHref(d.Name, section(r)), class: "dc " + reachText(d), "data-dc": d.Name },
        h("span", { class: "dot " + reachText(d) }),
        h("span", { class: "dc-name" }, d.Name),
        h("span", { class: "rtt" }, rttText(d)),
        h("span", { class: "reach" }, reachText(d))))));
  const banner = document.getElementById("banner");
  if (current && current.Reachable === false) {
    banner.replaceChildren(h("p", { class: "warn", id: "dc-down" },
      "Datacenter " + dc + " is unreachable: none of its servers is alive in the WAN pool. " +
      "The other datacenters are still available from the menu."));
  } else if (!current && state.dcs.length) {
    banner.replaceChildren(h("p", { class: "warn", id: "dc-unknown" },
      "Datacenter " + dc + " is not known to this agent."));
  } else {
    banner.replaceChildren();
  }
}

/** Keeps the datacenter list fresh for as long as the page is open. */
async function watchDatacenters() {
  let backoff = 0;
  for (;;) {
    try {
      const res = await api("internal/ui/datacenters");
      state.dcs = await res.json();
      backoff = 0;
      drawDatacenters(route(location.pathname));
      await sleep(POLL_MS);
    } catch (_) {
      backoff = Math.min(Math.max(BACKOFF_MIN_MS, backoff * 2), BACKOFF_MAX_MS);
      await sleep(backoff);
    }
  }
}

// ---- common page pieces ------------------------------------------------------------

const main = () => document.getElementById("main");

function page(id, title, ...body) {
  main().replaceChildren(h("section", { class: "page", "data-page": id }, h("h1", {}, title),
    h("div", { id: "acl-notice" }), ...body));
}

/** Says when ACLs left something out of an answer, with the login form if no token is set. */
function aclNotice(filtered) {
  const slot = document.getElementById("acl-notice");
  if (!slot) return;
  if (!filtered || !SETTINGS.AclsEnabled) { slot.replaceChildren(); return; }
  if (slot.childElementCount) return;
  slot.replaceChildren(token()
    ? h("p", { class: "warn" }, "Some results are hidden: this token may not read them.")
    : loginForm("ACLs are on and some results are hidden: log in with a token to see them."));
}

function errorBox(e, what) {
  if (e instanceof ApiError && (e.status === 403 || e.status === 401) && SETTINGS.AclsEnabled) {
    return loginForm(token() ? "This token may not read " + what + "." : "ACLs are on: log in with a token to see " + what + ".");
  }
  const text = e instanceof ApiError ? e.message : "The agent did not answer (" + e.message + ")";
  const down = /no server currently reachable|No path to datacenter/i.test(text);
  return h("div", { class: "error", "data-error": down ? "dc-down" : "api" },
    h("strong", {}, down ? "Datacenter " + state.dc + " cannot be reached. " : "Could not load " + what + ". "),
    text, h("span", { class: "muted" }, " Retrying…"));
}

function showError(slot, e, what) { slot.replaceChildren(errorBox(e, what)); }

function statusPill(status) {
  return h("span", { class: "status " + status, "data-status": status }, status);
}

/** The worst of a list of check statuses ("passing" when there are none). */
function worst(statuses) {
  const rank = { passing: 0, warning: 1, critical: 2 };
  return statuses.reduce((w, s) => ((rank[s] ?? 2) > (rank[w] ?? 0) ? s : w), "passing");
}

function tags(list) {
  return h("span", { class: "tags" }, (list || []).map((t) => h("span", { class: "tag" }, t)));
}

function table(head, rows, attrs) {
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows));
}

function checksTable(checks) {
  if (!checks.length) return h("p", { class: "muted" }, "No checks.");
  return table(["Status", "Name", "Type", "Output"], checks.map((c) =>
    h("tr", { class: "check", "data-check": c.CheckID, "data-status": c.Status },
      h("td", {}, statusPill(c.Status)),
      h("td", {}, h("div", {}, c.Name || c.CheckID), c.Notes ? h("div", { class: "muted" }, c.Notes) : null,
        c.ServiceID ? null : h("div", { class: "muted" }, "node check")),
      h("td", {}, c.Type || "—"),
      h("td", {}, c.Output ? h("pre", { class: "output" }, c.Output) : h("span", { class: "muted" }, "no output")))),
    { class: "checks" });
}

// ---- pages -------------------------------------------------------------------------

let firstServicesMarked = false;

function servicesPage(r) {
  const filter = h("input", { type: "search", placeholder: "Filter by name or tag", id: "filter", "aria-label": "Filter" });
  const slot = h("div", { id: "services" }, h("p", { class: "muted" }, "Loading services…"));
  const count = h("span", { class: "count" });
  page("services", ["Services ", count], h("div", { class: "toolbar" }, filter), slot);
  let last = [];
  const draw = () => {
    const f = filter.value.trim().toLowerCase();
    const shown = last.filter((s) => !f || s.Name.toLowerCase().includes(f) ||
      (s.Tags || []).some((t) => t.toLowerCase().includes(f)));
    count.textContent = String(last.length);
    if (!last.length) { slot.replaceChildren(h("p", { class: "muted empty" }, "No services in " + r.dc + ".")); return; }
    slot.replaceChildren(table(["Health", "Service", "Instances", "Tags"], shown.map((s) => {
      const health = s.ChecksCritical ? "critical" : s.ChecksWarning ? "warning" : "passing";
      return h("tr", { class: "service", "data-service": s.Name, "data-health": health },
        h("td", { class: "health" },
          h("span", { class: "dot " + health, title: health }),
          h("span", { class: "counts" },
            s.ChecksPassing ? h("span", { class: "n passing", title: "passing checks" }, "✓ " + s.ChecksPassing) : null,
            s.ChecksWarning ? h("span", { class: "n warning", title: "warning checks" }, "! " + s.ChecksWarning) : null,
            s.ChecksCritical ? h("span", { class: "n critical", title: "critical checks" }, "✕ " + s.ChecksCritical) : null)),
        h("td", {}, h("a", { href: dcHref(r.dc, "services", enc(s.Name)) }, s.Name),
          (s.ExternalSources || []).map((x) => h("span", { class: "badge" }, x))),
        h("td", { class: "num" }, s.InstanceCount + (s.InstanceCount === 1 ? " instance" : " instances")),
        h("td", {}, tags(s.Tags)));
    }), { class: "services" }));
    if (!firstServicesMarked) {
      firstServicesMarked = true;
      performance.mark("proconsul:services-listed");
    }
  };
  filter.addEventListener("input", draw);
  live("internal/ui/services", {
    dc: r.dc,
    onData: (list) => { last = list; draw(); },
    onError: (e) => showError(slot, e, "the services of " + r.dc),
  });
}

function instanceRows(r, list) {
  return list.map((e) => {
    const s = e.Service;
    const status = worst(e.Checks.map((c) => c.Status));
    const addr = (s.Address || e.Node.Address) + (s.Port ? ":" + s.Port : "");
    return h("tr", { class: "instance", "data-instance": s.ID, "data-node": e.Node.Node, "data-health": status },
      h("td", {}, statusPill(status)),
      h("td", {}, h("a", { href: dcHref(r.dc, "services", enc(s.Service), "instances", enc(e.Node.Node), enc(s.ID)) }, s.ID)),
      h("td", {}, h("a", { href: dcHref(r.dc, "nodes", enc(e.Node.Node)) }, e.Node.Node)),
      h("td", {}, addr),
      h("td", {}, tags(s.Tags)),
      h("td", {}, checksTable(e.Checks)));
  });
}

function servicePage(r) {
  const slot = h("div", { id: "instances" }, h("p", { class: "muted" }, "Loading instances…"));
  const tabs = h("nav", { class: "tabs" },
    h("a", { href: dcHref(r.dc, "services", enc(r.name), "instances"), class: r.tab === "instances" ? "active" : "" }, "Instances"),
    h("a", { href: dcHref(r.dc, "services", enc(r.name), "tags"), class: r.tab === "tags" ? "active" : "" }, "Tags"));
  page("service", [h("a", { href: dcHref(r.dc, "services"), class: "crumb" }, "Services"), " / ", r.name], tabs, slot);
  live("health/service/" + enc(r.name), {
    dc: r.dc,
    onData: (list) => {
      if (!list.length) { slot.replaceChildren(h("p", { class: "muted empty" }, "No instances of " + r.name + " in " + r.dc + ".")); return; }
      if (r.tab === "tags") {
        const all = [...new Set(list.flatMap((e) => e.Service.Tags || []))].sort();
        slot.replaceChildren(all.length ? tags(all) : h("p", { class: "muted" }, "No tags."));
        return;
      }
      slot.replaceChildren(table(["Health", "ID", "Node", "Address", "Tags", "Checks"], instanceRows(r, list), { class: "instances" }));
    },
    onError: (e) => showError(slot, e, "the instances of " + r.name),
  });
}

function kvTable(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("p", { class: "muted" }, "None.");
  return table(["Key", "Value"], entries.map(([k, v]) =>
    h("tr", {}, h("td", {}, k), h("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v)))));
}

function instancePage(r) {
  const slot = h("div", { id: "instance" }, h("p", { class: "muted" }, "Loading…"));
  page("instance", [h("a", { href: dcHref(r.dc, "services"), class: "crumb" }, "Services"), " / ",
    h("a", { href: dcHref(r.dc, "services", enc(r.name)), class: "crumb" }, r.name), " / ", r.id], slot);
  live("health/service/" + enc(r.name), {
    dc: r.dc,
    onData: (list) => {
      const e = list.find((x) => x.Service.ID === r.id && x.Node.Node === r.node);
      if (!e) { slot.replaceChildren(h("p", { class: "muted empty" }, "No instance " + r.id + " on node " + r.node + ".")); return; }
      const s = e.Service;
      slot.replaceChildren(
        h("p", {}, statusPill(worst(e.Checks.map((c) => c.Status))), " on node ",
          h("a", { href: dcHref(r.dc, "nodes", enc(e.Node.Node)) }, e.Node.Node), ", ",
          (s.Address || e.Node.Address) + ":" + s.Port),
        h("h2", {}, "Health checks"), checksTable(e.Checks),
        h("h2", {}, "Addresses"), kvTable(Object.fromEntries(Object.entries(s.TaggedAddresses || {}).map(([k, v]) => [k, v.Address + ":" + v.Port]))),
        h("h2", {}, "Tags"), (s.Tags || []).length ? tags(s.Tags) : h("p", { class: "muted" }, "None."),
        h("h2", {}, "Metadata"), kvTable(s.Meta));
    },
    onError: (e) => showError(slot, e, "the instance " + r.id),
  });
}

function nodesPage(r) {
  const slot = h("div", { id: "nodes" }, h("p", { class: "muted" }, "Loading nodes…"));
  const count = h("span", { class: "count" });
  page("nodes", ["Nodes ", count], slot);
  live("internal/ui/nodes", {
    dc: r.dc,
    onData: (list) => {
      count.textContent = String(list.length);
      if (!list.length) { slot.replaceChildren(h("p", { class: "muted empty" }, "No nodes.")); return; }
      slot.replaceChildren(table(["Health", "Node", "Address", "Services"], list.map((n) => {
        const status = worst(n.Checks.filter((c) => !c.ServiceID).map((c) => c.Status));
        return h("tr", { class: "node", "data-node": n.Node, "data-health": status },
          h("td", {}, statusPill(status)),
          h("td", {}, h("a", { href: dcHref(r.dc, "nodes", enc(n.Node)) }, n.Node)),
          h("td", {}, n.Address),
          h("td", {}, n.Services.map((s) => h("span", { class: "tag" }, s.Service))));
      }), { class: "nodes" }));
    },
    onError: (e) => showError(slot, e, "the nodes of " + r.dc),
  });
}

function nodePage(r) {
  const slot = h("div", { id: "node" }, h("p", { class: "muted" }, "Loading…"));
  page("node", [h("a", { href: dcHref(r.dc, "nodes"), class: "crumb" }, "Nodes"), " / ", r.node], slot);
  live("internal/ui/node/" + enc(r.node), {
    dc: r.dc,
    onData: (n) => {
      slot.replaceChildren(
        h("p", {}, "Address ", n.Address, n.ID ? " · ID " + n.ID : ""),
        h("h2", {}, "Health checks"), checksTable(n.Checks),
        h("h2", {}, "Service instances"),
        n.Services.length ? table(["Service", "ID", "Port", "Tags"], n.Services.map((s) =>
          h("tr", {}, h("td", {}, h("a", { href: dcHref(r.dc, "services", enc(s.Service)) }, s.Service)),
            h("td", {}, h("a", { href: dcHref(r.dc, "services", enc(s.Service), "instances", enc(n.Node), enc(s.ID)) }, s.ID)),
            h("td", {}, s.Port), h("td", {}, tags(s.Tags))))) : h("p", { class: "muted" }, "None."),
        h("h2", {}, "Metadata"), kvTable(n.Meta));
    },
    onError: (e) => {
      if (e instanceof ApiError && e.status === 404) slot.replaceChildren(h("p", { class: "muted empty" }, "No node " + r.node + " in " + r.dc + "."));
      else showError(slot, e, "the node " + r.node);
    },
  });
}

// ---- key/value -----------------------------------------------------------------------

function kvHref(dc, key) { return dcHref(dc, "kv") + "/" + encPath(key); }

function crumbs(dc, folder) {
  const parts = folder.split("/").filter((p) => p);
  const out = [h("a", { href: dcHref(dc, "kv") + "/", class: "crumb" }, "Key/Value")];
  let acc = "";
  for (const p of parts) {
    acc += p + "/";
    out.push(" / ", h("a", { href: kvHref(dc, acc), class: "crumb" }, p));
  }
  return out;
}

function kvPage(r) {
  const folder = r.folder && !r.folder.endsWith("/") ? r.folder + "/" : r.folder;
  const slot = h("div", { id: "kv" }, h("p", { class: "muted" }, "Loading keys…"));
  const create = h("a", { href: kvHref(r.dc, folder + "create"), class: "button", id: "kv-create" }, "Create");
  page("kv", crumbs(r.dc, folder), h("div", { class: "toolbar" }, create), slot);
  const drawKeys = (keys) => {
    const shown = keys.filter((k) => k !== folder);
    if (!shown.length) { slot.replaceChildren(h("p", { class: "muted empty" }, "No keys under " + (folder || "the root") + ".")); return; }
    slot.replaceChildren(table(["Key", ""], shown.map((k) => {
      const isFolder = k.endsWith("/");
      const name = k.slice(folder.length);
      return h("tr", { class: "kv-key", "data-key": k },
        h("td", {}, h("a", { href: isFolder ? kvHref(r.dc, k) : kvHref(r.dc, k) + "/edit" }, isFolder ? "📁 " + name : name)),
        h("td", { class: "actions" }, h("button", {
          class: "danger", onclick: async () => {
            if (!confirm("Delete " + k + (isFolder ? " and everything under it" : "") + "?")) return;
            try {
              await api("kv/" + encPath(k), { dc: r.dc, method: "DELETE", params: isFolder ? { recurse: "" } : {} });
            } catch (e) { showError(slot, e, "the key " + k); }
          },
        }, "Delete")));
    }), { class: "keys" }));
  };
  live("kv/" + encPath(folder), {
    dc: r.dc,
    params: { keys: "", separator: "/" },
    onData: drawKeys,
    onError: (e) => {
      if (e instanceof ApiError && e.status === 404) drawKeys([]);
      else showError(slot, e, "the keys under " + (folder || "the root"));
    },
  });
}

function decodeValue(b64) {
  if (!b64) return "";
  const bin = atob(b64);
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

function kvEditor(r, { key, value, flags, index, session, isNew, folder }) {
  const name = h("input", { type: "text", id: "kv-name", value: isNew ? "" : key, readonly: !isNew, placeholder: "key, or folder/ to make a folder" });
  const text = h("textarea", { id: "kv-value", rows: 12, spellcheck: "false" });
  text.value = value;
  const msg = h("p", { class: "muted", id: "kv-message" });
  const save = async (ev) => {
    ev.preventDefault();
    const full = isNew ? folder + name.value.trim() : key;
    if (!full || full === folder) { msg.textContent = "Give the key a name."; return; }
    const params = { flags: String(flags || 0) };
    if (!isNew) params.cas = String(index);
    try {
      const res = await api("kv/" + encPath(full), { dc: r.dc, method: "PUT", params, body: full.endsWith("/") ? "" : text.value });
      const ok = await res.json();
      if (ok === false) { msg.textContent = "Not saved: the key changed since it was loaded. Reload to see the new value."; return; }
      navigate(full.endsWith("/") ? kvHref(r.dc, full) : kvHref(r.dc, parentOf(full)));
    } catch (e) { msg.replaceChildren(errorBox(e, "the key")); }
  };
  const del = isNew ? null : h("button", {
    type: "button", class: "danger", id: "kv-delete", onclick: async () => {
      if (!confirm("Delete " + key + "?")) return;
      try {
        await api("kv/" + encPath(key), { dc: r.dc, method: "DELETE" });
        navigate(kvHref(r.dc, parentOf(key)));
      } catch (e) { msg.replaceChildren(errorBox(e, "the key")); }
    },
  }, "Delete");
  return h("form", { class: "kv-editor", onsubmit: save },
    h("label", {}, "Key", name),
    h("label", {}, "Value", text),
    session ? h("p", { class: "warn" }, "Locked by session " + session + ".") : null,
    h("div", { class: "toolbar" }, h("button", { type: "submit", id: "kv-save" }, "Save"), del,
      h("a", { href: kvHref(r.dc, isNew ? folder : parentOf(key)) }, "Cancel")),
    msg);
}

function parentOf(key) {
  const i = key.replace(/\/$/, "").lastIndexOf("/");
  return i < 0 ? "" : key.slice(0, i + 1);
}

async function kvEditPage(r) {
  const slot = h("div", { id: "kv-edit" }, h("p", { class: "muted" }, "Loading…"));
  page("kv-edit", crumbs(r.dc, parentOf(r.key)).concat([" / ", r.key.slice(parentOf(r.key).length)]), slot);
  const gen = state.gen;
  try {
    const res = await api("kv/" + encPath(r.key), { dc: r.dc, signal: state.abort.signal });
    const [e] = await res.json();
    if (gen !== state.gen) return;
    slot.replaceChildren(kvEditor(r, { key: r.key, value: decodeValue(e.Value), flags: e.Flags, index: e.ModifyIndex, session: e.Session }));
  } catch (e) {
    if (gen !== state.gen) return;
    if (e instanceof ApiError && e.status === 404) slot.replaceChildren(h("p", { class: "muted empty" }, "No key " + r.key + "."));
    else showError(slot, e, "the key " + r.key);
  }
}

function kvCreatePage(r) {
  const folder = r.folder && !r.folder.endsWith("/") ? r.folder + "/" : r.folder;
  page("kv-create", crumbs(r.dc, folder).concat([" / new key"]),
    kvEditor(r, { key: "", value: "", flags: 0, index: 0, isNew: true, folder }));
}

// ---- WAN pool ------------------------------------------------------------------------

const MEMBER_STATUS = { 0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed" };

function wanPage(r) {
  const slot = h("div", { id: "wan" }, h("p", { class: "muted" }, "Loading the WAN pool…"));
  page("wan", "WAN pool", h("p", { class: "muted" }, "The servers of every datacenter, as this agent's WAN gossip sees them."), slot);
  live("agent/members", {
    params: { wan: "1" },
    poll: true,
    onData: (members) => {
      if (!members.length) { slot.replaceChildren(h("p", { class: "muted empty" }, "This agent is in no WAN pool (only servers are).")); return; }
      const byDc = new Map();
      const order = state.dcs.map((d) => d.Name);
      for (const m of members) {
        const dc = (m.Tags && m.Tags.dc) || m.Name.split(".").pop();
        if (!byDc.has(dc)) byDc.set(dc, []);
        byDc.get(dc).push(m);
      }
      const dcs = [...byDc.keys()].sort((a, b) => {
        const ia = order.indexOf(a), ib = order.indexOf(b);
        return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || a.localeCompare(b);
      });
      slot.replaceChildren(...dcs.map((dc) => {
        const d = state.dcs.find((x) => x.Name === dc);
        return h("div", { class: "wan-dc", "data-dc": dc },
          h("h2", {}, h("span", { class: "dot " + (d ? reachText(d) : "unknown") }), dc, " ",
            h("span", { class: "muted" }, d ? rttText(d) + ", " + reachText(d) : "")),
          table(["Status", "Server", "Address"], byDc.get(dc).sort((a, b) => a.Name.localeCompare(b.Name)).map((m) => {
            const st = MEMBER_STATUS[m.Status] || String(m.Status);
            return h("tr", { class: "member", "data-member": m.Name, "data-status": st },
              h("td", {}, h("span", { class: "status " + st }, st)),
              h("td", {}, m.Name), h("td", {}, m.Addr + ":" + m.Port));
          })));
      }));
    },
    onError: (e) => {
      // An agent in no WAN pool (a client, or a server without TLS material) says why.
      if (e instanceof ApiError && /WAN|federat/i.test(e.message) && e.status === 500)
        slot.replaceChildren(h("p", { class: "muted empty" }, "This agent is in no WAN pool: " + e.message));
      else showError(slot, e, "the WAN pool");
    },
  });
}

// ---- login and not found ---------------------------------------------------------------

function loginForm(why) {
  const input = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "SecretID of an ACL token" });
  const msg = h("p", { class: "error", id: "login-error", hidden: true });
  return h("form", { class: "login", id: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    if (!t) return;
    const before = token();
    setToken(t);
    try {
      await api("acl/token/self");
      render();
    } catch (e) {
      setToken(before);
      msg.hidden = false;
      msg.textContent = e instanceof ApiError && e.status === 403 ? "The agent does not know this token." : e.message;
    }
  } }, h("h2", {}, "Log in"), h("p", {}, why), h("label", {}, "Token", input), h("button", { type: "submit" }, "Log in"), msg);
}

function showLogin() {
  newPage();
  page("login", "Log in", loginForm("ACLs are on: the token is kept in this browser and sent with every request."));
}

function notFoundPage(r) {
  page("not-found", "Page not found",
    h("p", {}, "There is no page at ", h("code", {}, location.pathname), "."),
    h("p", {}, h("a", { href: dcHref(r.dc || LOCAL_DC, "services") }, "Go to the services of " + (r.dc || LOCAL_DC))));
}

// ---- dispatch ---------------------------------------------------------------------------

function render() {
  newPage();
  const r = route(location.pathname);
  if (r.page === "home" || r.page === "dc-home") {
    navigate(dcHref(r.dc || LOCAL_DC, "services"), true);
    return;
  }
  state.dc = r.dc || LOCAL_DC;
  drawHeader(r);
  const titles = { services: "Services", service: r.name, instance: r.id, nodes: "Nodes", node: r.node,
    kv: "Key/Value", "kv-edit": r.key, "kv-create": "New key", wan: "WAN pool", "not-found": "Not found" };
  document.title = (titles[r.page] || "proconsul") + " · " + state.dc + " · proconsul";
  const pages = { services: servicesPage, service: servicePage, instance: instancePage, nodes: nodesPage,
    node: nodePage, kv: kvPage, "kv-edit": kvEditPage, "kv-create": kvCreatePage, wan: wanPage };
  (pages[r.page] || notFoundPage)(r);
}

render();
watchDatacenters();
