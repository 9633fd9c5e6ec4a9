#!/usr/bin/env node
// The official socket.io server as a reference beside camstream, for the conformance tests:
// 2.x speaks Engine.IO 3 / Socket.IO 4 (the Android app's revision), 4.x Engine.IO 4 /
// Socket.IO 5. It handles camstream's events the way camstream does (authenticate replies to
// the sender, frame acks, receiveImage has no answer) and nothing else, so a raw packet sent to
// both shows what the reference does with it.
//
//   node server.js --server 2|4 --port P [--ping-interval MS] [--ping-timeout MS]
//                  [--camera-page DIR] [--auth USER:PASSWORD]
//
// For the camera page's test (4 only): --camera-page serves DIR's camera.html, camera.js and
// view.css at camstream's paths (/camera, /camera/...) and counts the `frame` events it gets at
// GET /frames ({frames, binary, bytes, jpeg}); --auth accepts only a v5 connect whose auth is
// {username: USER, password: PASSWORD}, refusing others with "authentication failed".
//
// Prints "listening P" once it accepts connections. SIGTERM: io.close() (the reference's
// graceful stop: the transports close, no disconnect packet), then exit.
"use strict";

function parseArgs(argv) {
  const opts = { server: "4", port: 0, "ping-interval": 25000, "ping-timeout": 20000,
                 "camera-page": "", auth: "" };
  const strings = ["server", "camera-page", "auth"];
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in opts) || i + 1 >= argv.length) {
      console.error(`unknown or incomplete option ${argv[i]}`);
      process.exit(2);
    }
    opts[key] = strings.includes(key) ? argv[++i] : Number(argv[++i]);
  }
  if (!["2", "4"].includes(opts.server)) {
    console.error("--server must be 2 or 4");
    process.exit(2);
  }
  return opts;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const http = require("http");
  const frames = { frames: 0, binary: 0, bytes: 0, jpeg: 0 };
  const httpServer = http.createServer((req, res) => {
    if (opts["camera-page"]) {
      const pages = { "/camera": ["camera.html", "text/html"],
                      "/camera/camera.js": ["camera.js", "text/javascript"],
                      "/camera/view.css": ["view.css", "text/css"] };
      const page = pages[req.url];
      if (page) {
        const body = require("fs").readFileSync(require("path").join(opts["camera-page"], page[0]));
        res.writeHead(200, { "Content-Type": page[1] });
        res.end(body);
        return;
      }
      if (req.url === "/frames") {
        res.writeHead(200, { "Content-Type": "application/json" });
        res.end(JSON.stringify(frames));
        return;
      }
    }
    res.writeHead(404);
    res.end();
  });
  const settings = { pingInterval: opts["ping-interval"], pingTimeout: opts["ping-timeout"] };
  let io;
  if (opts.server === "2") {
    io = require("srv2")(httpServer, settings);
  } else {
    const { Server } = require("srv4");
    io = new Server(httpServer, { ...settings, cors: { origin: "*" } });
  }
  if (opts.auth && opts.server === "4") {
    const [user, password] = opts.auth.split(":");
    io.use((socket, next) => {
      const auth = socket.handshake.auth || {};
      next(auth.username === user && auth.password === password
        ? undefined : new Error("authentication failed"));
    });
  }
  if (opts["camera-page"]) {
    io.on("connection", (socket) => {
      socket.on("frame", (meta, image) => {
        frames.frames += 1;
        if (Buffer.isBuffer(image)) {
          frames.binary += 1;
          frames.bytes += image.length;
          if (image[0] === 0xff && image[1] === 0xd8) frames.jpeg += 1;
        }
      });
    });
  }
  io.on("connection", (socket) => {
    socket.on("authenticate", (user, password, reply) => {
      socket.emit(typeof reply === "string" ? reply : "onAuthentication", true);
    });
    socket.on("frame", (...args) => {
      const ack = args[args.length - 1];
      if (typeof ack === "function") ack({ accepted: true, seq: 1 });
    });
    socket.on("receiveImage", () => {});
  });
  process.on("SIGTERM", () => {
    io.close();
    setTimeout(() => process.exit(0), 200);
  });
  httpServer.listen(opts.port, "127.0.0.1", () => {
    process.stdout.write(`listening ${httpServer.address().port}\n`);
  });
}

main();
