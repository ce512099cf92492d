// The demo page: draw or pick an image, ask POST /v1/models/{name}/predict, show the certificate.
// It uses the public image API like any client (docs/server.md); no framework, no build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const STROKE = 22;          // pen width on the 280 px pad: about 2 px at 28x28, as in MNIST
  const BOX = 20 / 28;        // MNIST digits fit a 20x20 box inside 28x28, centred by mass
  const EPS_RANGE = 6;        // the slider goes from 0 to this many times the model's eps
  const state = { models: new Map(), model: null, source: null, seq: 0, controller: null, timer: 0 };

  // --- talking to the server -------------------------------------------------------------------

  async function api(path, init = {}) {
    const key = $("api-key").value.trim();
    const response = await fetch(path, { ...init, headers: key ? { "X-API-Key": key } : {} });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  function setStatus(text, error = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", error);
  }

  async function loadModels() {
    const select = $("model");
    const previous = select.value;
    try {
      const { models } = await api("v1/models");
      state.models = new Map(models.map((m) => [m.name, m]));
      select.replaceChildren(...models.map((m) => new Option(`${m.name} (v${m.version})`, m.name)));
      if (state.models.has(previous)) select.value = previous;
      setStatus(models.length ? "Draw a digit or pick an image." : "The server serves no model.");
      selectModel();
    } catch (error) {
      setStatus(`Cannot list the models: ${error.message}`, true);
    }
  }

  function selectModel() {
    const model = state.models.get($("model").value);
    if (!model) return;
    state.model = model;
    const [, height, width] = model.input.shape;
    $("size").textContent = `${width}\u00d7${height}, ${model.input.color_mode}`;
    const slider = $("eps");
    const unit = model.epsilon || 0.25;
    const decimal = (x) => String(Number(x.toPrecision(12)));  // 0.3 * 6 is 1.7999999999999998
    slider.max = decimal(unit * EPS_RANGE);
    slider.step = decimal(unit / 100);  // the model's eps and the top are on the slider's grid
    slider.value = String(model.epsilon);
    const trained = model.train_epsilon ? `, trained at ${model.train_epsilon}` : "";
    $("eps-hint").textContent = `The model's \u03b5 is ${model.epsilon}${trained}.`;
    showEps();
    predict();
  }

  async function predict() {
    if (!state.model || !state.source) return;
    const seq = ++state.seq;
    state.controller?.abort();
    const controller = (state.controller = new AbortController());
    let image = state.source.blob;
    if (state.source.kind === "drawing") {
      const canvas = frame(state.model);
      if (!canvas) return;
      showSeen(canvas);
      image = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    }
    const form = new FormData();
    form.append("files", image, "input.png");
    form.append("epsilon", $("eps").value);
    form.append("return_logits", "true");
    setStatus("Asking the server\u2026");
    try {
      const path = `v1/models/${encodeURIComponent(state.model.name)}/predict`;
      const answer = await api(path, { method: "POST", body: form, signal: controller.signal });
      if (seq === state.seq) showAnswer(answer);
    } catch (error) {
      if (error.name === "AbortError" || seq !== state.seq) return;
      $("answer").hidden = true;
      setStatus(error.message, true);
    }
  }

  // --- the answer --------------------------------------------------------------------------------

  const fmt = (x) => (x === null || x === undefined ? "unknown" : Number(x).toFixed(3));

  function showAnswer({ model, version, epsilon, predictions: [p] }) {
    $("class").textContent = p.class_name;
    const badge = $("badge");
    badge.dataset.state = p.certified ? "certified" : "abstain";
    badge.textContent = p.certified
      ? `\u2713 Certified at \u03b5 = ${fmt(epsilon)}`
      : `Abstain: not certified at \u03b5 = ${fmt(epsilon)}`;
    const scale = Math.max(Number($("eps").max), epsilon) || 1;
    const bar = $("radius-bar");
    bar.classList.toggle("abstain", !p.certified);
    $("radius-fill").style.width = `${Math.min(1, (p.radius ?? 0) / scale) * 100}%`;
    $("eps-mark").style.left = `${Math.min(1, epsilon / scale) * 100}%`;
    bar.setAttribute("aria-label", `certified radius ${fmt(p.radius)} against epsilon ${fmt(epsilon)}`);
    $("radius").textContent = fmt(p.radius);
    $("eps-shown").textContent = fmt(epsilon);
    showLogits(p.logits || [], state.model.classes, p.label);
    $("answer").hidden = false;
    setStatus(`Answered by ${model} v${version}.`);
  }

  function showLogits(logits, classes, label) {
    const low = Math.min(...logits);
    const span = Math.max(...logits) - low || 1;
    $("logits").tBodies[0].replaceChildren(...logits.map((value, i) => {
      const row = document.createElement("tr");
      row.className = i === label ? "top" : "";
      const bar = document.createElement("span");
      bar.style.width = `${((value - low) / span) * 100}%`;
      const cells = [classes[i] ?? String(i), value.toFixed(2), bar];
      row.append(...cells.map((content) => {
        const cell = document.createElement("td");
        cell.append(content);
        return cell;
      }));
      row.lastChild.className = "bar-cell";
      return row;
    }));
  }

  function showEps() {
    $("eps-value").textContent = fmt($("eps").value);
  }

  // --- drawing -----------------------------------------------------------------------------------

  const pad = $("pad");
  const pen = pad.getContext("2d", { willReadFrequently: true });

  function clearPad() {
    pen.fillStyle = "#000";
    pen.fillRect(0, 0, pad.width, pad.height);
  }

  function point(event) {
    const rect = pad.getBoundingClientRect();
    return [(event.clientX - rect.left) * (pad.width / rect.width),
      (event.clientY - rect.top) * (pad.height / rect.height)];
  }

  pad.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    if (state.source?.kind !== "drawing") clearPad();
    state.source = { kind: "drawing" };
    $("file").value = "";
    Object.assign(pen, { strokeStyle: "#fff", lineWidth: STROKE, lineCap: "round", lineJoin: "round" });
    pen.beginPath();
    pen.moveTo(...point(event));
    pen.lineTo(...point(event));
    pen.stroke();
  });
  pad.addEventListener("pointermove", (event) => {
    if (!pad.hasPointerCapture(event.pointerId)) return;
    pen.lineTo(...point(event));
    pen.stroke();
  });
  const endStroke = (event) => {
    if (!pad.hasPointerCapture(event.pointerId)) return;
    pad.releasePointerCapture(event.pointerId);
    predict();
  };
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  // The drawing as the model's input, framed like MNIST: the ink's bounding box scaled into a
  // 20x20 box (for 28x28), then shifted so its centre of mass is the image's centre.
  function frame(model) {
    const [, height, width] = model.input.shape;
    const pixels = pen.getImageData(0, 0, pad.width, pad.height).data;
    let [left, top, right, bottom] = [pad.width, pad.height, -1, -1];
    for (let y = 0; y < pad.height; y++) {
      for (let x = 0; x < pad.width; x++) {
        if (pixels[(y * pad.width + x) * 4] > 0) {
          left = Math.min(left, x); right = Math.max(right, x);
          top = Math.min(top, y); bottom = Math.max(bottom, y);
        }
      }
    }
    if (right < 0) return null;
    const [w, h] = [right - left + 1, bottom - top + 1];
    const scale = (BOX * Math.min(width, height)) / Math.max(w, h);
    const boxed = blank(width, height);
    const shrunk = shrink(pad, left, top, w, h, w * scale, h * scale);
    boxed.getContext("2d").drawImage(shrunk, (width - w * scale) / 2, (height - h * scale) / 2);
    const [cx, cy] = centreOfMass(boxed);
    const out = blank(width, height);
    out.getContext("2d").drawImage(boxed, Math.round(width / 2 - cx), Math.round(height / 2 - cy));
    return out;
  }

  function blank(width, height) {
    const canvas = document.createElement("canvas");
    Object.assign(canvas, { width, height });
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    return canvas;
  }

  // Downscale by halving steps, then once to the target: smooth at any ratio.
  function shrink(source, sx, sy, sw, sh, tw, th) {
    let canvas = source;
    let rect = [sx, sy, sw, sh];
    for (;;) {
      const [w, h] = rect[2] / 2 > tw ? [rect[2] / 2, rect[3] / 2] : [tw, th];
      const next = document.createElement("canvas");
      Object.assign(next, { width: Math.max(1, Math.ceil(w)), height: Math.max(1, Math.ceil(h)) });
      const ctx = next.getContext("2d");
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(canvas, ...rect, 0, 0, w, h);
      if (w === tw) return next;
      canvas = next;
      rect = [0, 0, w, h];
    }
  }

  function centreOfMass(canvas) {
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let [mass, mx, my] = [0, 0, 0];
    for (let i = 0; i < data.length; i += 4) {
      const x = (i / 4) % canvas.width;
      const y = Math.floor(i / 4 / canvas.width);
      mass += data[i]; mx += data[i] * (x + 0.5); my += data[i] * (y + 0.5);
    }
    return mass ? [mx / mass, my / mass] : [canvas.width / 2, canvas.height / 2];
  }

  function showSeen(source) {
    const seen = $("seen");
    Object.assign(seen, { width: source.width, height: source.height });
    seen.getContext("2d").drawImage(source, 0, 0);
  }

  // --- wiring ------------------------------------------------------------------------------------

  $("clear").addEventListener("click", () => {
    clearPad();
    showSeen(blank($("seen").width, $("seen").height));
    state.source = null;
    state.seq++;
    $("file").value = "";
    $("answer").hidden = true;
    setStatus("Draw a digit or pick an image.");
  });
  $("file").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (!file) return;
    clearPad();
    state.source = { kind: "file", blob: file };
    // The file goes to the server as it is; the preview is only for the eye.
    createImageBitmap(file).then(showSeen, () => {});
    predict();
  });
  $("model").addEventListener("change", selectModel);
  $("eps").addEventListener("input", () => {
    showEps();
    clearTimeout(state.timer);
    state.timer = setTimeout(predict, 120);
  });
  $("api-key").addEventListener("change", loadModels);

  clearPad();
  loadModels();
})();
