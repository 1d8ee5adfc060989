// Review before publishing: the proposals waiting (with the tab's badge), each one's line diff
// against the file it was proposed over, publish, or reject with a reason typed in its row.
import {$, api, esc, errorOf} from "./api.js";
import {t} from "./i18n.js";

let published = async () => {};

// `f(playlist)` runs after a proposal for `playlist` is published.
export function onPublished(f) { published = f; }

export async function badge() {
  const r = await api("GET", "/api/v1/proposals?status=pending");
  $("pending-badge").textContent = (r.data.proposals || []).length ? String(r.data.proposals.length) : "";
  return r.data.proposals || [];
}

let pending = [];

export async function proposals() {
  pending = await badge();
  $("proposals").innerHTML = pending.map(p => `<tr data-row="${p.id}"><td>${p.id}</td><td>${esc(p.playlist)}${p.body == null ? ` (${esc(t("delete"))})` : ""}</td><td>${esc(p.author)}</td>
    <td>${(p.impact || []).map(i => esc(i.target)).join(", ")}</td>
    <td><button data-proposal="${p.id}" data-decision="diff">${t("show_changes")}</button>
      <button data-proposal="${p.id}" data-decision="publish">${t("publish")}</button>
      <input data-reason="${p.id}" size="18" placeholder="${esc(t("reject_why"))}" aria-label="${esc(t("reject_why"))}">
      <button data-proposal="${p.id}" data-decision="reject">${t("reject")}</button></td></tr>`).join("");
}

// Lines removed (-) and added (+) from `a` to `b`, with unchanged lines around them (LCS).
export function lineDiff(a, b) {
  const x = (a ?? "").split("\n"), y = (b ?? "").split("\n");
  if (x.length * y.length > 4e6) return [...x.map(l => ["-", l]), ...y.map(l => ["+", l])];
  const n = x.length, m = y.length, L = Array.from({length: n + 1}, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--)
    L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
    else if (j < m && (i === n || L[i][j + 1] >= L[i + 1][j])) out.push(["+", y[j++]]);
    else out.push(["-", x[i++]]);
  }
  return out;
}

function showDiff(p) {
  const lines = lineDiff(p.before, p.body);
  // Changed lines with two lines of context.
  const keep = lines.map((l, k) => lines.slice(Math.max(0, k - 2), k + 3).some(z => z[0] !== " "));
  const html = lines.map((l, k) => keep[k] ? `<div class="d${l[0] === "+" ? "add" : l[0] === "-" ? "del" : ""}">${esc(l[0] + " " + l[1])}</div>` : "").join("");
  $("check-out").innerHTML = `<div class="diff" id="proposal-diff"><b>#${p.id} ${esc(p.playlist)}</b> · ${esc(p.author)}${html}</div>`;
}

async function decide(id, decision) {
  const p = pending.find(x => String(x.id) === String(id));
  if (decision === "diff") { if (p) showDiff(p); return; }
  let body;
  if (decision === "reject") {
    const why = document.querySelector(`[data-reason="${id}"]`)?.value.trim();
    if (!why) { $("check-out").innerHTML = `<div class="err">${esc(t("reason_needed"))}</div>`; return; }
    body = {reason: why};
  }
  const r = await api("POST", `/api/v1/proposals/${id}/${decision}`, body);
  await proposals();
  if (r.ok && decision === "publish" && p) await published(p.playlist);
  $("check-out").innerHTML = r.ok ? `<div class="ok">${esc(t(decision === "publish" ? "published" : "rejected_done"))}: #${id} ${esc(p?.playlist ?? "")}</div>`
    : `<div class="err">${esc(errorOf(r))}</div>`;
}

document.addEventListener("click", e => {
  const b = e.target.closest("button[data-proposal]");
  if (b) decide(b.dataset.proposal, b.dataset.decision);
});
