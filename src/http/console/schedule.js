// The schedule builder: date ranges, dayparts with weekday chips, and cron lines explained in
// plain words with their next five starts in the playlist's zone (GET /api/v1/schedule/cron),
// daylight-saving days marked. Entries are the playlist file's own shapes (docs/playlist.schema.json).
import {api, esc, debounce, site, errorOf} from "./api.js";
import {t, lang} from "./i18n.js";
import {dateIn, ymd, nextDay} from "./chart.js";

export const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

export const kindOf = e => ("from" in e || "until" in e) ? "range" : ("cron" in e || "for" in e) ? "cron" : "daypart";

// A fresh entry of `kind`.
export function fresh(kind) {
  const today = dateIn(Date.now(), site.timezone);
  if (kind === "range") return {from: ymd(today) + "T00:00", until: ymd(nextDay(today)) + "T00:00"};
  if (kind === "cron") return {cron: "0 9 * * 1-5", for: "1h"};
  return {start: "08:00", end: "18:00"};
}

// `days` as written (`mon`, `mon-fri`, …) → a set of day names.
export function expandDays(days) {
  const out = new Set();
  for (const d of days || []) {
    const [a, b] = String(d).toLowerCase().split("-");
    const i = DAYS.indexOf(a), j = b === undefined ? i : DAYS.indexOf(b);
    if (i < 0 || j < 0) continue;
    for (let k = i; ; k = (k + 1) % 7) { out.add(DAYS[k]); if (k === j) break; }
  }
  return out;
}

const local = v => v === undefined || /^\d{4}-\d\d-\d\dT\d\d:\d\d$/.test(v);

function when(p, key, v) {
  const type = local(v) ? "datetime-local" : "text";
  return `<label>${esc(t("range_" + key))} <input type="${type}" data-bind="${p}/${key}" value="${esc(v ?? "")}" size="26"></label>`;
}

// The entries' HTML; `p` is each entry's JSON Pointer.
export function render(doc) {
  const entries = (doc.schedule || []).map((e, i) => {
    const p = `/schedule/${i}`, kind = kindOf(e);
    const kinds = ["range", "daypart", "cron"].map(k => `<option value="${k}" ${k === kind ? "selected" : ""}>${esc(t("kind_" + k))}</option>`).join("");
    let body = "";
    if (kind === "range") body = when(p, "from", e.from) + when(p, "until", e.until);
    if (kind === "daypart") {
      const on = expandDays(e.days);
      const all = on.size === 0;
      body = `<label>${esc(t("daypart_start"))} <input type="time" data-bind="${p}/start" value="${esc(e.start ?? "")}"></label>
        <label>${esc(t("daypart_end"))} <input type="time" data-bind="${p}/end" value="${esc(e.end ?? "")}"></label>
        <span class="chips" data-ptr="${p}/days" role="group" aria-label="${esc(t("days"))}">${DAYS.map(d =>
          `<button type="button" class="chip small" data-day="${d}" data-entry="${i}" aria-pressed="${!all && on.has(d)}">${esc(t("day_" + d))}</button>`).join("")}</span>
        <span class="muted">${esc(all ? t("every_day") : "")}${e.end && e.start && e.end <= e.start ? " " + esc(t("crosses_midnight")) : ""}</span>`;
    }
    if (kind === "cron") body = `<label>cron <input data-bind="${p}/cron" value="${esc(e.cron ?? "")}" size="16" class="mono"></label>
        <label>${esc(t("for"))} <input data-bind="${p}/for" value="${esc(e.for ?? "")}" size="8" placeholder="1h 30m"></label>
        <div class="explain muted" data-explain="${i}"></div>`;
    return `<div class="entry" data-ptr="${p}"><select data-kind="${i}" aria-label="${esc(t("entry_kind"))}">${kinds}</select>${body}
      <button type="button" class="small" data-act="del-entry" data-i="${i}" aria-label="${esc(t("delete"))}">✕</button></div>`;
  }).join("");
  return `<fieldset data-ptr="/schedule"><legend>${esc(t("schedule"))}</legend>${entries || `<p class="muted">${esc(t("no_schedule"))}</p>`}
    <div class="row">${["range", "daypart", "cron"].map(k => `<button type="button" data-act="add-entry" data-kind-new="${k}">+ ${esc(t("kind_" + k))}</button>`).join("")}</div></fieldset>`;
}

// Fills each cron entry's explanation.
export function explainAll(doc, root) {
  (doc.schedule || []).forEach((e, i) => { if (kindOf(e) === "cron") explainOne(doc, root, i); });
}

export const explainSoon = debounce(explainOne, 300);

const asked = {};  // the latest question per entry: an older answer is dropped

async function explainOne(doc, root, i) {
  const e = doc.schedule?.[i];
  if (!root.querySelector(`[data-explain="${i}"]`) || !e?.cron) return;
  const q = `cron=${encodeURIComponent(e.cron)}&timezone=${encodeURIComponent(doc.timezone || "")}`;
  asked[i] = q;
  const r = await api("GET", "/api/v1/schedule/cron?" + q);
  const box = root.querySelector(`[data-explain="${i}"]`);
  if (asked[i] !== q || !box) return;
  if (!r.ok) { box.innerHTML = `<span class="err">${esc(errorOf(r))}</span>`; return; }
  const starts = r.data.next.map(s => `<li>${esc(s.local)}${s.offset_change ? ` <b class="dst">${esc(t("dst_day"))}: ${esc(s.offset_change)}</b>` : ""}</li>`).join("");
  box.innerHTML = `<b>${esc(lang() === "zh" ? r.data.zh : r.data.en)}</b> <span>(${esc(r.data.timezone)}${e.for ? `, ${esc(t("each_lasts"))} ${esc(e.for)}` : ""})</span>
    <div>${esc(t("next_starts"))}:</div><ol>${starts}</ol>`;
}

// Toggles a weekday chip of entry `i`.
export function toggleDay(doc, i, day) {
  const e = doc.schedule[i];
  const on = expandDays(e.days);
  // No chip pressed means every day; the first chip pressed narrows it to that day.
  if (on.has(day)) on.delete(day); else on.add(day);
  if (on.size === 0 || on.size === 7) delete e.days; else e.days = DAYS.filter(d => on.has(d));
}
