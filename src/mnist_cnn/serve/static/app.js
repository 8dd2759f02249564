// The draw-a-digit page: a canvas, the POST /api/predict call, and the results. No build step.
"use strict";

const DEBOUNCE_MS = 120;   // wait this long after the last stroke movement before asking
// Stroke width in canvas pixels (the canvas is 280x280). A digit drawn ~200 px tall is scaled
// to MNIST's 20 px box, so strokes end up ~2 px wide, like MNIST's pen.
const LINE_WIDTH = 20;

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const view = {
  prediction: $("prediction"), confidence: $("confidence"), message: $("message"),
  bars: $("bars"), seen: $("seen"), results: document.querySelector(".results"),
};

const state = {
  drawing: false, last: null, hasInk: false,
  timer: 0, encoding: false, inFlight: false, pending: null,
  generation: 0,            // bumped by Clear/upload: answers for older pictures are dropped
  answers: 0,               // results or errors shown so far (body[data-answers], for tests)
  classNames: [], maxUpload: Infinity,
};

// ------------------------------------------------------------------ drawing
function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  state.hasInk = false;
}

function point(ev) {
  const r = pad.getBoundingClientRect();
  return { x: (ev.clientX - r.left) * pad.width / r.width, y: (ev.clientY - r.top) * pad.height / r.height };
}

function stroke(from, to) {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = LINE_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
  state.hasInk = true;
}

pad.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0) return;
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  state.drawing = true;
  state.last = point(ev);
  stroke(state.last, state.last);   // a tap leaves a dot
  schedule();
});

pad.addEventListener("pointermove", (ev) => {
  if (!state.drawing) return;
  // Coalesced events keep fast pen and touch strokes smooth (the browser batches them per frame).
  const events = (ev.getCoalescedEvents && ev.getCoalescedEvents().length) ? ev.getCoalescedEvents() : [ev];
  for (const e of events) {
    const p = point(e);
    stroke(state.last, p);
    state.last = p;
  }
  schedule();
});

function endStroke() {
  if (!state.drawing) return;
  state.drawing = false;
  schedule(0);
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  state.generation += 1;
  clearTimeout(state.timer);
  state.pending = null;
  clearPad();
  showIdle(state.classNames.every((n, i) => n === String(i))
    ? "Draw a digit in the box." : "Draw one of the classes below, or upload a picture.");
  settle();
});

// ------------------------------------------------------------------ uploads (button or drop)
$("upload").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";            // choosing the same file again still fires "change"
  if (file) useFile(file);
});
pad.addEventListener("dragover", (ev) => { ev.preventDefault(); pad.classList.add("dropping"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dropping"));
pad.addEventListener("drop", (ev) => {
  ev.preventDefault();
  pad.classList.remove("dropping");
  const file = ev.dataTransfer.files[0];
  if (file) useFile(file);
});

async function useFile(file) {
  if (file.size > state.maxUpload) {
    state.generation += 1;
    showError(`That file is ${(file.size / 1048576).toFixed(1)} MB; the server accepts up to ` +
              `${(state.maxUpload / 1048576).toFixed(0)} MB.`);
    return;
  }
  state.generation += 1;
  clearTimeout(state.timer);
  busy();
  clearPad();
  // Show the picture on the pad (so one can draw on it); the server classifies the original file.
  try {
    const bitmap = await createImageBitmap(file);
    const s = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * s, h = bitmap.height * s;
    ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    state.hasInk = true;
  } catch (_) {
    // The browser cannot show it; the server will say whether it is an image at all.
  }
  request(file);
}

// ------------------------------------------------------------------ talking to the server
function busy() { document.body.dataset.state = "busy"; }
function settle() {
  // "idle" = the results on screen are for the picture on the pad (the browser test waits for it).
  if (!state.inFlight && !state.pending && !state.timer && !state.encoding) document.body.dataset.state = "idle";
}

function schedule(delay = DEBOUNCE_MS) {
  clearTimeout(state.timer);
  busy();
  state.timer = setTimeout(() => {
    state.timer = 0;
    if (!state.hasInk) { settle(); return; }
    state.encoding = true;
    pad.toBlob((blob) => { state.encoding = false; request(blob); }, "image/png");
  }, delay);
}

// One request at a time; while one is out, only the newest picture waits for its turn.
async function request(body) {
  if (state.inFlight) { state.pending = body; return; }
  state.inFlight = true;
  busy();
  const generation = state.generation;
  try {
    const res = await fetch("api/predict?view=1", {   // view=1: show the 28x28 the network saw
      method: "POST", body, headers: { "Content-Type": body.type || "application/octet-stream" },
    });
    const data = await res.json().catch(() => ({ error: `the server answered ${res.status} ${res.statusText}` }));
    if (generation === state.generation) {
      if (res.ok) showResult(data);
      else showError(politely(res.status, data.error));
    }
  } catch (_) {
    if (generation === state.generation) {
      showError("Cannot reach the server. Is `mnist-cnn serve` still running?");
    }
  } finally {
    state.inFlight = false;
    const next = state.pending;
    state.pending = null;
    if (next) request(next); else settle();
  }
}

function politely(status, error) {
  error = (error || `status ${status}`).replace(/^image /, "");
  if (status === 422 && /no visible ink/.test(error)) return "Nothing to classify yet: the picture looks blank.";
  if (status === 422 && /not a readable image/.test(error)) {
    return "That file could not be read as an image. Try a PNG, JPEG, GIF, BMP or WebP picture.";
  }
  if (status === 413) return `That file is too large for the server: ${error}.`;
  return `Sorry, that did not work: ${error}.`;
}

// ------------------------------------------------------------------ showing results
function buildBars(names) {
  state.classNames = names;
  view.bars.replaceChildren(...names.map((name, i) => {
    const li = document.createElement("li");
    li.dataset.index = String(i);
    li.dataset.probability = "0";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = "–";
    li.append(label, track, pct);
    return li;
  }));
}

function answered() { document.body.dataset.answers = String(++state.answers); }

function showResult(d) {
  answered();
  if (d.class_names.join("\n") !== state.classNames.join("\n")) buildBars(d.class_names);
  view.results.classList.remove("stale");
  view.prediction.textContent = d.label;
  view.prediction.classList.toggle("long", d.label.length > 2);
  view.prediction.dataset.index = String(d.prediction);
  view.confidence.textContent = `${(100 * d.probabilities[d.prediction]).toFixed(1)}% sure`;
  view.message.textContent = "";
  view.message.className = "";
  [...view.bars.children].forEach((li, i) => {
    const p = d.probabilities[i];
    li.dataset.probability = String(p);
    li.classList.toggle("top", i === d.prediction);
    li.querySelector(".fill").style.width = `${(100 * p).toFixed(2)}%`;
    li.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  });
  view.seen.src = d.image;
}

function showIdle(text) {
  view.results.classList.add("stale");
  view.prediction.textContent = "–";
  view.prediction.classList.remove("long");
  delete view.prediction.dataset.index;
  view.confidence.textContent = "";
  view.message.textContent = text;
  view.message.className = "";
}

// An error is about the current picture, so no earlier answer stays on screen.
function showError(text) {
  answered();
  showIdle(text);
  view.message.className = "error";
  for (const li of view.bars.children) {
    li.dataset.probability = "0";
    li.classList.remove("top");
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "–";
  }
  view.seen.removeAttribute("src");
}

// ------------------------------------------------------------------ start
async function start() {
  clearPad();
  try {
    const res = await fetch("api/info");
    const info = await res.json();
    state.maxUpload = info.max_upload_bytes;
    buildBars(info.class_names);
    const digits = info.class_names.every((n, i) => n === String(i));
    if (!digits) {
      $("title").textContent = "Draw one of these";
      document.title = `Draw · ${info.dataset} · mnist-cnn`;
    }
    $("run-info").textContent = `Run ${info.run}: ${info.model} trained on ${info.dataset}` +
      (info.status === "complete" ? "" : ` (run status: ${info.status})`);
    showIdle(digits ? "Draw a digit in the box." : "Draw one of the classes below, or upload a picture.");
  } catch (_) {
    showError("Could not load the model's details from the server. Is `mnist-cnn serve` still running?");
  }
  settle();
}
start();
