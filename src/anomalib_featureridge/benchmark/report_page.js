// The benchmark report's only script: thresholds, counts, recall and gallery order at the chosen
// false-alarm rate. The rules are those of page_figures.py (same operations on the same numbers),
// so the page and the Python figures agree exactly.
"use strict";

const DATA = JSON.parse(document.getElementById("report-data").textContent);
const TOLERANCE = 1e-9;

function thresholdAt(scores, labels, rate) {
  const good = scores.filter((_, i) => labels[i] === 0).sort((a, b) => b - a);
  if (good.length === 0) return -Infinity;
  const allowed = Math.floor(good.length * rate + TOLERANCE);
  return good[Math.min(allowed, good.length - 1)];
}

function galleryOrder(scores, labels, thresholds, selected) {
  const models = selected === null ? scores.map((_, m) => m) : [selected];
  const spans = models.map((m) => Math.max(Math.max(...scores[m]) - Math.min(...scores[m]), 1e-12));
  const keys = labels.map((label, index) => {
    let errors = 0;
    let worst = -Infinity;
    models.forEach((m, k) => {
      const score = scores[m][index];
      const threshold = thresholds[m];
      let margin;
      if (label === 1) {
        errors += score <= threshold ? 1 : 0;
        margin = (threshold - score) / spans[k];
      } else {
        errors += score > threshold ? 1 : 0;
        margin = (score - threshold) / spans[k];
      }
      worst = Math.max(worst, margin);
    });
    const group = label === 0 ? 1 : errors ? 0 : 2;
    return [group, -errors, -worst, index];
  });
  keys.sort((a, b) => {
    for (let i = 0; i < a.length; i++) {
      if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
    }
    return 0;
  });
  return keys.map((key) => key[3]);
}

function formatNumber(value) {
  return Number.isFinite(value) ? String(Number(value.toPrecision(4))) : String(value);
}

function readRate() {
  const asked = new URLSearchParams(window.location.search).get("far");
  const rate = asked === null ? DATA.rate : parseFloat(asked);
  return Number.isFinite(rate) && rate >= 0 && rate < 1 ? rate : DATA.rate;
}

function moveLine(svg, threshold) {
  const low = parseFloat(svg.dataset.low);
  const high = parseFloat(svg.dataset.high);
  const left = parseFloat(svg.dataset.left);
  const span = parseFloat(svg.dataset.span);
  const x = left + ((Math.min(Math.max(threshold, low), high) - low) / (high - low)) * span;
  const line = svg.querySelector("line.threshold");
  line.setAttribute("x1", x.toFixed(1));
  line.setAttribute("x2", x.toFixed(1));
}

function updateGroup(group, rate) {
  const section = document.getElementById(group.key);
  const thresholds = group.scores.map((scores) => thresholdAt(scores, group.labels, rate));
  const histograms = section.querySelectorAll("svg.hist");
  group.models.forEach((_, m) => {
    let misses = 0;
    let alarms = 0;
    group.scores[m].forEach((score, i) => {
      if (group.labels[i] === 1 && score <= thresholds[m]) misses++;
      if (group.labels[i] === 0 && score > thresholds[m]) alarms++;
    });
    document.getElementById(`${group.key}-m${m}-threshold`).textContent = formatNumber(thresholds[m]);
    document.getElementById(`${group.key}-m${m}-misses`).textContent = String(misses);
    document.getElementById(`${group.key}-m${m}-alarms`).textContent = String(alarms);
    moveLine(histograms[m], thresholds[m]);
    group.kinds.forEach((kind, d) => {
      const members = group.defects.map((defect, i) => (defect === kind ? i : -1)).filter((i) => i >= 0);
      const caught = members.filter((i) => group.scores[m][i] > thresholds[m]).length;
      document.getElementById(`${group.key}-d${d}-m${m}-recall`).textContent = (caught / members.length).toFixed(2);
    });
  });
  const gallery = document.getElementById(`${group.key}-gallery`);
  const cards = new Map([...gallery.querySelectorAll(".card")].map((card) => [Number(card.dataset.index), card]));
  cards.forEach((card, index) => {
    card.querySelectorAll("figure.verdict").forEach((figure) => {
      const m = Number(figure.dataset.model);
      const flagged = group.scores[m][index] > thresholds[m];
      const label = group.labels[index];
      figure.classList.toggle("miss", label === 1 && !flagged);
      figure.classList.toggle("alarm", label === 0 && flagged);
      figure.classList.toggle("caught", label === 1 && flagged);
    });
  });
  const sorter = section.querySelector("select.sort");
  const selected = sorter.value === "" ? null : Number(sorter.value);
  galleryOrder(group.scores, group.labels, thresholds, selected).forEach((index) => {
    gallery.appendChild(cards.get(index));
  });
  const filter = section.querySelector("select.filter").value;
  cards.forEach((card) => {
    card.hidden = filter !== "" && card.dataset.defect !== filter;
  });
}

function update(rate) {
  document.getElementById("rate-value").textContent = String(rate);
  document.getElementById("rate").value = String(rate);
  document.getElementById("rate-slider").value = String(rate);
  document.querySelectorAll(".rate-text").forEach((span) => {
    span.textContent = String(rate);
  });
  DATA.groups.forEach((group) => updateGroup(group, rate));
  document.body.dataset.rate = String(rate);
}

function openViewer(card) {
  const body = document.getElementById("viewer-body");
  body.replaceChildren();
  const title = document.createElement("h3");
  title.textContent = card.querySelector(".name").textContent;
  body.appendChild(title);
  card.querySelectorAll("figure").forEach((figure) => body.appendChild(figure.cloneNode(true)));
  body.querySelectorAll("img").forEach((img) => img.removeAttribute("loading"));
  document.getElementById("viewer").hidden = false;
}

// A shared address can carry the view too: ?far=0.1&sort=0&defect=scratch (sort: a model's index).
function applyAddress() {
  const query = new URLSearchParams(window.location.search);
  document.querySelectorAll("select.sort, select.filter").forEach((select) => {
    const wanted = query.get(select.classList.contains("sort") ? "sort" : "defect");
    if (wanted !== null && [...select.options].some((option) => option.value === wanted)) select.value = wanted;
  });
}

let current = readRate();
applyAddress();
update(current);
["rate", "rate-slider"].forEach((id) => {
  document.getElementById(id).addEventListener("input", (event) => {
    const rate = parseFloat(event.target.value);
    if (Number.isFinite(rate) && rate >= 0 && rate < 1) {
      current = rate;
      update(current);
    }
  });
});
document.querySelectorAll("select.sort, select.filter").forEach((select) => {
  select.addEventListener("change", () => update(current));
});
document.querySelectorAll(".gallery").forEach((gallery) => {
  gallery.addEventListener("click", (event) => {
    const card = event.target.closest(".card");
    if (card) openViewer(card);
  });
});
document.getElementById("viewer").addEventListener("click", () => {
  document.getElementById("viewer").hidden = true;
});
