// The try-on page. Fields, ranges and defaults come from /openapi.json (built from the
// service's request schema); the request is the same multipart POST /prompt a shop sends.
"use strict";

const $ = (id) => document.getElementById(id);
let resultUrl = null;
let personUrl = null;

function label(name) {
  return name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function imageSlot(name, schema, required) {
  const slot = document.createElement("label");
  slot.className = "slot";
  slot.dataset.field = name;
  const title = document.createElement("span");
  title.className = "slot-title";
  title.textContent = label(name) + (required ? " *" : "");
  const hint = document.createElement("span");
  hint.className = "slot-hint";
  hint.textContent = schema.description || "";
  const preview = document.createElement("img");
  preview.id = "preview-" + name;
  preview.alt = "";
  preview.hidden = true;
  const input = document.createElement("input");
  input.type = "file";
  input.name = name;
  input.id = "input-" + name;
  input.accept = "image/*";
  input.addEventListener("change", () => {
    if (preview.src) URL.revokeObjectURL(preview.src);
    const file = input.files[0];
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file);
    else preview.removeAttribute("src");
    if (name === "person") personUrl = file ? preview.src : null;
  });
  slot.append(title, preview, input, hint);
  return slot;
}

function labelled(name, schema, control) {
  // one form control with its caption; name, id and tooltip from the schema
  const wrap = document.createElement("label");
  wrap.className = "number";
  const title = document.createElement("span");
  title.textContent = label(name);
  control.name = name;
  control.id = "input-" + name;
  control.title = schema.description || "";
  wrap.append(title, control);
  return wrap;
}

function numberInput(name, schema) {
  const input = document.createElement("input");
  input.type = "number";
  input.min = schema.minimum;
  input.max = schema.maximum;
  input.step = schema.type === "integer" ? "1" : "any";
  if (schema.default !== undefined) input.value = schema.default;
  else input.placeholder = "random";
  return labelled(name, schema, input);
}

function choiceInput(name, schema) {
  const select = document.createElement("select");
  for (const value of schema.enum) select.add(new Option(value.replace(/_/g, " "), value, false, value === schema.default));
  return labelled(name, schema, select);
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function parseServerTiming(header) {
  // "pose;dur=12.3, densepose;dur=4.5" -> [["pose", 12.3], ...]
  return (header || "").split(",").map((part) => {
    const [name, ...params] = part.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return [name, dur ? parseFloat(dur.slice(4)) : NaN];
  }).filter(([name]) => name);
}

// What the engine reports while it works (GET /progress/<id>), in words.
const STAGE_WORDS = {
  pose: "pose found", garments: "garments encoded", densepose: "body parts found", schp: "clothes parsed",
  pose_wait: "person ready", mask: "mask made",
};

function describeProgress(p) {
  if (p.state === "waiting") return "waiting for the GPU";
  if (p.stage === "diffusion") return "diffusion: step " + p.step + " of " + p.steps;
  return p.stage ? (STAGE_WORDS[p.stage] || p.stage) + " (" + p.stage + ")" : "starting";
}

function watchProgress(requestId, headers) {
  // polls while the try-on runs; returns a function that stops it
  let stopped = false;
  const bar = $("progress");
  async function poll() {
    while (!stopped) {
      try {
        const resp = await fetch("/progress/" + requestId, { headers, cache: "no-store" });
        if (resp.ok && !stopped) {
          const p = await resp.json();
          $("stage").textContent = describeProgress(p);
          if (p.stage === "diffusion" && p.steps) {
            bar.max = p.steps;
            bar.value = p.step;
          }
        }
      } catch (_) { /* the answer decides; progress is best effort */ }
      await new Promise((done) => setTimeout(done, 200));
    }
  }
  poll();
  return () => { stopped = true; };
}

function newRequestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function errorMessage(resp) {
  let message = "the server answered " + resp.status;
  try {
    const err = (await resp.json()).error;
    message = err.message + " (" + err.code + ")";
  } catch (_) { /* not JSON: keep the status line */ }
  const retry = resp.headers.get("Retry-After");
  if (retry) message += "; retry in " + retry + " s";
  return message;
}

let maskUrl = null;

async function showMask(form, headers) {
  // the same request with preview=mask: cheap (the person's maps are cached), beside the result
  const data = new FormData(form);
  data.set("preview", "mask");
  data.set("output_format", "png");
  const resp = await fetch("/prompt", { method: "POST", body: data, headers });
  if (!resp.ok) {
    showError("mask preview: " + await errorMessage(resp));
    return;
  }
  if (maskUrl) URL.revokeObjectURL(maskUrl);
  maskUrl = URL.createObjectURL(await resp.blob());
  $("result-mask").src = maskUrl;
  $("mask-figure").hidden = false;
}

function showResult(blob, seed, timings) {
  if (resultUrl) URL.revokeObjectURL(resultUrl);
  resultUrl = URL.createObjectURL(blob);
  $("result-image").src = resultUrl;
  $("result-person").src = personUrl || "";
  $("result-seed").textContent = seed;
  const body = $("result-timings").tBodies[0];
  body.replaceChildren();
  for (const [name, ms] of timings) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = (ms / 1000).toFixed(2) + " s";
  }
  const ext = (blob.type.split("/")[1] || "png").replace("jpeg", "jpg");
  const link = $("download");
  link.href = resultUrl;
  link.download = "fastfit-" + seed + "." + ext;
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  const form = $("tryon");
  const button = $("submit");
  showError("");
  button.disabled = true;
  $("working").hidden = false;
  $("stage").textContent = "sending";
  $("progress").removeAttribute("value");  // indeterminate until the denoising steps
  $("mask-figure").hidden = true;
  const t0 = performance.now();
  const timer = setInterval(() => {
    $("elapsed").textContent = ((performance.now() - t0) / 1000).toFixed(1) + " s";
  }, 100);
  const key = $("apikey").value.trim();
  const headers = key ? { Authorization: "Bearer " + key } : {};
  const requestId = newRequestId();
  const stopWatching = watchProgress(requestId, headers);
  try {
    const resp = await fetch("/prompt", {
      method: "POST", body: new FormData(form), headers: { ...headers, "X-Request-ID": requestId },
    });
    stopWatching();
    if (resp.headers.get("X-FastFit-Synthetic-Weights") === "true") $("synthetic").hidden = false;
    if (!resp.ok) {
      showError(await errorMessage(resp));
      return;
    }
    showResult(await resp.blob(), resp.headers.get("X-Seed"), parseServerTiming(resp.headers.get("Server-Timing")));
    if ($("show-mask").checked && $("input-preview").value === "none") {
      $("stage").textContent = "mask preview";
      await showMask(form, headers);
    }
  } catch (exc) {
    showError("the request failed: " + exc.message);
  } finally {
    stopWatching();
    clearInterval(timer);
    $("working").hidden = true;
    button.disabled = false;
    document.body.dataset.state = "idle";  // lets tests and scripts wait for the answer
  }
}

async function init() {
  try {
    const resp = await fetch("/openapi.json");
    const form = (await resp.json()).components.schemas.PromptForm;
    const required = new Set(form.required || []);
    for (const [name, schema] of Object.entries(form.properties)) {
      if (schema.format === "binary") $("images").append(imageSlot(name, schema, required.has(name)));
      else if (schema.enum) {
        if (name !== "response_format") $("numbers").append(choiceInput(name, schema));  // the page reads images
      } else $("numbers").append(numberInput(name, schema));
    }
    $("tryon").addEventListener("submit", (e) => {
      document.body.dataset.state = "busy";
      submit(e);
    });
    $("submit").disabled = false;
    document.body.dataset.state = "idle";
  } catch (exc) {
    showError("could not read the API description: " + exc.message);
  }
}

init();
