#!/usr/bin/env node
// A test client that behaves as the AndroidCamStream app does, on a real socket.io client:
// connect (long-polling then websocket, or websocket only), emit
// authenticate(user, password, "onAuthentication"), wait for the reply, then stream JPEG
// frames as receiveImage(bytes) without acks at a given rate, and disconnect.
//
//   node client.js --client 2|4 --url http://127.0.0.1:8080 --user alice --password pw
//                  --frames FILE_OR_DIR --count 100 --fps 10 [--websocket] [--hold S]
//   --websocket: websocket only (the app's default is long-polling, then the upgrade);
//   --polling: long-polling only, no upgrade; --b64: polling carries binary as base64 text.
//   --real-ip ADDR: send X-Real-IP: ADDR (tests behind nginx's realip: one address each).
//   --insecure: accept any TLS certificate (https:// URLs of a test's self-signed one).
//   --auth: log in with the connect (4.x: auth {username, password}) instead of authenticate.
//   --reconnection-delay MS, --reconnection-delay-max MS: the client's reconnection backoff
//   (default: the library's own, 1000 and 5000; reconnection is always on, without limit).
//
// As the app, it authenticates again after every reconnection and streams on once accepted;
// while disconnected it sends nothing. SIGTERM ends it (the summary is printed).
// Prints one JSON line: {"client","authenticated","sent","transport","events","connects",
// "logins","disconnects",...}.
// Exit status: 0 done, 3 login refused, 4 no reply / connection failed, 2 bad arguments.
"use strict";
const fs = require("fs");
const path = require("path");

function parseArgs(argv) {
  const opts = { client: "2", url: "http://127.0.0.1:8080", user: "alice", password: "",
                 frames: "", count: 0, fps: 10, websocket: false, polling: false, b64: false,
                 insecure: false, auth: false, hold: 0, timeout: 15, "real-ip": "",
                 "reconnection-delay": 0, "reconnection-delay-max": 0 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "");
    if (["websocket", "polling", "b64", "insecure", "auth"].includes(key)) {
      opts[key] = true;
      continue;
    }
    if (!(key in opts) || i + 1 >= argv.length) {
      console.error(`unknown or incomplete option ${argv[i]}`);
      process.exit(2);
    }
    const value = argv[++i];
    opts[key] = typeof opts[key] === "number" ? Number(value) : value;
  }
  if (!["2", "4"].includes(opts.client)) {
    console.error("--client must be 2 or 4");
    process.exit(2);
  }
  return opts;
}

function loadFrames(where) {
  if (!where) return [];
  if (fs.statSync(where).isDirectory()) {
    return fs.readdirSync(where).filter((f) => /\.jpe?g$/i.test(f)).sort()
      .map((f) => fs.readFileSync(path.join(where, f)));
  }
  return [fs.readFileSync(where)];
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const frames = loadFrames(opts.frames);
  const io = require(opts.client === "2" ? "sio2" : "sio4");
  const summary = { client: opts.client, user: opts.user, authenticated: null, sent: 0,
                    transport: null, upgraded: false, events: [], disconnect: null,
                    error: null, connects: 0, logins: 0, disconnects: [], handshake: null };
  const started = Date.now();
  const options = {
    transports: opts.websocket ? ["websocket"]
      : opts.polling ? ["polling"] : ["polling", "websocket"],
    forceBase64: opts.b64,
    reconnection: true,
    forceNew: true,
    rejectUnauthorized: !opts.insecure,
    extraHeaders: opts["real-ip"] ? { "X-Real-IP": opts["real-ip"] } : {},
  };
  if (opts["reconnection-delay"]) options.reconnectionDelay = opts["reconnection-delay"];
  if (opts["reconnection-delay-max"]) options.reconnectionDelayMax = opts["reconnection-delay-max"];
  if (opts.auth) options.auth = { username: opts.user, password: opts.password };
  const socket = io(opts.url, options);
  const engine = () => socket.io.engine;

  // record every event the server sends to this client (2.x has no onAny)
  if (opts.client === "2") {
    const onevent = socket.onevent;
    socket.onevent = function (packet) {
      summary.events.push(packet.data);
      return onevent.call(this, packet);
    };
  } else {
    socket.onAny((...args) => summary.events.push(args));
  }

  let finished = false;
  function finish(code) {
    if (finished) return;
    finished = true;
    summary.transport = engine() && engine().transport ? engine().transport.name : null;
    summary.elapsed_s = (Date.now() - started) / 1000;
    process.stdout.write(JSON.stringify(summary) + "\n");
    socket.close();
    setTimeout(() => process.exit(code), 50);
  }
  const deadline = setTimeout(() => {
    summary.error = "timed out";
    finish(4);
  }, opts.timeout * 1000);

  socket.on("connect_error", (err) => { summary.error = String(err && err.message || err); });
  process.on("SIGTERM", () => { clearTimeout(deadline); finish(0); });
  let loggedIn = false;  // in this connection
  socket.on("disconnect", (reason) => {
    summary.disconnect = reason;
    summary.disconnects.push(reason);
    loggedIn = false;
    if (summary.authenticated === false) {  // refused: the server hangs up on us
      clearTimeout(deadline);
      finish(3);
    }
  });
  socket.io.on("open", () => {
    const eng = engine();
    summary.handshake = {  // engine.io-client 6 keeps them as _pingInterval, _pingTimeout
      pingInterval: eng.pingInterval !== undefined ? eng.pingInterval : eng._pingInterval,
      pingTimeout: eng.pingTimeout !== undefined ? eng.pingTimeout : eng._pingTimeout,
      upgrades: eng.upgrades !== undefined ? eng.upgrades : eng._upgrades,
    };
    eng.on("upgrade", () => { summary.upgraded = true; });
  });
  socket.on("connect", () => {
    summary.connects++;
    if (opts.auth) return loggedOn(true);  // the server checked it with the connect
    socket.emit("authenticate", opts.user, opts.password, "onAuthentication");
  });
  socket.on("onAuthentication", (ok) => loggedOn(ok));

  let streaming = false;
  function loggedOn(ok) {
    summary.authenticated = ok;
    if (!ok) {
      setTimeout(() => { clearTimeout(deadline); finish(3); }, 3000);  // bounded wait
      return;
    }
    summary.logins++;
    loggedIn = true;
    if (!streaming) stream();
  }

  // frames at --fps while connected and logged in; the clock pauses while disconnected
  function stream() {
    streaming = true;
    let n = 0;
    const period = 1000 / opts.fps;
    let due = Date.now();
    function next() {
      if (n >= opts.count || summary.disconnect === "io server disconnect") {
        return flushed(done);  // done, or sent away (a socket.io client does not come back)
      }
      if (socket.connected && loggedIn) {
        socket.emit("receiveImage", frames[n % frames.length]);
        summary.sent = ++n;
        due += period;
      } else {
        due = Date.now() + period;
      }
      setTimeout(next, Math.max(0, due - Date.now()));
    }
    next();
  }

  // all emitted packets have left the engine's buffer (bounded wait)
  function flushed(then) {
    const until = Date.now() + 5000;
    (function check() {
      const eng = engine();
      if (!eng || !eng.writeBuffer.length || Date.now() > until) return setTimeout(then, 100);
      setTimeout(check, 20);
    })();
  }

  function done() {
    setTimeout(() => { clearTimeout(deadline); finish(0); }, opts.hold * 1000);
  }
}

main();
