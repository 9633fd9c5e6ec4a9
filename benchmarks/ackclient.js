#!/usr/bin/env node
// One benchmark client that paces itself on acks: the JS socket.io-client 4.x (sio4, the
// current revision) or 2.x (sio2, Engine.IO 3, the Android app's revision) from
// tests/js/node_modules, websocket transport, authenticate(user, "", "onAuthentication"),
// then frame({n}, bytes) with an ack, keeping `window` frames in flight.
// Same protocol with the orchestrator as benchmarks/loadclient.py: one JSON argument
// {url, client, name, frame, window, duration, out, go, fps}; with fps > 0 at most fps
// frames a second (paced below capacity: the cost of a frame, not of saturation); writes `out + ".ready"` once logged
// in, waits for the `go` file (the start time, seconds since the epoch), sends, then writes
// `out` (JSON: sent, acked, accepted, refused, ack_ms percentiles).
"use strict";
const fs = require("fs");
const path = require("path");

const cfg = JSON.parse(process.argv[2]);
const lib = cfg.client === "2" ? "sio2" : "sio4";
const io = require(path.join(__dirname, "..", "tests", "js", "node_modules", lib));
const jpeg = fs.readFileSync(cfg.frame);
const windowSize = cfg.window || 1;
const report = { name: cfg.name, client: cfg.client, window: windowSize, sent: 0, acked: 0,
                 accepted: 0, refused: 0, dropped_seen: 0, disconnects: 0, bytes: jpeg.length };
const ackMs = [];
let startAt = 0;
let closing = false;

function finish() {
  ackMs.sort((a, b) => a - b);
  const pick = (q) => ackMs.length ? ackMs[Math.min(ackMs.length - 1,
                                                    Math.floor(q * ackMs.length))] : null;
  report.ack_ms = { p50: pick(0.5), p99: pick(0.99), max: pick(1) };
  fs.writeFileSync(cfg.out, JSON.stringify(report));
  process.exit(0);
}

const socket = io(cfg.url, { transports: ["websocket"], reconnection: false, forceNew: true });
const giveUp = setTimeout(() => { report.error = "no login reply"; finish(); }, 20000);
socket.on("connect", () => socket.emit("authenticate", cfg.name, "", "onAuthentication"));
socket.on("disconnect", () => { if (!closing) report.disconnects += 1; });
socket.on("onAuthentication", (ok) => {
  clearTimeout(giveUp);
  if (!ok) { report.error = "login refused"; finish(); }
  fs.writeFileSync(cfg.out + ".ready", "");
  waitGo(Date.now() + 60000);
});

function waitGo(deadline) {
  if (fs.existsSync(cfg.go)) {
    startAt = parseFloat(fs.readFileSync(cfg.go, "utf8"));
    setTimeout(run, Math.max(0, startAt * 1000 - Date.now()));
  } else if (Date.now() > deadline) {
    report.error = "no start signal";
    finish();
  } else {
    setTimeout(() => waitGo(deadline), 10);
  }
}

function run() {
  const end = (startAt + cfg.duration) * 1000;
  let inFlight = 0;
  const interval = cfg.fps > 0 ? 1000 / cfg.fps : 0;
  let next = Date.now();
  const paced = () => {
    if (!interval) return send();
    next = Math.max(next + interval, Date.now() - 1000);
    setTimeout(send, Math.max(0, next - Date.now()));
  };
  const send = () => {
    if (Date.now() >= end || !socket.connected) {
      if (inFlight === 0 && !closing) {
        closing = true;
        report.elapsed = Date.now() / 1000 - startAt;
        socket.close();
        finish();
      }
      return;
    }
    const t0 = process.hrtime.bigint();
    inFlight += 1;
    report.sent += 1;
    socket.emit("frame", { n: report.sent }, jpeg, (ack) => {
      inFlight -= 1;
      report.acked += 1;
      ackMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (ack && ack.accepted) report.accepted += 1; else report.refused += 1;
      if (ack && ack.dropped) report.dropped_seen = ack.dropped;
      paced();
    });
  };
  for (let i = 0; i < windowSize; i++) send();
  setTimeout(() => { if (!closing) { closing = true; finish(); } }, cfg.duration * 1000 + 5000);
}
