// Meridian dashboard: renders the snapshots of /dashboard/events (server-sent events, one a second).
// Every value from the server goes through textContent or an attribute, never innerHTML.
"use strict";

const prefix = document.body.dataset.prefix || "/dashboard";
const SVG = "http://www.w3.org/2000/svg";
let paused = false;
let lastSnapshot = null;
let lastAnnounced = "";

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.setAttribute("class", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
function sum(v) {
  if (typeof v === "number") return v;
  if (v && typeof v === "object") return Object.values(v).reduce((a, b) => a + sum(b), 0);
  return 0;
}
function fmt(v, digits = 0) { return num(v).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits }); }
function ms(v) { return typeof v === "number" ? `${v.toFixed(v < 10 ? 2 : 1)} ms` : "–"; }
function slug(name) { return "region-" + String(name).replace(/[^A-Za-z0-9_-]/g, "_"); }

function roles(status) {
  const gateways = new Set(Array.isArray(status.gateways) ? status.gateways.map(String) : []);
  if (status.gateway) gateways.add(String(status.gateway));
  const members = Array.isArray(status.members) ? status.members.map(String) : [];
  const nodes = members.filter((m) => !gateways.has(m));
  return { nodes, gateways: [...gateways].sort() };
}

// One entry per ordered pair (from, to) as the sending region reports it.
function linkRows(regions) {
  const rows = [];
  for (const [from, st] of Object.entries(regions)) {
    for (const [to, l] of Object.entries(st.links || {})) rows.push({ from, to, ...l });
  }
  return rows.sort((a, b) => (a.from + a.to).localeCompare(b.from + b.to));
}

function renderMap(regions) {
  const names = Object.keys(regions);
  const gLinks = document.getElementById("map-links");
  const gRegions = document.getElementById("map-regions");
  gLinks.replaceChildren();
  gRegions.replaceChildren();
  // Two regions side by side; more on an ellipse in a taller drawing (room for members and labels).
  const W = 800, H = names.length > 2 ? 460 : 300, cx = W / 2, cy = H / 2;
  const svg = document.getElementById("map");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.style.height = names.length > 2 ? "440px" : "320px";
  const pos = {};
  names.forEach((n, i) => {
    if (names.length === 1) pos[n] = [cx, cy];
    else if (names.length === 2) pos[n] = [i === 0 ? 190 : 610, cy];
    else {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
      pos[n] = [cx + 280 * Math.cos(a), cy + 120 * Math.sin(a)];
    }
  });
  const rows = linkRows(regions);
  const done = new Set();
  for (const r of rows) {
    if (!pos[r.from] || !pos[r.to]) continue;
    const key = [r.from, r.to].sort().join("\u0000");
    if (done.has(key)) continue;
    done.add(key);
    const back = rows.find((x) => x.from === r.to && x.to === r.from);
    const up = Boolean(r.up) && (!back || Boolean(back.up));
    const [x1, y1] = pos[r.from], [x2, y2] = pos[r.to];
    const lat = [r, back].filter((x) => x && typeof x.rttMs === "number").map((x) => `${x.from}→${x.to} ${ms(x.rttMs)}`);
    const label = `${up ? "up" : "down"}${lat.length ? " · " + lat.join(" · ") : ""}`;
    gLinks.append(el("svg:line", { x1, y1, x2, y2, class: `link-line ${up ? "up" : "down"}`, "data-link": key.replace("\u0000", "-") },
      el("svg:title", {}, `link ${r.from} ↔ ${r.to}: ${label}`)));
    // The label sits beside the line's middle, on the side away from the drawing's centre.
    const len = Math.hypot(x2 - x1, y2 - y1) || 1;
    let nx = -(y2 - y1) / len, ny = (x2 - x1) / len;
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    if ((mx + nx - cx) ** 2 + (my + ny - cy) ** 2 < (mx - cx) ** 2 + (my - cy) ** 2) { nx = -nx; ny = -ny; }
    if (Math.abs(nx) < 1e-6 && Math.abs(mx - cx) < 1e-6 && names.length === 2) { nx = 0; ny = -1; }
    gLinks.append(el("svg:text", { x: mx + 14 * nx, y: my + 14 * ny + 4, class: "link-label" }, label));
  }
  for (const n of names) {
    const st = regions[n];
    const [x, y] = pos[n];
    const { nodes, gateways } = roles(st);
    const a = el("svg:a", { href: `#${slug(n)}`, "data-region": n,
      "aria-label": `Region ${n}: ${nodes.length} nodes, ${gateways.length} gateways, ${num(st.sessions)} sessions` });
    a.append(el("svg:circle", { cx: x, cy: y, r: 62, class: "region-circle" + (st.stale ? " stale" : "") }));
    a.append(el("svg:text", { x, y: y - 4, class: "region-name" }, n));
    a.append(el("svg:text", { x, y: y + 16, class: "region-sub" }, `${num(st.sessions)} session${num(st.sessions) === 1 ? "" : "s"}`));
    const members = [...nodes.map((m) => [m, "node"]), ...gateways.map((m) => [m, "gateway"])];
    members.forEach(([m, kind], i) => {
      const ang = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(members.length, 1);
      const mx = x + 80 * Math.cos(ang), my = y + 80 * Math.sin(ang);
      const shape = kind === "gateway"
        ? el("svg:rect", { x: mx - 8, y: my - 8, width: 16, height: 16, rx: 2, class: `member ${kind}` })
        : el("svg:circle", { cx: mx, cy: my, r: 8, class: `member ${kind}` });
      shape.append(el("svg:title", {}, `${kind} ${m}`));
      a.append(shape);
      const below = Math.sin(ang) >= 0;
      a.append(el("svg:text", { x: mx, y: my + (below ? 24 : -14), class: "member-label" }, m));
    });
    gRegions.append(a);
  }
}

function renderLinks(regions) {
  const tbody = document.querySelector("#links tbody");
  const rows = linkRows(regions);
  if (!rows.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 11, class: "muted" }, "No inter-region links reported.")));
    return;
  }
  tbody.replaceChildren(...rows.map((r) => el("tr", { "data-link": `${r.from}-${r.to}` },
    el("th", { scope: "row" }, r.from), el("td", {}, r.to),
    el("td", { class: r.up ? "state-up" : "state-down" }, r.up ? "up" : "down"),
    el("td", { class: "num" }, `${fmt(r.connections)}/${fmt(r.wanted)}`),
    el("td", { class: "num" }, ms(r.rttMs)),
    el("td", { class: "num" }, fmt(r.queue)), el("td", { class: "num" }, fmt(r.inFlight)),
    el("td", { class: "num" }, fmt(r.sent)), el("td", { class: "num" }, fmt(r.received)),
    el("td", { class: "num" }, fmt(r.queueFull)), el("td", {}, r.lastError || "–"))));
}

// The S2S status is whatever the gateway publishes under "s2s": a list of peers or a mapping.
function describeS2S(s2s) {
  if (s2s === undefined || s2s === null) return null;
  const items = [];
  const peers = Array.isArray(s2s) ? s2s : (s2s.peers !== undefined ? s2s.peers : s2s);
  if (Array.isArray(peers)) {
    for (const p of peers) items.push(typeof p === "object" && p ? [p.domain || p.peer || p.name || "?", p] : [String(p), null]);
  } else if (typeof peers === "object") {
    for (const [k, v] of Object.entries(peers)) items.push([k, v]);
  }
  if (!items.length) return el("span", { class: "muted" }, "no peers");
  return el("ul", { class: "plain" }, ...items.map(([name, v]) => {
    let detail = "";
    if (v && typeof v === "object") {
      detail = Object.entries(v).filter(([k]) => !["domain", "peer", "name"].includes(k))
        .map(([k, x]) => `${k} ${typeof x === "object" ? JSON.stringify(x) : x}`).join(", ");
    } else if (v !== null && v !== undefined) detail = String(v);
    return el("li", { "data-s2s-peer": name }, name, detail ? ` — ${detail}` : "");
  }));
}

// The rooms a region's gateway holds (the muc module's "rooms" query): counts and the fullest rooms.
function describeRooms(muc) {
  if (!muc || typeof muc !== "object") return null;
  const fullest = Array.isArray(muc.fullest) ? muc.fullest : [];
  const summary = el("span", { "data-rooms-total": num(muc.rooms) },
    `${fmt(muc.rooms)} rooms, ${fmt(muc.occupants)} occupants`);
  if (!fullest.length) return summary;
  return el("div", {}, summary, el("ul", { class: "rooms" }, ...fullest.map((r) => {
    const jid = String(r && r.room || "?");
    const title = r && r.title ? ` (${r.title})` : "";
    return el("li", { "data-room": jid, "data-occupants": num(r && r.occupants) },
      `${jid}${title}: ${fmt(r && r.occupants)} occupants`);
  })));
}

function conflicts(st) {
  const c = st.cluster;
  if (!c || typeof c !== "object") return el("span", { class: "muted" }, "not reported");
  const nodes = c.conflictNodes || [], tables = c.conflictTables || [], down = c.unavailableNodes || [];
  const list = Array.isArray(nodes) ? nodes : Object.keys(nodes);
  if (!list.length && !tables.length && !down.length) return "none";
  const parts = [];
  if (list.length) parts.push(`nodes: ${list.join(", ")}`);
  if (tables.length) parts.push(`tables: ${tables.join(", ")}`);
  if (down.length) parts.push(`unavailable: ${down.join(", ")}`);
  return el("span", { class: "warn" }, parts.join("; "));
}

function bytes(v) {
  const n = num(v);
  if (n < 1024) return `${fmt(n)} B`;
  const units = ["K", "M", "G", "T"];
  let x = n / 1024, i = 0;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return `${fmt(x, x < 10 ? 1 : 0)} ${units[i]}`;
}

// Client transports of the region's nodes (TCP, WebSocket, BOSH), summed by the gateway: a line of
// open connections for the card's list, and a table (per transport; per node what is open) below it.
const TRANSPORT_ORDER = ["tcp", "websocket", "bosh"];
function transportNames(t) {
  const rank = (n) => (TRANSPORT_ORDER.indexOf(n) + 1) || 99;
  return Object.keys(t).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

function transportsLine(st) {
  const t = st.transports;
  if (!t || typeof t !== "object" || !Object.keys(t).length) return el("span", { class: "muted" }, "not reported");
  return transportNames(t).map((n) => `${n} ${fmt((t[n] || {}).connections)}`).join(" · ") + " open";
}

function transportsTable(st) {
  const t = st.transports;
  if (!t || typeof t !== "object" || !Object.keys(t).length) return null;
  const names = transportNames(t);
  const table = el("table", { class: "transports" },
    el("caption", { class: "visually-hidden" }, "Client connections, stanzas and bytes per transport"),
    el("thead", {}, el("tr", {}, ...["transport", "open", "since start", "stanzas in / out", "bytes in / out"]
      .map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...names.map((n) => {
      const c = t[n] || {};
      return el("tr", { "data-transport": n }, el("th", { scope: "row" }, n),
        el("td", { class: "num", "data-field": "connections" }, fmt(c.connections)),
        el("td", { class: "num", "data-field": "accepted" }, fmt(c.accepted)),
        el("td", { class: "num" }, `${fmt(c.stanzasIn)} / ${fmt(c.stanzasOut)}`),
        el("td", { class: "num" }, `${bytes(c.bytesIn)} / ${bytes(c.bytesOut)}`));
    })));
  const perNode = st.nodeTransports && typeof st.nodeTransports === "object" ? Object.entries(st.nodeTransports) : [];
  return el("div", { class: "transports-block", "data-metric": "transports" }, table,
    perNode.length ? el("ul", { class: "plain muted" }, ...perNode.map(([node, open]) =>
      el("li", { "data-node": node }, `${node}: ` + names.map((n) => `${n} ${fmt((open || {})[n])}`).join(", ")
        + " open"))) : null);
}

function row(label, value, metric) {
  return [el("dt", {}, label), el("dd", metric ? { "data-metric": metric } : {}, value)];
}

function regionCard(name, st, localRegion) {
  const { nodes, gateways } = roles(st);
  const c = st.counters || {};
  const rates = st.rates || {};
  const links = Object.values(st.links || {});
  const linkQueue = links.reduce((a, l) => a + num(l.queue), 0);
  const redis = st.redis || {};
  const items = [
    ...row("Nodes", el("ul", { class: "members" }, ...nodes.map((m) => el("li", { class: "node" }, m)))),
    ...row("Gateways", el("ul", { class: "members" }, ...gateways.map((m) => el("li", { class: "gateway" }, m)))),
    ...row("Sessions", fmt(st.sessions), "sessions"),
    ...row("Relayed", `${fmt(rates.relayedPerSec, 1)}/s (total ${fmt(sum(c.relayed))})`, "relayed"),
    ...row("Received", `${fmt(rates.receivedPerSec, 1)}/s (total ${fmt(sum(c.received))})`, "received"),
    ...row("Bounces", `${fmt(c.bounced)} (${fmt(rates.bouncedPerSec, 1)}/s), TTL drops ${fmt(c.ttlDrops)}`, "bounced"),
    ...row("Queues", `pairs ${fmt(st.pairQueue)}, links ${fmt(linkQueue)}`, "queues"),
    ...row("Errors", `link ${fmt(c.linkErrors)}, Redis ${fmt(c.redisErrors)}`, "errors"),
    ...row("Redis", st.redis ? `reads ${redis.reads ? "ok" : "failing"}, writes ${redis.writes ? "ok" : "failing"}`
      : "not reported", "redis"),
    ...row("Cache", st.cache ? `${fmt(st.cache.size)} entries, ${fmt(st.cache.hits)} hits, ${fmt(st.cache.misses)} misses` : "–"),
    ...row("Cluster conflicts", conflicts(st), "conflicts"),
    ...row("Client transports", transportsLine(st), "transports-open"),
  ];
  const s2s = describeS2S(st.s2s);
  if (s2s) items.push(...row("S2S peers", s2s, "s2s"));
  const rooms = describeRooms(st.muc);
  if (rooms) items.push(...row("Rooms (MUC)", rooms, "rooms"));
  const title = `${name}${name === localRegion ? " (this gateway's region)" : ""}`;
  return el("article", { class: "card", id: slug(name), "data-region": name, tabindex: -1, "aria-labelledby": slug(name) + "-h" },
    el("h3", { id: slug(name) + "-h" }, title),
    el("p", { class: "muted" }, `status from ${st.gateway || "?"}`),
    el("dl", {}, ...items),
    transportsTable(st));
}

function renderLocal(local) {
  const box = document.getElementById("local");
  if (!local || !local.region) {
    box.replaceChildren(el("p", { class: "muted" }, "Not served by a gateway."));
    return;
  }
  const c = local.counters || {};
  box.replaceChildren(el("div", { class: "card" }, el("dl", {},
    ...row("Gateway", `${local.gateway} in region ${local.region}`),
    ...row("Members joined", (local.members || []).join(", ")),
    ...row("Relayed (total)", fmt(sum(c.relayed)), "local-relayed"),
    ...row("Lookups", `${fmt(c.lookups)} (handled locally ${fmt(c.handledLocally)})`),
    ...row("Cluster conflicts", conflicts(local)))));
}

function render(snap) {
  lastSnapshot = snap;
  // Re-rendering replaces the elements: keep keyboard focus where it was.
  const active = document.activeElement;
  const inMap = Boolean(active && active.closest && active.closest("#map"));
  const focusKey = active && active !== document.body ? (inMap ? active.getAttribute("data-region") : active.id) : null;
  const regions = snap.regions || {};
  const names = Object.keys(regions);
  renderMap(regions);
  renderLinks(regions);
  const localRegion = snap.local && snap.local.region;
  document.getElementById("region-cards").replaceChildren(...names.map((n) => regionCard(n, regions[n], localRegion)));
  if (focusKey && (document.activeElement === document.body || !document.activeElement)) {
    const target = inMap ? document.querySelector(`#map a[data-region="${CSS.escape(focusKey)}"]`) : document.getElementById(focusKey);
    if (target) target.focus();
  }
  renderLocal(snap.local);
  const rate = names.reduce((a, n) => a + num((regions[n].rates || {}).relayedPerSec), 0);
  const sessions = names.reduce((a, n) => a + num(regions[n].sessions), 0);
  document.getElementById("summary").textContent =
    `${names.length} region${names.length === 1 ? "" : "s"} · ${fmt(sessions)} sessions · ${fmt(rate, 1)} stanzas/s relayed`;
  const when = new Date(num(snap.time) * 1000);
  const t = document.getElementById("updated");
  t.textContent = when.toLocaleTimeString();
  t.setAttribute("datetime", when.toISOString());
  const err = document.getElementById("error");
  err.hidden = !snap.error;
  err.textContent = snap.error || "";
  // Announce only changes of the topology, not every second's numbers.
  const links = linkRows(regions).map((r) => `${r.from} to ${r.to} ${r.up ? "up" : "down"}`);
  const text = `Regions: ${names.join(", ") || "none"}. Links: ${links.join(", ") || "none"}.`;
  if (text !== lastAnnounced) {
    lastAnnounced = text;
    document.getElementById("announce").textContent = text;
  }
}

function setConnection(state) {
  const badge = document.getElementById("connection");
  badge.dataset.state = paused ? "paused" : state;
  badge.textContent = paused ? "paused" : state;
}

function start() {
  fetch(`${prefix}/state`).then((r) => r.json()).then((s) => { if (!lastSnapshot) render(s); }).catch(() => {});
  const source = new EventSource(`${prefix}/events`);
  source.addEventListener("snapshot", (ev) => {
    setConnection("live");
    if (!paused) render(JSON.parse(ev.data));
  });
  source.addEventListener("open", () => setConnection("live"));
  source.addEventListener("error", () => setConnection("reconnecting"));
  const button = document.getElementById("pause");
  button.addEventListener("click", () => {
    paused = !paused;
    button.setAttribute("aria-pressed", String(paused));
    button.textContent = paused ? "Resume updates" : "Pause updates";
    setConnection("live");
  });
}

document.addEventListener("DOMContentLoaded", start);
