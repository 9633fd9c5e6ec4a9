#!/usr/bin/env node
// The load driver of benchmarks/peers.py: the real JS socket.io client (tests/js/node_modules:
// sio4 = socket.io-client 4.x for Engine.IO 4, sio2 = 2.x for Engine.IO 3, the Android app's
// revision) holding connections to several servers at once, so that windows can alternate
// between servers without a process start or a handshake in between.
//
//   node jsload.js '{"revision": "4"|"2", "name": "d0", "connections": K, "batch": 50,
//                    "targets": {KEY: URL, ...}, "frames": {LABEL: FILE, ...}}'
//
// Connects K websocket connections to every target and logs each in (4.x: auth in the connect,
// as benchmarks/loadclient.py; 2.x: authenticate(user, "", "onAuthentication"), as the app),
// at most `batch` handshakes at a time; then prints {"ready": true, "connected": {KEY: n}}.
// Then reads one JSON command a line on stdin and answers each with one JSON line on stdout:
//   {"cmd": "run", "id", "target", "frame": LABEL, "mode": "ack"|"emit", "window": W,
//    "fps": F, "event": "frame"|"receiveImage", "start_at": EPOCH_S, "duration": S}
//     every connection of the target, from start_at for duration: ack: `frame`(meta, jpeg) with
//     an ack, at most W in flight, as fast as acks return (F = 0) or at F Hz (a tick with W in
//     flight is skipped); emit: `event` without an ack at F Hz. Answer: sent, acked, accepted,
//     refused, skipped, unacked (no ack 3 s after the end), ack_ms, disconnects.
//   {"cmd": "close", "target"}: close its connections; {"cmd": "quit"}: close all, exit.
"use strict";
const fs = require("fs");
const path = require("path");
const readline = require("readline");

const cfg = JSON.parse(process.argv[2]);
const io = require(path.join(__dirname, "..", "tests", "js", "node_modules",
                             cfg.revision === "2" ? "sio2" : "sio4"));
const frames = {};
for (const [label, file] of Object.entries(cfg.frames)) frames[label] = fs.readFileSync(file);
const ACK_DRAIN_MS = 3000;
const CONNECT_TIMEOUT_MS = 30000;
const conns = {};  // target -> [{socket, disconnects, closing}]

function say(obj) { process.stdout.write(JSON.stringify(obj) + "\n"); }

function connectOne(url, user) {
  return new Promise((resolve) => {
    const options = { transports: ["websocket"], reconnection: false, forceNew: true };
    if (cfg.revision !== "2") options.auth = { username: user, password: "" };
    const socket = io(url, options);
    const conn = { socket, disconnects: 0, closing: false };
    const done = (ok) => { clearTimeout(timer); resolve(ok ? conn : null); };
    const timer = setTimeout(() => { socket.close(); done(false); }, CONNECT_TIMEOUT_MS);
    socket.on("connect_error", () => { socket.close(); done(false); });
    socket.on("disconnect", () => { if (!conn.closing) conn.disconnects += 1; });
    if (cfg.revision === "2") {
      socket.on("connect", () => socket.emit("authenticate", user, "", "onAuthentication"));
      socket.on("onAuthentication", (ok) => done(ok === true));
    } else {
      socket.on("connect", () => done(true));
    }
  });
}

async function connectAll() {
  const jobs = [];
  for (const [key, url] of Object.entries(cfg.targets)) {
    conns[key] = [];
    for (let i = 0; i < cfg.connections; i++) jobs.push([key, url, `${cfg.name}-${key}-${i}`]);
  }
  let next = 0;
  async function lane() {
    while (next < jobs.length) {
      const [key, url, user] = jobs[next++];
      const conn = await connectOne(url, user);
      if (conn) conns[key].push(conn);
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, cfg.batch || 50) }, lane));
  const connected = {};
  for (const key of Object.keys(conns)) connected[key] = conns[key].length;
  say({ ready: true, connected });
}

function runOne(conn, cmd, jpeg, end, tally) {
  // one connection's share of a window; resolves when it is over (acks drained, bounded)
  const socket = conn.socket;
  const window = cmd.window || 1;
  let inflight = 0;
  let n = 0;
  return new Promise((resolve) => {
    let ticking = true;
    const finish = () => {
      const until = Date.now() + ACK_DRAIN_MS;
      (function wait() {
        if (inflight === 0 || Date.now() >= until) {
          tally.unacked += inflight;
          resolve();
        } else {
          setTimeout(wait, 5);
        }
      })();
    };
    const sendAck = () => {
      inflight += 1;
      n += 1;
      tally.sent += 1;
      const t0 = process.hrtime.bigint();
      socket.emit("frame", { n, t: Date.now() }, jpeg, (res) => {
        inflight -= 1;
        tally.acked += 1;
        tally.ack_ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
        if (res && res.accepted === false) tally.refused += 1; else tally.accepted += 1;
        if (!cmd.fps) pump();
      });
    };
    const pump = () => {
      while (ticking && inflight < window && Date.now() < end && socket.connected) sendAck();
      if (ticking && (Date.now() >= end || !socket.connected)) { ticking = false; finish(); }
    };
    if (cmd.mode === "ack" && !cmd.fps) {
      pump();
      // an ack-paced connection also needs to notice the end when no ack comes back
      const guard = setInterval(() => {
        if (Date.now() >= end || !socket.connected) { clearInterval(guard); pump(); }
      }, 20);
      return;
    }
    const period = 1000 / cmd.fps;
    let due = Date.now() + Math.random() * period;  // connections spread over the period
    const tick = () => {
      if (Date.now() >= end || !socket.connected) { ticking = false; finish(); return; }
      const engine = socket.io.engine;
      if (cmd.mode === "ack") {
        if (inflight < window) sendAck(); else tally.skipped += 1;
      } else if (engine && ((engine.writeBuffer && engine.writeBuffer.length > 8) ||
                            (engine.transport && engine.transport.ws &&
                             engine.transport.ws.bufferedAmount > 8 * jpeg.length))) {
        tally.skipped += 1;  // the socket does not drain: do not queue without bound
      } else {
        socket.emit(cmd.event || "receiveImage", jpeg);
        tally.sent += 1;
      }
      due += period;
      setTimeout(tick, Math.max(0, due - Date.now()));
    };
    setTimeout(tick, Math.max(0, due - Date.now()));
  });
}

async function run(cmd) {
  const list = conns[cmd.target] || [];
  const tally = { id: cmd.id, target: cmd.target, connections: list.length, sent: 0, acked: 0,
                  accepted: 0, refused: 0, skipped: 0, unacked: 0, ack_ms: [] };
  const before = list.reduce((s, c) => s + c.disconnects, 0);
  await new Promise((r) => setTimeout(r, Math.max(0, cmd.start_at * 1000 - Date.now())));
  const end = (cmd.start_at + cmd.duration) * 1000;
  await Promise.all(list.map((c) => runOne(c, cmd, frames[cmd.frame], end, tally)));
  tally.disconnects = list.reduce((s, c) => s + c.disconnects, 0) - before;
  tally.ack_ms = tally.ack_ms.map((v) => Math.round(v * 1000) / 1000);
  say(tally);
}

function close(key) {
  for (const c of conns[key] || []) { c.closing = true; c.socket.close(); }
  conns[key] = [];
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();  // commands run one after the other
lines.on("line", (line) => {
  const cmd = JSON.parse(line);
  queue = queue.then(async () => {
    if (cmd.cmd === "run") await run(cmd);
    else if (cmd.cmd === "close") { close(cmd.target); say({ closed: cmd.target }); }
    else if (cmd.cmd === "quit") {
      for (const key of Object.keys(conns)) close(key);
      setTimeout(() => process.exit(0), 200);
    }
  });
});
lines.on("close", () => process.exit(0));
connectAll();
