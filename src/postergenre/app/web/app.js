"use strict";
// Sends any number of posters in batches of the server's per-request cap, one batch at a time,
// and shows the results in selection order. Plain DOM; everything comes from this server.
const $ = (sel, root = document) => root.querySelector(sel);
const statusEl = $("#status"), errorEl = $("#error"), results = $("#results");
const MB = 1e6;  // decimal megabytes, as the server counts them
const limits = { files: 32, bytes: 10 * MB, topK: 24 };  // until /api/health tells
const shown = new WeakMap();  // card -> its result, for the CSV
const urls = new Set();  // object URLs, released by Clear
let ready = false, calibrated = false, genreOrder = [], queue = Promise.resolve();

// A score as the bars write it: a percentage when the scores are calibrated probabilities.
const fmt = score => calibrated ? `${Math.round(100 * score)}%` : score.toFixed(2);

function showError(text) { errorEl.textContent = text; errorEl.hidden = !text; }

// The server's wording, so a refusal reads the same before and after an upload.
function overCap(size, cap) {
  let digits = 1;
  while (Number((size / MB).toFixed(digits)) <= Number((cap / MB).toFixed(digits)) && digits < 6) digits++;
  return `${(size / MB).toFixed(digits)} MB, above the ${cap / MB} MB cap`;
}

function applyLimits(l) {
  if (!l) return;
  limits.files = l.files_per_request || limits.files;
  limits.bytes = l.bytes_per_file || limits.bytes;
  limits.topK = l.top_k_max || limits.topK;
  $("#cap").textContent = `${limits.bytes / MB} MB`;
  $("#topk").max = String(limits.topK);
}

async function pollHealth() {
  try {
    const h = await (await fetch("/api/health")).json();
    applyLimits(h.limits);
    if (h.status === "ready") {
      ready = true;
      calibrated = Boolean(h.calibrated);
      $("#text-switch").hidden = !h.text;
      statusEl.textContent = `Model ${h.model} ready (${h.genres} genres, ${h.engine} engine, v${h.version}).`
        + (calibrated ? " Each bar is the probability that the poster's film has that genre." : "");
      statusEl.className = "status ready";
      loadExtras();
      return;
    }
    statusEl.textContent = h.status === "failed" ? `The model could not be loaded: ${h.error}` : "The server is still loading the model…";
    statusEl.className = h.status === "failed" ? "status bad" : "status";
    if (h.status === "failed") return;
  } catch (e) {
    statusEl.textContent = "Cannot reach the server; retrying…";
    statusEl.className = "status bad";
  }
  setTimeout(pollHealth, 1000);
}

async function loadExtras() {
  const [g, s] = await Promise.all(["/api/genres", "/api/samples"].map(u => fetch(u).then(r => r.json()).catch(() => ({}))));
  genreOrder = g.genres || [];
  for (const sample of s.samples || []) {
    const button = Object.assign(document.createElement("button"), { type: "button", className: "example", title: `Predict ${sample.name}` });
    button.appendChild(Object.assign(document.createElement("img"), { src: sample.url, alt: `Example poster ${sample.name}` }));
    button.addEventListener("click", async () => {
      const blob = await (await fetch(sample.url)).blob();
      send([new File([blob], sample.name, { type: blob.type })]);
    });
    $("#examples").appendChild(button);
  }
}

function card(file, res, rule) {
  const node = $("#card").content.firstElementChild.cloneNode(true);
  node.dataset.file = file.name;
  shown.set(node, res);
  if (res.error) {
    node.classList.add("failed");
    node.replaceChildren(Object.assign(document.createElement("p"), { className: "card-error", textContent: res.error }));
    return node;
  }
  const url = URL.createObjectURL(file);
  urls.add(url);
  Object.assign($(".image", node), { src: url, alt: `Poster ${file.name}` });
  $(".name", node).textContent = file.name;
  $(".predicted", node).textContent = res.predicted.join(" / ") || "(no genre above its threshold)";
  $(".rule", node).textContent = rule.decision === "thresholds"
    ? `Rule: per-genre thresholds tuned on validation (at most ${rule.top_k}).`
    : `Rule: the top ${rule.top_k} scores.`;
  if (res.text !== null && res.text !== undefined) {
    $(".read", node).hidden = false;
    $(".words", node).textContent = res.text || "(no words found)";
  }
  for (const g of res.genres) {
    const li = document.createElement("li");
    li.dataset.genre = g.genre;
    if (res.predicted.includes(g.genre)) li.classList.add("hit");
    li.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    $(".label", li).textContent = g.genre;
    $(".fill", li).style.width = `${(100 * g.score).toFixed(1)}%`;
    $(".value", li).textContent = fmt(g.score);
    li.title = `Show which regions drove ${g.genre}`;
    li.addEventListener("click", () => explain(node, file, g.genre, li));
    $(".bars", node).appendChild(li);
  }
  return node;
}

async function explain(node, file, genre, li) {
  node.querySelectorAll(".bars li").forEach(x => x.classList.remove("chosen"));
  li.classList.add("chosen");
  node.dataset.want = genre;  // a slower answer for an earlier tap must not replace this one
  const note = $(".explain-note", node), heat = $(".heat", node), legend = $(".legend", node);
  note.textContent = `Computing the heatmap for ${genre}…`;
  const body = new FormData();
  body.append("file", file);
  body.append("genre", genre);
  const r = await fetch("/api/explain", { method: "POST", body }).catch(() => null);
  if (node.dataset.want !== genre) return;
  if (!r || !r.ok) {
    const e = r ? await r.json().catch(() => ({ error: r.statusText })) : { error: "the server did not answer" };
    note.textContent = `No heatmap: ${e.error}`;
    return;
  }
  // One score on the card: the legend repeats the bar's (fused with the words read, when there were
  // any). Grad-CAM sees the image only, so then a note says the heatmap explains the image's part.
  const bar = $(".value", li).textContent, words = Boolean((shown.get(node).text || "").trim());
  const part = $(".heat-part", node);
  const url = URL.createObjectURL(await r.blob());
  urls.add(url);
  // On a phone the poster sits above the bars, out of sight after tapping a lower genre.
  heat.onload = () => $(".poster", node).scrollIntoView({ block: "nearest", behavior: "smooth" });
  Object.assign(heat, { src: url, alt: `Heatmap of the regions that drove ${genre}`, hidden: false });
  $(".heat-genre", node).textContent = `${genre} ${bar}:`;
  legend.hidden = false;
  part.textContent = `The heatmap explains the image's part: ${fmt(Number(r.headers.get("X-Score")))} from the image alone, ${bar} with the words read.`;
  part.hidden = !words;
  note.textContent = `Heatmap for ${genre} (${bar}): the brighter a region, the more it drove ${words ? "the image's part of " : ""}the score. Tap another genre, or the poster to hide it.`;
  heat.onclick = () => { heat.hidden = legend.hidden = part.hidden = true; li.classList.remove("chosen"); };
}

function readRule() {
  const k = Number($("#topk").value);
  if (!Number.isInteger(k) || k < 1 || k > limits.topK) {
    showError(`k must be a whole number from 1 to ${limits.topK}, the number of genres the model scores.`);
    return null;
  }
  return { decision: $("#decision").value, top_k: k, text: !$("#text-switch").hidden && $("#text").checked };
}

function setBusy(done, total) {
  $("#busy").hidden = done >= total;
  $("#progress").textContent = `${done} / ${total}`;
  Object.assign($("#bar"), { max: total, value: done });
}

// One batch: files over the size cap are refused here, without uploading them; the others go in
// one request. Returns a result per file, in order, or null when the server refused the request
// itself (a bad option, not ready): the next batches would be refused the same way.
async function predictBatch(batch, rule, problems) {
  const answers = batch.map(f => f.size > limits.bytes
    ? { path: f.name, genres: [], predicted: [], error: `${f.name}: ${overCap(f.size, limits.bytes)}` } : null);
  answers.forEach(a => a && problems.push(`Too large: ${a.error}`));
  const todo = batch.filter((f, j) => !answers[j]);
  if (!todo.length) return answers;
  const body = new FormData();
  todo.forEach(f => body.append("file", f));
  body.append("decision", rule.decision);
  body.append("top_k", String(rule.top_k));
  body.append("text", String(rule.text));
  const r = await fetch("/api/predict", { method: "POST", body }).catch(() => null);
  if (!r) { problems.push("The upload failed: the server did not answer."); return null; }
  const data = await r.json().catch(() => null);
  const list = Array.isArray(data) ? data : data && data.results;
  if (!list) {
    problems.push(!data ? `The server answered ${r.status} without a readable body.`
      : r.status === 503 ? data.error : `The server refused the request: ${data.error}`);
    return null;
  }
  if (!r.ok) problems.push(`${r.status === 413 ? "Too large" : "Not a readable image"}: ${data.error}`);
  let k = 0;
  return answers.map(a => a || list[k++]);
}

async function predictAll(files) {
  showError("");
  if (!ready) { showError("The server is still loading the model; try again in a moment."); return; }
  const rule = readRule();
  if (!rule) return;
  const group = Object.assign(document.createElement("div"), { className: "group" });
  results.prepend(group);  // the newest selection on top, in its own selection order
  const problems = [];
  try {
    for (let i = 0; i < files.length; i += limits.files) {
      setBusy(i, files.length);
      const batch = files.slice(i, i + limits.files), answers = await predictBatch(batch, rule, problems);
      if (!answers) break;
      batch.forEach((f, j) => group.appendChild(card(f, answers[j], rule)));
    }
  } finally {
    setBusy(files.length, files.length);
    if (!group.children.length) group.remove();
    updateButtons();
  }
  if (problems.length) showError(problems[0] + (problems.length > 1 ? ` (and ${problems.length - 1} more)` : ""));
}

// Selections queue up: a second drop waits for the first to finish, and keeps its own order.
function send(files) {
  if (!files.length) return;
  queue = queue.then(() => predictAll(files)).catch(e => showError(`Something went wrong in the page: ${e.message}`));
}

function updateButtons() {
  const none = !results.querySelector("article.card");
  $("#csv").disabled = $("#clear").disabled = none;
}

// The same columns as `postergenre predict --format csv`, built from the results on the page.
function downloadCsv() {
  const cell = v => (/[",\n\r]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
  const lines = [["path", "predicted", "error", "text", ...genreOrder]];
  for (const node of results.querySelectorAll("article.card")) {
    const res = shown.get(node), scores = Object.fromEntries(res.genres.map(g => [g.genre, g.score]));
    lines.push([res.path, res.predicted.join("|"), res.error || "", res.text || "", ...genreOrder.map(g => scores[g] ?? "")]);
  }
  const blob = new Blob([lines.map(l => l.map(cell).join(",")).join("\n") + "\n"], { type: "text/csv" });
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: "postergenre-results.csv" });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function clearResults() {
  results.replaceChildren();
  urls.forEach(u => URL.revokeObjectURL(u));
  urls.clear();
  showError("");
  updateButtons();
}

const drop = $("#drop");
$("#files").addEventListener("change", e => { send([...e.target.files]); e.target.value = ""; });
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", e => send([...e.dataTransfer.files]));
drop.addEventListener("keydown", e => { if (e.target === drop && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); $("#files").click(); } });
$("#csv").addEventListener("click", downloadCsv);
$("#clear").addEventListener("click", clearResults);
pollHealth();
