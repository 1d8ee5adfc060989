// The fleet dashboard: counts at a glance (each a filter), the list filtered by channel and
// state, CSV export (GET /api/v1/displays as text/csv), and one display's detail: its facts,
// its proof of play over the last 24 hours as plays per hour per playlist, its recent plays.
import {$, api, esc, download, site} from "./api.js";
import {t} from "./i18n.js";
import {hhmm, hourStart, local, stackedBars} from "./chart.js";

let all = [];
let picked = null;
let timer = null;
let cache = null;  // the picked display's plays, fetched at most once a minute

// The states a display can be in, each a count card and a filter.
const KINDS = {
  online: d => d.state === "online",
  offline: d => d.state === "offline" || d.state === "unknown",
  stale: d => d.state === "stale",
  outdated: d => !d.up_to_date,
  conflict: d => d.conflict,
  clock_skew: d => d.clock_skew,
};

// The filters, in the current language (kept as chosen).
function filters() {
  const c = $("fleet-channel").value, k = $("fleet-state").value;
  $("fleet-channel").innerHTML = `<option value="">${esc(t("all_channels"))}</option>` + site.channels.map(x => `<option>${esc(x)}</option>`).join("");
  $("fleet-state").innerHTML = `<option value="">${esc(t("all_states"))}</option>` + Object.keys(KINDS).map(x => `<option value="${x}">${esc(t("fs_" + x))}</option>`).join("");
  $("fleet-channel").value = c; $("fleet-state").value = k;
}

export function init() {
  $("fleet-channel").onchange = draw;
  $("fleet-state").onchange = draw;
  $("refresh-fleet").onclick = show;
  $("fleet-csv").onclick = async () => {
    const err = await download("/api/v1/displays", "displays.csv");
    if (err) $("display-detail").innerHTML = `<p class="err">${esc(err)}</p>`;
  };
  $("fleet-counts").addEventListener("click", e => {
    const c = e.target.closest(".card");
    if (!c) return;
    $("fleet-state").value = $("fleet-state").value === c.dataset.kind ? "" : c.dataset.kind;
    draw();
  });
  $("fleet").addEventListener("click", e => { const r = e.target.closest("tr[data-id]"); if (r) detail(r.dataset.id); });
}

export async function show() {
  clearTimeout(timer);
  filters();
  const r = await api("GET", "/api/v1/displays");
  all = r.data.displays || [];
  draw();
  if (picked) detail(picked, true);
  if ($("tab-fleet").classList.contains("on")) timer = setTimeout(show, 5000);
}

function draw() {
  const chan = $("fleet-channel").value, kind = $("fleet-state").value;
  const inChan = all.filter(d => !chan || d.channel === chan);
  $("fleet-counts").innerHTML = `<div class="card"><b>${inChan.length}</b>${esc(t("fs_all"))}</div>` + Object.entries(KINDS).map(([k, f]) => {
    const n = inChan.filter(f).length;
    const tone = k === "online" ? "ok" : n ? (k === "stale" || k === "outdated" ? "warn" : "bad") : "";
    return `<div class="card ${tone} ${kind === k ? "on" : ""}" data-kind="${k}" data-count="${n}" tabindex="0" role="button"><b>${n}</b>${esc(t("fs_" + k))}</div>`;
  }).join("");
  const rows = inChan.filter(d => !kind || KINDS[kind](d));
  $("fleet").innerHTML = rows.map(d => `<tr class="pick ${d.id === picked ? "on" : ""}" data-id="${esc(d.id)}" tabindex="0"><td>${esc(d.id)}</td><td>${esc(d.channel)}</td>
    <td class="${d.state === "online" && !d.conflict ? "ok" : "err"}">${esc(t("fs_" + (d.state === "unknown" ? "offline" : d.state)))} <span class="muted">${t("since")} ${esc(when(d.since))}</span>${d.conflict ? ` <b>${t("conflict")}</b>` : ""}${d.clock_skew ? ` <b>${t("clock_off")}</b>` : ""}</td>
    <td>${esc(when(d.last_seen))}</td>
    <td class="${d.up_to_date ? "" : "err"}">v${d.timeline_version ?? "-"}/v${d.expected_timeline?.version ?? "-"}</td>
    <td>${esc(d.last_alert_ack ?? "-")}${d.last_alert_latency_ms != null ? ` (${d.last_alert_latency_ms} ms)` : ""}</td></tr>`).join("")
    || `<tr><td colspan="6" class="muted">${esc(t("no_displays"))}</td></tr>`;
}

const when = s => local(s, site.timezone);

async function detail(id, quiet) {
  picked = id;
  document.querySelectorAll("#fleet tr").forEach(r => r.classList.toggle("on", r.dataset.id === id));
  const d = all.find(x => x.id === id);
  if (!d) return;
  // The last 24 local hours (the current one included), by the zone's own hour boundaries.
  const now = Date.now(), tz = site.timezone;
  const starts = Array.from({length: 24}, (_, k) => hourStart(now - (23 - k) * 3600e3, tz));
  if (!quiet || !cache || cache.id !== id || now - cache.at > 60e3) {
    const r = await api("GET", `/api/v1/plays?display=${encodeURIComponent(id)}&from=${encodeURIComponent(new Date(starts[0]).toISOString())}`);
    cache = {id, at: now, plays: r.data.plays || []};
  }
  const plays = cache.plays;
  const hours = starts.map(s => hhmm(s, tz).slice(0, 2) + "h");
  const series = {};
  for (const p of plays) {
    const at = Date.parse(p.start);
    let h = starts.length - 1;
    while (h > 0 && at < starts[h]) h--;
    if (at < starts[0]) continue;
    (series[p.playlist] ??= new Array(24).fill(0))[h] += 1;
  }
  const chart = stackedBars(hours, Object.entries(series).map(([name, values]) => ({name, values})), {title: t("plays_per_hour")});
  const facts = [["channel", d.channel], ["state", t("fs_" + (d.state === "unknown" ? "offline" : d.state)) + " " + t("since") + " " + when(d.since)],
    ["last_seen", when(d.last_seen)], ["agent_version", d.agent_version], ["started", when(d.started_at)],
    ["version", `${d.timeline_topic ?? "-"} v${d.timeline_version ?? "-"} / v${d.expected_timeline?.version ?? "-"}`],
    ["clock", d.clock_skew_ms != null ? `${d.clock_skew_ms} ms` : "-"], ["broker", d.broker ?? "-"],
    ["last_ack", d.last_alert_ack ? `${d.last_alert_ack} ${when(d.last_alert_ack_at)} (${d.last_alert_latency_ms ?? "-"} ms)` : "-"],
    ["conflict_at", d.conflict_at ? when(d.conflict_at) : "-"]];
  $("display-detail").innerHTML = `<h3>${esc(id)}</h3><table class="facts"><tbody>${facts.map(([k, v]) => `<tr><th>${esc(t(k))}</th><td>${esc(v)}</td></tr>`).join("")}</tbody></table>
    <h4>${esc(t("plays_per_hour"))} (${plays.length})</h4><div class="chart" id="plays-chart">${chart}</div>
    <h4>${esc(t("recent_plays"))}</h4><div class="scroll"><table><tbody>${plays.slice(-10).reverse().map(p => `<tr><td>${esc(when(p.start))}</td><td>${esc(p.playlist)}/${esc(p.item)}</td><td>${esc(p.lang)}</td></tr>`).join("") || `<tr><td class="muted">${esc(t("no_plays"))}</td></tr>`}</tbody></table></div>`;
  if (!quiet) $("display-detail").scrollIntoView({block: "nearest"});
}
