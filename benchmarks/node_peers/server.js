#!/usr/bin/env node
// A peer of camstream's ingest for benchmarks/peers.py: the official socket.io server doing
// the least a frame server can do. It replies to `authenticate` (the Android app's login), acks
// `frame` and counts it, counts `receiveImage`; GET /count gives the counts, GET /ping "pong",
// GET /gc runs a full garbage collection first (node --expose-gc), so that an RSS read after it
// is not that of a heap waiting for its next collection.
//
//   node --expose-gc server.js --revision 4|2 --port P [--no-bufferutil]
//
// 4: socket.io 4.x (Engine.IO 4); 2: socket.io 2.x (Engine.IO 3, the Android app's revision).
// --no-bufferutil: run as if bufferutil were not installed (ws then masks in JavaScript), so one
// install serves both variants. Prints "listening P bufferutil=yes|no" once it accepts.
"use strict";
const http = require("http");
const Module = require("module");

const args = process.argv.slice(2);
const option = (name) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : ""; };
const revision = option("--revision") || "4";
if (args.includes("--no-bufferutil")) {  // ws's optional require of it then fails, as if absent
  const resolve = Module._resolveFilename;
  Module._resolveFilename = function (request, ...rest) {
    if (request === "bufferutil") {
      throw Object.assign(new Error("bufferutil disabled"), { code: "MODULE_NOT_FOUND" });
    }
    return resolve.call(this, request, ...rest);
  };
}

const counts = { frame: 0, receiveImage: 0 };
const httpServer = http.createServer((req, res) => {
  if (req.url === "/gc" && global.gc) global.gc();  // RSS read after it is the live state's
  res.writeHead(200, { "Content-Type": "application/json" });
  res.end(req.url === "/count" ? JSON.stringify(counts) : "\"pong\"");
});
const io = revision === "2" ? require("socket.io-v2")(httpServer)
  : new (require("socket.io").Server)(httpServer);
io.on("connection", (socket) => {
  socket.on("authenticate", (user, password, reply) => socket.emit(reply || "onAuthentication", true));
  socket.on("frame", (meta, jpeg, ack) => {
    counts.frame += 1;
    if (typeof ack === "function") ack({ accepted: true, seq: counts.frame });
  });
  socket.on("receiveImage", () => { counts.receiveImage += 1; });
});
process.on("SIGTERM", () => process.exit(0));
httpServer.listen(Number(option("--port")), "127.0.0.1", () => {
  const loaded = Object.keys(require.cache).some((p) => p.includes("/bufferutil/"));
  process.stdout.write(`listening ${httpServer.address().port} bufferutil=${loaded ? "yes" : "no"}\n`);
});
