// The page of `tlearn serve`: choose or drop an image, see it and its top 5 as bars.
// Everything is served by the app itself: no CDN, no framework.
"use strict";

const fileInput = document.getElementById("file");
const drop = document.getElementById("drop");
const preview = document.getElementById("preview");
const topLabel = document.getElementById("top-label");
const bars = document.getElementById("bars");
const statusLine = document.getElementById("status");

fetch("/model")
  .then((r) => r.json())
  .then((m) => {
    const names = (m.backbones || []).map((b) => b.name).join(" + ");
    const size = m.input && m.input.shape ? m.input.shape[2] : "?";
    document.getElementById("model-info").textContent =
      `${names} · ${m.classes.length} classes · ${size} px · ${m.engine}`;
  })
  .catch(() => {
    document.getElementById("model-info").textContent = "model description unavailable";
  });

function showBars(prediction) {
  bars.replaceChildren();
  prediction.labels.forEach((label, i) => {
    const p = prediction.probabilities[i];
    const li = document.createElement("li");
    li.className = "bar";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.appendChild(fill);
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    li.append(name, track, value);
    bars.appendChild(li);
  });
  topLabel.textContent = prediction.labels[0];
}

async function classify(file) {
  if (!file) return;
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  topLabel.textContent = "…";
  bars.replaceChildren();
  statusLine.textContent = "";
  const body = new FormData();
  body.append("file", file, file.name);
  const started = performance.now();
  try {
    const response = await fetch("/predict?topk=5", { method: "POST", body });
    const answer = await response.json();
    if (!response.ok) {
      topLabel.textContent = "cannot classify this file";
      statusLine.textContent = answer.detail || `error ${response.status}`;
      return;
    }
    showBars(answer.predictions[0]);
    statusLine.textContent = `${answer.engine}, ${Math.round(performance.now() - started)} ms`;
  } catch (e) {
    topLabel.textContent = "the server did not answer";
    statusLine.textContent = String(e);
  }
}

fileInput.addEventListener("change", () => classify(fileInput.files[0]));
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  classify(e.dataTransfer.files[0]);
});
