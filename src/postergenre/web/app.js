"use strict";
const $ = (sel, root = document) => root.querySelector(sel);
const statusEl = $("#status"), errorEl = $("#error"), results = $("#results");
let ready = false, calibrated = false;

function showError(text) { errorEl.textContent = text; errorEl.hidden = !text; }

async function pollHealth() {
  try {
    const r = await fetch("/api/health");
    const h = await r.json();
    if (h.status === "ready") {
      ready = true;
      calibrated = Boolean(h.calibrated);
      statusEl.textContent = `Model ${h.model} ready (${h.genres} genres, ${h.engine} engine, v${h.version}).`
        + (calibrated ? " Each bar is the probability that the poster's film has that genre." : "");
      statusEl.className = "status ready";
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

function card(file, res, rule) {
  const node = $("#card").content.firstElementChild.cloneNode(true);
  const url = URL.createObjectURL(file);
  $(".image", node).src = url;
  $(".image", node).alt = `Poster ${file.name}`;
  $(".name", node).textContent = file.name;
  if (res.error) {
    node.classList.add("failed");
    node.replaceChildren(Object.assign(document.createElement("p"), { className: "card-error", textContent: res.error }));
    return node;
  }
  $(".predicted", node).textContent = res.predicted.join(" / ") || "(no genre above its threshold)";
  $(".rule", node).textContent = rule.decision === "thresholds"
    ? `Rule: per-genre thresholds tuned on validation (at most ${rule.top_k}).`
    : `Rule: the top ${rule.top_k} scores.`;
  const bars = $(".bars", node);
  for (const g of res.genres) {
    const li = document.createElement("li");
    li.dataset.genre = g.genre;
    if (res.predicted.includes(g.genre)) li.classList.add("hit");
    li.innerHTML = `<span class="label"></span><span class="track"><span class="fill"></span></span><span class="value"></span>`;
    $(".label", li).textContent = g.genre;
    $(".fill", li).style.width = `${(100 * g.score).toFixed(1)}%`;
    $(".value", li).textContent = calibrated ? `${Math.round(100 * g.score)}%` : g.score.toFixed(2);
    li.title = `Show which regions drove ${g.genre}`;
    li.addEventListener("click", () => explain(node, file, g.genre, li));
    bars.appendChild(li);
  }
  return node;
}

async function explain(node, file, genre, li) {
  node.querySelectorAll(".bars li").forEach(x => x.classList.remove("chosen"));
  li.classList.add("chosen");
  const note = $(".explain-note", node);
  note.textContent = `Computing the heatmap for ${genre}…`;
  const body = new FormData();
  body.append("file", file);
  body.append("genre", genre);
  const r = await fetch("/api/explain", { method: "POST", body });
  if (!r.ok) {
    const e = await r.json().catch(() => ({ error: r.statusText }));
    note.textContent = `No heatmap: ${e.error}`;
    return;
  }
  const heat = $(".heat", node);
  heat.src = URL.createObjectURL(await r.blob());
  heat.alt = `Heatmap of the regions that drove ${genre}`;
  heat.hidden = false;
  note.textContent = `Heatmap for ${genre} (score ${Number(r.headers.get("X-Score")).toFixed(2)}): red regions drove it most. Click another genre, or the poster to hide it.`;
  heat.onclick = () => { heat.hidden = true; li.classList.remove("chosen"); };
}

async function send(files) {
  showError("");
  if (!files.length) return;
  if (!ready) { showError("The server is still loading the model; try again in a moment."); return; }
  const rule = { decision: $("#decision").value, top_k: Number($("#topk").value) || 3 };
  const body = new FormData();
  for (const f of files) body.append("file", f);
  body.append("decision", rule.decision);
  body.append("top_k", String(rule.top_k));
  let r;
  try { r = await fetch("/api/predict", { method: "POST", body }); }
  catch (e) { showError("The upload failed: the server did not answer."); return; }
  const data = await r.json().catch(() => null);
  if (!data) { showError(`The server answered ${r.status} without a readable body.`); return; }
  const list = Array.isArray(data) ? data : (data.results || []);
  if (!r.ok) showError(r.status === 413 ? `Too large: ${data.error}` : `Not a readable image: ${data.error}`);
  list.forEach((res, i) => results.prepend(card(files[i], res, rule)));
}

const drop = $("#drop");
$("#files").addEventListener("change", e => { send([...e.target.files]); e.target.value = ""; });
["dragenter", "dragover"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach(t => drop.addEventListener(t, e => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", e => send([...e.dataTransfer.files]));
pollHealth();
