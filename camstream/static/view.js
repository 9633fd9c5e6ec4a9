// camstream's live view: one tile per client, the newest frame only.
//
// A loop per page: ask /api/state for anything newer than what we have (the server answers
// as soon as there is), fetch the newest JPEG of each tile whose frame changed, draw it, and
// only then ask again. A slow or hidden tab therefore asks less often; the server never
// queues anything for it.
"use strict";

(function () {
  const tiles = new Map();            // name -> {el, canvas, figures, result, seq}
  const box = document.getElementById("tiles");
  const empty = document.getElementById("empty");
  const status = document.getElementById("status");
  const processed = document.getElementById("processed");
  const viewer = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const alone = location.pathname.startsWith("/client/")
    ? decodeURIComponent(location.pathname.slice("/client/".length)) : null;
  let version = -1;
  document.getElementById("logout").hidden = true;

  const params = new URLSearchParams(location.search);
  processed.checked = params.get("kind") === "processed";
  processed.addEventListener("change", () => {
    params.set("kind", kind());
    history.replaceState(null, "", location.pathname + "?" + params);
    version = -1;                     // ask again at once, for the other kind
    for (const t of tiles.values()) t.seq = null;
  });
  if (alone !== null) {
    box.classList.add("alone");
    document.getElementById("where").textContent = "· " + alone;
    document.title = alone + " · camstream";
  }

  function kind() { return processed.checked ? "processed" : "raw"; }

  function tile(name) {
    let t = tiles.get(name);
    if (t) return t;
    const el = document.createElement("section");
    el.className = "tile";
    el.dataset.client = name;
    const h = document.createElement("h2");
    const link = document.createElement("a");
    link.href = "/client/" + encodeURIComponent(name) + location.search;
    link.textContent = name;
    link.className = "name";
    h.appendChild(link);
    const canvas = document.createElement("canvas");
    canvas.width = 320; canvas.height = 240;
    const figures = document.createElement("div");
    figures.className = "figures";
    const result = document.createElement("pre");
    result.className = "result";
    el.append(h, canvas, figures, result);
    box.appendChild(el);
    t = {el, canvas, figures, result, seq: null};
    tiles.set(name, t);
    return t;
  }

  function describe(c) {
    const parts = [
      c.fps === null ? "-- fps" : c.fps.toFixed(1) + " fps",
      Math.round(c.latency_ms) + " ms",
      "dropped " + (c.dropped === null || c.dropped === undefined ? "-" : c.dropped),
      "#" + c.seq,
    ];
    return parts;
  }

  function resultText(result) {
    if (!result) return "";
    return Object.entries(result)
      .filter(([k]) => k !== "boxes" && k !== "done_ns")
      .map(([k, v]) => k + ": " + (typeof v === "object" ? JSON.stringify(v) : v))
      .join("  ");
  }

  async function draw(t, c) {
    const url = "/api/frame/" + encodeURIComponent(c.name) + "?kind=" + kind()
      + "&seq=" + c.seq;
    const response = await fetch(url, {cache: "no-store", credentials: "same-origin"});
    if (!response.ok) return;
    const seq = Number(response.headers.get("X-Camstream-Seq"));
    const bitmap = await createImageBitmap(await response.blob());
    const ctx = t.canvas.getContext("2d");
    if (t.canvas.width !== bitmap.width || t.canvas.height !== bitmap.height) {
      t.canvas.width = bitmap.width; t.canvas.height = bitmap.height;
    }
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const boxes = c.result && Array.isArray(c.result.boxes) ? c.result.boxes : [];
    if (boxes.length && !c.annotated) {   // an annotated picture has them drawn already
      ctx.lineWidth = Math.max(2, t.canvas.width / 200);
      ctx.strokeStyle = "#4fc3f7";
      for (const b of boxes) {
        if (Array.isArray(b) && b.length >= 4) ctx.strokeRect(b[0], b[1], b[2], b[3]);
      }
    }
    t.seq = seq || c.seq;
    t.el.dataset.seq = String(t.seq);
  }

  function show(state) {
    const seen = new Set();
    const work = [];
    for (const c of state.clients) {
      if (alone !== null && c.name !== alone) continue;
      seen.add(c.name);
      const t = tile(c.name);
      t.figures.replaceChildren(...describe(c).map((text) => {
        const s = document.createElement("span"); s.textContent = text; return s;
      }));
      t.result.textContent = resultText(c.result);
      if (c.has_image && c.seq !== t.seq) work.push(draw(t, c).catch(() => {}));
    }
    for (const [name, t] of tiles) {
      if (!seen.has(name)) { t.el.remove(); tiles.delete(name); }
    }
    empty.hidden = tiles.size > 0;
    return Promise.all(work);
  }

  async function loop() {
    for (;;) {
      try {
        const response = await fetch("/api/state?kind=" + kind() + "&since=" + version
          + "&viewer=" + viewer, {cache: "no-store", credentials: "same-origin"});
        if (response.status === 401) {
          location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
          return;
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        const state = await response.json();
        status.textContent = tiles.size === 1 ? "1 client" : tiles.size + " clients";
        status.classList.remove("bad");
        if (state.kind === kind()) version = state.version;
        document.getElementById("logout").hidden = !state.login;
        await show(state);
        status.textContent = tiles.size === 1 ? "1 client" : tiles.size + " clients";
      } catch (e) {
        status.textContent = "disconnected: retrying";
        status.classList.add("bad");
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
  loop();
})();
