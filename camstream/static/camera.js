// camstream's camera page: the browser's camera, streamed as `frame` events with acks.
//
// A small Engine.IO 4 / Socket.IO 5 client over one websocket, enough for this page:
// open, connect with auth, answer pings, send `frame`(meta, jpeg) as one binary event with an
// ack, read acks, notice a refusal or a close. The page paces itself on acks: at most
// MAX_IN_FLIGHT frames without an answer, and never faster than the chosen rate.
// A lost connection (a transport close, a failed connect, a daemon restarting) is retried the
// way socket.io-client does by default, and the page logs in again and streams on; a refused
// login or a server's disconnect packet is final, as it is for socket.io-client.
"use strict";

const MAX_IN_FLIGHT = 2;
const CONNECT_TIMEOUT_MS = 20000;     // socket.io-client's `timeout`
const BACKOFF = {minMs: 1000, maxMs: 5000, factor: 2, jitter: 0.5};  // socket.io-client's

// The wait before reconnect attempt number `attempt` (0 first), as socket.io-client's backoff:
// min * factor^attempt, moved up or down by up to jitter of itself at random, at most max.
function backoffMs(attempt, random = Math.random) {
  let ms = BACKOFF.minMs * Math.pow(BACKOFF.factor, attempt);
  const r = random();
  const deviation = Math.floor(r * BACKOFF.jitter * ms);
  ms = (Math.floor(r * 10) & 1) === 0 ? ms - deviation : ms + deviation;
  return Math.min(ms, BACKOFF.maxMs);
}

// -- the protocol, without I/O: packets in, packets out -------------------------------------
const EIO = {OPEN: "0", CLOSE: "1", PING: "2", PONG: "3", MESSAGE: "4"};
const SIO = {CONNECT: "0", DISCONNECT: "1", EVENT: "2", ACK: "3", CONNECT_ERROR: "4",
             BINARY_EVENT: "5", BINARY_ACK: "6"};

function connectPacket(auth) { return EIO.MESSAGE + SIO.CONNECT + JSON.stringify(auth); }

// A binary event with one attachment: the text part, then the bytes as a binary message.
function binaryEventPacket(id, event, meta) {
  return EIO.MESSAGE + SIO.BINARY_EVENT + "1-" + id
    + JSON.stringify([event, meta, {_placeholder: true, num: 0}]);
}

// What a text message from the server means: {type, ...}.
function parse(text) {
  const eio = text[0];
  if (eio === EIO.OPEN) return {type: "open", info: JSON.parse(text.slice(1))};
  if (eio === EIO.PING) return {type: "ping"};
  if (eio === EIO.CLOSE) return {type: "close"};
  if (eio !== EIO.MESSAGE) return {type: "other"};
  const sio = text[1];
  let rest = text.slice(2);
  if (rest.startsWith("/")) {            // a namespace other than "/": not ours
    return {type: "other"};
  }
  if (sio === SIO.CONNECT) return {type: "connected"};
  if (sio === SIO.CONNECT_ERROR) {
    let message = "refused";
    try { message = JSON.parse(rest).message || message; } catch (e) { /* plain text */ }
    return {type: "refused", message};
  }
  if (sio === SIO.DISCONNECT) return {type: "disconnected"};
  if (sio === SIO.ACK) {
    const m = /^(\d+)(.*)$/s.exec(rest);
    if (!m) return {type: "other"};
    let args = [];
    try { args = JSON.parse(m[2]); } catch (e) { /* leave it empty */ }
    return {type: "ack", id: Number(m[1]), value: args[0]};
  }
  if (sio === SIO.EVENT) {
    const m = /^(\d*)(.*)$/s.exec(rest);
    try { return {type: "event", args: JSON.parse(m[2])}; } catch (e) { return {type: "other"}; }
  }
  return {type: "other"};
}

// -- the page ---------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
const counters = {sent: 0, accepted: 0, refused: 0};
let session = null;

function show(state, cls) {
  $("state").textContent = state;
  $("state").className = "state " + (cls || "");
}

function updateCounters() {
  for (const k of Object.keys(counters)) $(k).textContent = String(counters[k]);
  $("inflight").textContent = session ? String(session.pending.size) : "0";
}

class Session {
  constructor(settings) {
    this.settings = settings;
    this.pending = new Map();          // ack id -> sent time
    this.nextId = 0;
    this.nextAt = 0;
    this.open = false;
    this.stopped = false;
    this.acceptedTimes = [];
    this.attempts = 0;                 // connections tried, all told
    this.failures = 0;                 // lost or failed since the last login
    this.canvas = document.createElement("canvas");
  }

  async start() {
    const s = this.settings;
    const [w, h] = s.size.split("x").map(Number);
    show("asking for the camera…");
    this.stream = await navigator.mediaDevices.getUserMedia({audio: false, video: {
      facingMode: {ideal: s.facing}, width: {ideal: w}, height: {ideal: h},
      frameRate: {ideal: s.fps}}});
    const video = $("video");
    video.srcObject = this.stream;
    await video.play();
    this.video = video;
    this.width = w;
    this.connect();
  }

  // One connection attempt; its end (any close but a final one) schedules the next.
  connect() {
    this.attempts += 1;
    show(this.failures ? "reconnecting… (attempt " + this.attempts + ")" : "connecting…",
         this.failures ? "bad" : "");
    $("state").dataset.attempts = String(this.attempts);
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host
      + "/socket.io/?EIO=4&transport=websocket";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (m) => this.receive(m.data);
    ws.onclose = () => this.lost(ws);
    ws.onerror = () => { $("why").textContent = "the connection failed"; };
    this.watch(CONNECT_TIMEOUT_MS);
  }

  // Give up on this connection when the server says nothing for `ms` (no handshake in time,
  // or no ping within pingInterval + pingTimeout): a dead network closes no websocket.
  watch(ms) {
    clearTimeout(this.watchdog);
    const ws = this.ws;
    this.watchdog = setTimeout(() => this.lost(ws), ms);
  }

  // The connection `ws` is gone: unless the end was final, wait the backoff and try again.
  lost(ws) {
    if (ws !== this.ws) return;        // an old connection's late close
    ws.onclose = ws.onmessage = ws.onerror = null;
    if (ws.readyState <= 1) ws.close();
    clearTimeout(this.watchdog);
    clearTimeout(this.timer);
    this.ws = null;
    this.open = false;
    this.pending.clear();              // the old session's acks will never come
    updateCounters();
    if (this.stopped) return;
    const wait = backoffMs(this.failures++);
    show("reconnecting in " + (wait / 1000).toFixed(1) + " s… (attempt " + this.attempts + ")",
         "bad");
    this.retry = setTimeout(() => { if (!this.stopped) this.connect(); }, wait);
  }

  receive(data) {
    if (typeof data !== "string") return;   // no binary packets come to this page
    const p = parse(data);
    if (p.type === "open") {
      this.pingWindow = (p.info.pingInterval || 25000) + (p.info.pingTimeout || 20000);
      this.watch(CONNECT_TIMEOUT_MS);
      this.ws.send(connectPacket({username: this.settings.username,
                                  password: this.settings.password}));
    } else if (p.type === "ping") {
      this.watch(this.pingWindow);
      this.ws.send(EIO.PONG);
    } else if (p.type === "connected") {
      this.watch(this.pingWindow);
      this.open = true;
      this.failures = 0;
      $("why").textContent = "";
      show("streaming as " + this.settings.username, "good");
      this.tick();
    } else if (p.type === "refused") {
      show("refused: " + p.message, "bad");
      $("why").textContent = "The server refused the login (" + p.message + ").";
      this.stop(false);
    } else if (p.type === "ack") {
      const sent = this.pending.get(p.id);
      if (sent === undefined) return;
      this.pending.delete(p.id);
      const ack = p.value || {};
      if (ack.accepted) {
        counters.accepted += 1;
        this.acceptedTimes.push(performance.now());
      } else {
        counters.refused += 1;
        $("why").textContent = "last refusal: " + (ack.reason || "refused");
      }
      updateCounters();
      this.tick();
    } else if (p.type === "disconnected") {   // the server sent us away: final
      show("disconnected by the server", "bad");
      this.stop(false);
    } else if (p.type === "close") {
      this.lost(this.ws);
    }
  }

  // Send the next frame when an ack has made room and the rate allows it.
  tick() {
    if (!this.open || this.stopped || this.sending) return;
    if (this.pending.size >= MAX_IN_FLIGHT) return;   // the next ack calls us again
    const now = performance.now();
    if (now < this.nextAt) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.tick(), this.nextAt - now);
      return;
    }
    const period = 1000 / this.settings.fps;
    if (now - this.nextAt > period) this.nextAt = now;   // late: no burst to catch up
    this.nextAt += period;
    this.sending = true;
    this.capture().then((jpeg) => {
      this.sending = false;
      if (!jpeg || !this.open || this.stopped) return;
      const id = this.nextId++;
      this.pending.set(id, performance.now());
      this.ws.send(binaryEventPacket(id, "frame", {n: id + 1, width: this.canvas.width,
                                                   height: this.canvas.height}));
      this.ws.send(jpeg);
      counters.sent += 1;
      updateCounters();
      this.tick();
    }, () => { this.sending = false; this.tick(); });
  }

  capture() {
    const v = this.video;
    if (!v.videoWidth) return Promise.resolve(null);
    this.canvas.width = this.width;
    this.canvas.height = Math.round(this.width * v.videoHeight / v.videoWidth);
    this.canvas.getContext("2d").drawImage(v, 0, 0, this.canvas.width, this.canvas.height);
    return new Promise((resolve) => this.canvas.toBlob(
      (blob) => resolve(blob ? blob.arrayBuffer() : null), "image/jpeg",
      this.settings.quality / 100));
  }

  stop(userAsked) {
    this.stopped = true;
    this.open = false;
    clearTimeout(this.timer);
    clearTimeout(this.retry);
    clearTimeout(this.watchdog);
    if (this.ws) {
      this.ws.onclose = this.ws.onmessage = this.ws.onerror = null;
      if (this.ws.readyState <= 1) this.ws.close();
    }
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    if (userAsked) show("stopped");
    $("start").disabled = false;
    $("stop").disabled = true;
    session = null;
    updateCounters();
  }
}

function rate() {
  if (session) {
    const now = performance.now();
    session.acceptedTimes = session.acceptedTimes.filter((t) => now - t < 2000);
    $("rate").textContent = (session.acceptedTimes.length / 2).toFixed(1);
  } else {
    $("rate").textContent = "0.0";
  }
}
setInterval(rate, 500);

$("setup").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("error").textContent = "";
  $("why").textContent = "";
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $("error").textContent = "This browser gives cameras only to https pages (or localhost): "
      + "open this page with https:// (see the README: camstream tls generate).";
    return;
  }
  const settings = {
    username: $("username").value, password: $("password").value,
    facing: $("facing").value, size: $("size").value,
    fps: Math.min(30, Math.max(1, Number($("fps").value) || 10)),
    quality: Math.min(100, Math.max(10, Number($("quality").value) || 80)),
  };
  for (const k of Object.keys(counters)) counters[k] = 0;
  updateCounters();
  $("start").disabled = true;
  $("stop").disabled = false;
  session = new Session(settings);
  try {
    await session.start();
  } catch (err) {
    $("error").textContent = "No camera: " + (err && err.message ? err.message : err);
    if (session) session.stop(false);
    show("not streaming");
  }
});
$("stop").addEventListener("click", () => { if (session) session.stop(true); });
