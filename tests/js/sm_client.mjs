#!/usr/bin/env node
// A real JavaScript XMPP client (xmpp.js, @xmpp/client 0.14) driven by the Python tests
// (tests/helpers/xmppjs.py) for XEP-0198 Stream Management tests.
//
// Protocol: one JSON object per line on stdin (commands), one JSON object per line on stdout (events).
// Every command may carry "seq"; the reply event {"event":"ok"|"error", "seq":…} echoes it.
//
// Commands
//   {"cmd":"connect","service":"xmpp://127.0.0.1:5222","domain":"example.com","username":"alice",
//    "password":"…","resource":"js",            resource: the bind resource (SASL1) / Bind2 <tag> (SASL2)
//    "presence":true,                            send initial <presence/> when online (default true)
//    "reconnect_delay":100,                      ms before @xmpp/reconnect reconnects (xmpp.js default 1000)
//    "request_ack_interval":30000, "request_ack_debounce":250, "sm_timeout":60000,
//    "sm_max":null, "timeout":2000}             xmpp.js' own SM timers and stream timeout
//   {"cmd":"send","to":"bob@example.com","body":"hi","id":"m1","type":"chat"}   → {"event":"sent","id":…}
//   {"cmd":"send_xml","xml":"<r xmlns='urn:xmpp:sm:3'/>"}                        any element, verbatim
//   {"cmd":"presence"}                                                           <presence/>
//   {"cmd":"request_ack"} / {"cmd":"ack"}      send <r/> / <a h=inbound/> now
//   {"cmd":"state"}                            → {"event":"state", status, jid, sm:{enabled,id,inbound,outbound,queued,max}}
//   {"cmd":"set_service","service":"xmpps://127.0.0.1:5223"}   where the next reconnect goes
//   {"cmd":"kill_socket","mode":"destroy"|"reset"}   drop the TCP/TLS socket without closing the stream
//                                                    (reset: TCP RST); xmpp.js then reconnects and resumes
//   {"cmd":"stop"}                             graceful: <a/>, </stream:stream>, then offline
//   {"cmd":"restart"}                          stop gracefully, then log in again with the same client
//                                              object (a new session; its FAST token, if it got one)
//   {"cmd":"fast_token"}                       → {"token": {"mechanism","expiry","token"} | null}: the
//                                              XEP-0484 token @xmpp/fast saved (in memory)
//   {"cmd":"set_fast_token","token":{…}|null}  replace (or forget) the saved token
//   {"cmd":"exit"}                             stop if needed and exit the process (also on stdin EOF)
//
// Events
//   {"event":"ready"}                                          process started, commands accepted
//   {"event":"status","status":"connecting"|"open"|"online"|"disconnect"|…}
//   {"event":"online","jid":"…","resumed":false,"ms":N}       a new session (bound); ms since "connecting"
//   {"event":"authenticate","mechanism":"…","fast":bool,"request_token":bool,"resume":bool,"bind":bool,
//    "ms":N}                                                   a SASL2 <authenticate/> sent (XEP-0388)
//   {"event":"sasl2_success","jid":"…","children":["bound",…],"ms":N}   SASL2 <success/> received
//   {"event":"sasl2_failure","condition":"…","text":…}        SASL2 <failure/> received
//   {"event":"fast_token","expiry":"…","mechanism":"…"}       a XEP-0484 <token/> received (and saved)
//   {"event":"sm_resumed","previd":"…","h":"N","ms":N}        <resumed/> received (before re-sent stanzas)
//   {"event":"resumed","jid":"…","id":"…","h":"N","inbound":N} xmpp.js' sm "resumed": resumption done, its
//                                                              unacked stanzas re-sent (after the server's)
//   {"event":"sm_enabled","id":"…","resume":"true","max":"…","location":…}
//   {"event":"sm_failed","condition":"item-not-found","during":"resume"|"enable","h":…}
//   {"event":"sm_ack","id":"…","name":"message"}              one of our stanzas acknowledged by the server
//   {"event":"sm_fail","id":"…","name":"message"}             one of our stanzas given up (never acked)
//   {"event":"message","from":"…","to":"…","type":"…","body":"…","id":"…","delay":"stamp"|null}
//   {"event":"stanza","name":"presence"|"iq","from":…,"type":…,"id":…}   other inbound stanzas
//   {"event":"reconnecting"} / {"event":"reconnected"}
//   {"event":"socket_killed","mode":…}
//   {"event":"error","text":"…","condition":…}
//   {"event":"offline"}
//
// XMPPJS_DEBUG=1 logs every element in and out on stderr ("<- name xmlns attrs" / "-> …").

import readline from "node:readline";
import net from "node:net";
import tls from "node:tls";

import { client, xml } from "@xmpp/client";

const SM_NS = "urn:xmpp:sm:3";
const SASL2_NS = "urn:xmpp:sasl:2";
const BIND2_NS = "urn:xmpp:bind:0";
const FAST_NS = "urn:xmpp:fast:0";
const DEBUG = !!process.env.XMPPJS_DEBUG && process.env.XMPPJS_DEBUG !== "0";

// Node 20 has no global WebSocket; xmpp.js' ws:// and wss:// transport needs one.
if (typeof globalThis.WebSocket === "undefined") {
  try {
    const { WebSocket } = await import("ws");
    globalThis.WebSocket = WebSocket;
  } catch {
    // ws not installed: only xmpp:// and xmpps:// work
  }
}

// xmpps:// dials the service's host (an IP address in tests) and xmpp.js passes no servername, so
// Node would send no SNI and check the certificate against the IP. Use the XMPP domain instead, as
// STARTTLS does (@xmpp/starttls passes host: domain); @xmpp/tls calls tls.connect through the module.
let tlsServername = null;
const tlsConnect = tls.connect;
tls.connect = function connect(options, ...rest) {
  if (options && typeof options === "object" && !options.servername && !options.socket && tlsServername) {
    options = { ...options, servername: tlsServername };
  }
  return tlsConnect.call(this, options, ...rest);
};

// Only @xmpp/client (and ws) are direct dependencies: no imports of its internal packages.
function makeId() {
  return Math.random().toString(36).slice(2, 12) || "id";
}

function parse(text) {
  // one element, with its children (@xmpp/xml's Parser expects a stream: wrap it in one)
  const parser = new xml.Parser();
  let root = null;
  let error = null;
  parser.on("start", (el) => (root = el));
  parser.on("element", (el) => root.append(el));
  parser.on("error", (err) => (error = err));
  parser.write(`<x xmlns="jabber:client">${text}</x>`);
  parser.end();
  if (error) throw error;
  const children = root?.getChildElements() ?? [];
  if (children.length !== 1) throw new Error(`send_xml wants one element, got ${children.length}`);
  const el = children[0];
  el.parent = null;
  return el;
}

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + "\n");
}

function debug(...args) {
  if (DEBUG) process.stderr.write(`[xmppjs ${new Date().toISOString()}] ${args.join(" ")}\n`);
}

function describe(el) {
  const attrs = Object.entries(el.attrs || {})
    .filter(([k]) => k !== "xmlns")
    .map(([k, v]) => `${k}=${JSON.stringify(String(v))}`)
    .join(" ");
  const ns = el.attrs?.xmlns ?? (typeof el.getNS === "function" ? el.getNS() : "");
  return `${el.name}${ns ? ` {${ns}}` : ""}${attrs ? " " + attrs : ""}`;
}

function errorText(err) {
  if (!err) return "unknown error";
  return err.message || err.condition || String(err);
}

let xmpp = null;
let presenceOnOnline = true;
let rawSocket = null; // the TCP-level socket of the current connection (under STARTTLS's TLSSocket)
let lastResumedH = null;
let connectStarted = null; // performance.now() at the last "connecting" status

function sinceConnect() {
  return connectStarted == null ? null : Math.round((performance.now() - connectStarted) * 10) / 10;
}

function innerSockets(entity) {
  // xmpp:// → net.Socket; xmpps:// → @xmpp/tls Socket wrapping a tls.TLSSocket;
  // xmpp:// after STARTTLS → @xmpp/tls Socket wrapping a tls.TLSSocket that wraps the net.Socket.
  const out = [];
  let s = entity?.socket;
  const seen = new Set();
  while (s && !seen.has(s)) {
    seen.add(s);
    out.push(s);
    s = s.socket ?? s._parent ?? null;
  }
  if (rawSocket && !seen.has(rawSocket)) out.push(rawSocket);
  return out;
}

function watchSM(entity) {
  // xmpp.js does not emit an event when SM is enabled (it only sets sm.enabled / sm.id), so the
  // <enabled/> and <failed/> nonzas are observed directly: top level (SASL1 + <enable/>) or inside
  // SASL2 <success/> (inline, XEP-0388 + XEP-0386).
  let resumeSent = false;
  entity.on("send", (el) => {
    if (el.is("resume", SM_NS)) resumeSent = true;
    if (el.is("enable", SM_NS)) resumeSent = false;
    if (el.is("authenticate", SASL2_NS)) {
      resumeSent = !!el.getChild("resume", SM_NS);
      emit("authenticate", {
        mechanism: el.attrs.mechanism ?? null,
        fast: !!el.getChild("fast", FAST_NS),
        request_token: !!el.getChild("request-token", FAST_NS),
        resume: resumeSent,
        bind: !!el.getChild("bind", BIND2_NS),
        ms: sinceConnect(),
      });
    }
    if (DEBUG) debug("->", describe(el));
  });
  entity.on("element", (el) => {
    if (DEBUG) debug("<-", describe(el));
    let enabled = null;
    let failed = null;
    if (el.is("enabled", SM_NS)) enabled = el;
    if (el.is("failed", SM_NS)) failed = el;
    let resumed = null;
    if (el.is("resumed", SM_NS)) resumed = el;
    if (el.is("failure", SASL2_NS)) {
      const cond = el.getChildElements().find((c) => c.name !== "text");
      emit("sasl2_failure", { condition: cond?.name ?? null, text: el.getChildText("text") });
    }
    if (el.is("success", SASL2_NS)) {
      emit("sasl2_success", {
        jid: el.getChildText("authorization-identifier"),
        children: el.getChildElements().map((c) => c.name),
        ms: sinceConnect(),
      });
      const token = el.getChild("token", FAST_NS);
      if (token) emit("fast_token", { expiry: token.attrs.expiry ?? null, mechanism: entity.fast?.mechanism ?? null });
      resumed = el.getChild("resumed", SM_NS);
      enabled = el.getChild("bound", BIND2_NS)?.getChild("enabled", SM_NS) ?? null;
      failed = el.getChild("failed", SM_NS) ?? null;
      if (DEBUG) for (const child of el.getChildElements()) debug("<-   inline", describe(child));
    }
    if (resumed) {
      // Emitted when <resumed/> arrives, so it comes before the stanzas the server re-sends right
      // after it; xmpp.js' own "resumed" (below) fires later, after it has re-sent its unacked queue.
      lastResumedH = resumed.attrs.h ?? null;
      emit("sm_resumed", { previd: resumed.attrs.previd ?? null, h: lastResumedH, ms: sinceConnect() });
      resumeSent = false;
    }
    if (enabled) {
      emit("sm_enabled", {
        id: enabled.attrs.id ?? null,
        resume: enabled.attrs.resume ?? null,
        max: enabled.attrs.max ?? null,
        location: enabled.attrs.location ?? null,
      });
    }
    if (failed) {
      const cond = failed.getChildElements().find((c) => c.name !== "text");
      emit("sm_failed", {
        condition: cond?.name ?? null,
        h: failed.attrs.h ?? null,
        during: resumeSent ? "resume" : "enable",
      });
      resumeSent = false;
    }
  });
}

function makeClient(opts) {
  const c = client({
    service: opts.service,
    domain: opts.domain,
    username: opts.username,
    password: opts.password,
    resource: opts.resource,
    ...(opts.timeout ? { timeout: opts.timeout } : {}),
  });
  if (opts.timeout) c.timeout = opts.timeout;
  if (opts.reconnect_delay != null) c.reconnect.delay = opts.reconnect_delay;
  const sm = c.streamManagement;
  if (opts.request_ack_interval != null) sm.requestAckInterval = opts.request_ack_interval;
  if (opts.request_ack_debounce != null) sm.requestAckDebounce = opts.request_ack_debounce;
  if (opts.sm_timeout != null) sm.timeout = opts.sm_timeout;
  if (opts.sm_max != null) sm.preferredMaximum = opts.sm_max;

  watchSM(c);

  c.on("error", (err) => emit("error", { text: errorText(err), condition: err?.condition ?? null }));
  c.on("status", (status) => {
    if (status === "connecting") connectStarted = performance.now();
    emit("status", { status });
    if (status === "connect") rawSocket = c.socket?.socket ?? c.socket;
  });
  c.on("online", (jid) => {
    emit("online", { jid: String(jid ?? c.jid), resumed: false, ms: sinceConnect() });
    if (presenceOnOnline) c.send(xml("presence")).catch((e) => emit("error", { text: errorText(e) }));
  });
  c.on("offline", () => emit("offline"));
  c.on("stanza", (st) => {
    if (st.is("message")) {
      emit("message", {
        from: st.attrs.from ?? null,
        to: st.attrs.to ?? null,
        type: st.attrs.type ?? null,
        id: st.attrs.id ?? null,
        body: st.getChildText("body"),
        delay: st.getChild("delay", "urn:xmpp:delay")?.attrs.stamp ?? null,
      });
    } else {
      emit("stanza", {
        name: st.name,
        from: st.attrs.from ?? null,
        type: st.attrs.type ?? null,
        id: st.attrs.id ?? null,
      });
    }
  });
  sm.on("resumed", () => emit("resumed", { jid: String(c.jid), id: sm.id, h: lastResumedH, inbound: sm.inbound }));
  sm.on("ack", (st) => emit("sm_ack", { id: st?.attrs?.id ?? null, name: st?.name ?? null }));
  sm.on("fail", (st) => emit("sm_fail", { id: st?.attrs?.id ?? null, name: st?.name ?? null }));
  c.reconnect.on("reconnecting", () => emit("reconnecting"));
  c.reconnect.on("reconnected", () => emit("reconnected"));
  return c;
}

function requireClient() {
  if (!xmpp) throw new Error("not connected: send a connect command first");
  return xmpp;
}

async function handle(cmd) {
  switch (cmd.cmd) {
    case "connect": {
      if (xmpp && xmpp.status !== "offline") throw new Error(`already ${xmpp.status}`);
      presenceOnOnline = cmd.presence ?? true;
      tlsServername = cmd.domain ?? null;
      xmpp = makeClient(cmd);
      xmpp.start().catch((err) => emit("error", { text: errorText(err), condition: err?.condition ?? null, during: "start" }));
      return {};
    }
    case "send": {
      const c = requireClient();
      const id = cmd.id ?? makeId();
      const msg = xml("message", { to: cmd.to, type: cmd.type ?? "chat", id }, xml("body", {}, String(cmd.body ?? "")));
      await c.send(msg);
      emit("sent", { id, to: cmd.to });
      return { id };
    }
    case "send_xml": {
      const c = requireClient();
      await c.send(parse(cmd.xml));
      return {};
    }
    case "presence": {
      await requireClient().send(xml("presence", cmd.type ? { type: cmd.type } : {}));
      return {};
    }
    case "request_ack": {
      await requireClient().send(xml("r", { xmlns: SM_NS }));
      return {};
    }
    case "ack": {
      const c = requireClient();
      await c.send(xml("a", { xmlns: SM_NS, h: c.streamManagement.inbound }));
      return {};
    }
    case "state": {
      const c = xmpp;
      const sm = c?.streamManagement;
      const state = {
        status: c?.status ?? "offline",
        jid: c?.jid ? String(c.jid) : null,
        service: c?.options.service ?? null,
        sm: sm
          ? { enabled: sm.enabled, id: sm.id, inbound: sm.inbound, outbound: sm.outbound, queued: sm.outbound_q.length, max: sm.max }
          : null,
      };
      emit("state", state);
      return state;
    }
    case "set_service": {
      requireClient().options.service = cmd.service;
      return {};
    }
    case "kill_socket": {
      const c = requireClient();
      const mode = cmd.mode ?? "destroy";
      const socks = innerSockets(c);
      if (socks.length === 0) throw new Error(`no socket (status ${c.status})`);
      const raw = socks.filter((s) => s instanceof net.Socket);
      if (mode === "reset") {
        // RST on the TCP socket underneath everything (a TLSSocket is a net.Socket too: prefer the plain one)
        const tcp = raw.filter((s) => !s.encrypted);
        for (const s of tcp.length ? tcp : raw) {
          try {
            s.resetAndDestroy();
          } catch {
            s.destroy();
          }
        }
      }
      for (const s of raw) s.destroy();
      emit("socket_killed", { mode });
      return {};
    }
    case "stop": {
      if (xmpp && xmpp.status !== "offline") {
        xmpp.reconnect.stop();
        await xmpp.stop();
      }
      return {};
    }
    case "restart": {
      const c = requireClient();
      c.reconnect.stop();
      if (c.status !== "offline") await c.stop();
      c.reconnect.start();
      c.start().catch((err) => emit("error", { text: errorText(err), condition: err?.condition ?? null, during: "start" }));
      return {};
    }
    case "fast_token": {
      const token = (await requireClient().fast.fetchToken()) ?? null;
      return { token };
    }
    case "set_fast_token": {
      const c = requireClient();
      if (cmd.token) await c.fast.saveToken(cmd.token);
      else await c.fast.deleteToken();
      return {};
    }
    case "exit": {
      await shutdown(0);
      return {};
    }
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
  }
}

let exiting = false;
async function shutdown(code) {
  if (exiting) return;
  exiting = true;
  if (xmpp && xmpp.status !== "offline") {
    xmpp.reconnect.stop();
    try {
      await Promise.race([xmpp.stop(), new Promise((r) => setTimeout(r, 2000))]);
    } catch {}
  }
  process.stdout.write("", () => process.exit(code));
}

process.on("unhandledRejection", (err) => emit("error", { text: `unhandled rejection: ${errorText(err)}` }));
process.on("uncaughtException", (err) => emit("error", { text: `uncaught exception: ${err?.stack ?? err}` }));

const rl = readline.createInterface({ input: process.stdin });
// Commands run one after the other, in the order they arrive.
let chain = Promise.resolve();
rl.on("line", (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (err) {
      emit("error", { text: `bad command line: ${errorText(err)}`, line });
      return;
    }
    debug("cmd", line);
    try {
      const result = await handle(cmd);
      emit("ok", { cmd: cmd.cmd, seq: cmd.seq ?? null, ...result });
    } catch (err) {
      emit("error", { cmd: cmd.cmd, seq: cmd.seq ?? null, text: errorText(err) });
    }
  });
});
rl.on("close", () => {
  chain.then(() => shutdown(0));
});

emit("ready", { node: process.version });
