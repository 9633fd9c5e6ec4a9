#!/usr/bin/env node
// One legacy-revision benchmark client (Engine.IO 3 / Socket.IO 4), as the Android app talks:
// the JS socket.io-client 2.x from tests/js/node_modules (sio2), websocket transport,
// authenticate(user, "", "onAuthentication"), then receiveImage(bytes) without acks at `fps`.
// Same protocol with the orchestrator as benchmarks/loadclient.py: one JSON argument
// {url, name, frame, fps, duration, out, go}; writes `out + ".ready"` once logged in, waits for
// the `go` file (the start time, seconds since the epoch), sends, then writes `out` (JSON).
"use strict";
const fs = require("fs");
const path = require("path");

const cfg = JSON.parse(process.argv[2]);
const io = require(path.join(__dirname, "..", "tests", "js", "node_modules", "sio2"));
const jpeg = fs.readFileSync(cfg.frame);
const report = { name: cfg.name, mode: "emit", event: "receiveImage", revision: "EIO3",
                 fps: cfg.fps, sent: 0, accepted: 0, refused: 0, timeouts: 0, errors: 0,
                 ack_ms: [], disconnects: 0, disconnect_at: [], send_ns: [], bytes: jpeg.length };
let closing = false;
let startAt = 0;

function finish(code) {
  fs.writeFileSync(cfg.out, JSON.stringify(report));
  process.exit(code);
}

const socket = io(cfg.url, { transports: ["websocket"], reconnection: false, forceNew: true });
const giveUp = setTimeout(() => { report.error = "no login reply"; finish(0); }, 20000);
socket.on("connect", () => socket.emit("authenticate", cfg.name, "", "onAuthentication"));
socket.on("disconnect", () => {
  if (closing) return;
  report.disconnects += 1;
  report.disconnect_at.push(Math.round((Date.now() / 1000 - startAt) * 100) / 100);
});
socket.on("onAuthentication", (ok) => {
  clearTimeout(giveUp);
  if (!ok) { report.error = "login refused"; finish(0); }
  fs.writeFileSync(cfg.out + ".ready", "");
  waitGo(Date.now() + 60000);
});

function waitGo(deadline) {
  if (fs.existsSync(cfg.go)) {
    startAt = parseFloat(fs.readFileSync(cfg.go, "utf8"));
    setTimeout(run, Math.max(0, startAt * 1000 - Date.now()));
  } else if (Date.now() > deadline) {
    report.error = "no start signal";
    finish(0);
  } else {
    setTimeout(() => waitGo(deadline), 10);
  }
}

function run() {
  const end = (startAt + cfg.duration) * 1000;
  const interval = cfg.fps > 0 ? 1000 / cfg.fps : 0;
  let next = Date.now();
  const tick = () => {
    if (Date.now() >= end || !socket.connected) {
      report.elapsed = Date.now() / 1000 - startAt;
      report.connected_at_end = socket.connected;
      closing = true;
      setTimeout(() => { socket.close(); finish(0); }, 300);  // let the last frames leave
      return;
    }
    socket.emit("receiveImage", jpeg);
    report.sent += 1;
    next += interval;
    setTimeout(tick, Math.max(0, next - Date.now()));
  };
  tick();
}
