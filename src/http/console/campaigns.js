// SMS campaigns: a template (per the gateways that have it) or free text, a list from a file
// (CSV, TXT, XLSX: uploaded as it is) or pasted, the estimate and rejected rows (downloadable),
// the actions of each state, and one campaign's live progress: per-state counts and a chart of
// sent, delivered and failed per minute (GET /api/v1/campaigns/{id}/progress).
import {$, api, esc, errorOf, upload, download} from "./api.js";
import {t} from "./i18n.js";
import {hhmm, stackedBars} from "./chart.js";
import {site} from "./api.js";

let timer = null;
let templates = null;
let gateways = [];
let picked = null;

export function init() {
  $("c-create").onclick = create;
  $("c-text").addEventListener("input", count);
  $("c-template").onchange = count;
  $("campaigns").addEventListener("click", e => {
    const b = e.target.closest("button[data-act]");
    if (b) { action(b.dataset.campaign, b.dataset.act); return; }
    const r = e.target.closest("tr[data-id]");
    if (r) { picked = Number(r.dataset.id); show(); }
  });
  $("c-out").addEventListener("click", e => {
    const b = e.target.closest("button[data-rejects]");
    if (b) download(`/api/v1/campaigns/${b.dataset.rejects}/rejects`, `campaign-${b.dataset.rejects}-rejects.csv`);
  });
}

// Minutes from the first to the last with activity, quiet ones as zeros; a long campaign in
// wider steps (at most 360 bars).
function perMinute(minutes) {
  const out = {labels: [], sent: [], delivered: [], failed: []};
  if (!minutes.length) return out;
  const first = Date.parse(minutes[0].minute), last = Date.parse(minutes.at(-1).minute);
  const step = 60e3 * Math.max(1, Math.ceil((last - first) / 60e3 / 360));
  const at = new Map(minutes.map(m => [Date.parse(m.minute), m]));
  for (let t0 = first; t0 <= last; t0 += step) {
    let s = 0, d = 0, f = 0;
    for (let t1 = t0; t1 < t0 + step; t1 += 60e3) {
      const m = at.get(t1);
      if (m) { s += m.sent; d += m.delivered; f += m.failed; }
    }
    out.labels.push(hhmm(t0, site.timezone)); out.sent.push(s); out.delivered.push(d); out.failed.push(f);
  }
  return out;
}

// Characters, and the encoding the text needs (GSM 03.38 fits 160 a part; else UCS-2, 70).
function count() {
  const tpl = templates?.find(x => x.name === $("c-template").value);
  $("c-text").disabled = $("c-text-en").disabled = Boolean(tpl);
  const text = tpl ? tpl.text : $("c-text").value;
  const n = Array.from(text).length;
  const gsm = /^[A-Za-z0-9 @£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!"#¤%&'()*+,\-./:;<=>?¡ÄÖÑÜ§¿äöñüà^{}\\[~\]|€]*$/.test(text);
  // Which gateways carry it: a template goes through those that have it; free text through
  // those that do not send templates only (Chinese carriers send approved templates only).
  const via = tpl ? tpl.gateways : gateways.filter(g => !g.templates_only).map(g => g.name);
  $("c-count").textContent = `${n} ${t("chars")} · ${gsm ? "GSM-7" : "UCS-2"} · `
    + (via.length ? `${t("goes_through")} ${via.join(", ")}` : t("no_gateway_for_text"));
  $("c-count").className = via.length ? "muted" : "err";
}

async function setup() {
  if (!templates) {
    const tp = await api("GET", "/api/v1/sms/templates");
    templates = tp.ok ? tp.data.templates || [] : null;
    for (const x of templates || []) {
      const o = document.createElement("option");
      o.value = x.name; o.textContent = `${x.name}: ${x.text} (${x.gateways.join(", ")})`;
      $("c-template").appendChild(o);
    }
  }
  const g = await api("GET", "/api/v1/sms/gateways");
  gateways = g.data.gateways || [];
  $("c-gateways").innerHTML = gateways.map(x => {
    const what = `${esc(x.name)} (${esc(x.kind)}${x.templates_only ? ", " + esc(t("templates_only")) : ""})`;
    if (x.out_of_rotation) return `<span class="err">${what}: ${t("c_out")}: ${esc(x.reason || "")}</span>`;
    return x.half_open ? `<span class="err">${what}: ${t("c_half_open")}</span>` : what;
  }).join(" · ");
  count();
}

export async function show() {
  clearTimeout(timer);
  setup();
  const r = await api("GET", "/api/v1/campaigns");
  const n = (c, k) => c.counts[k] || 0;
  const list = (r.data.campaigns || []).slice(0, 50);
  $("campaigns").innerHTML = list.map(c => {
    const pct = c.progress.total ? Math.round(100 * c.progress.done / c.progress.total) : 0;
    const act = (a, key) => `<button data-campaign="${c.id}" data-act="${a}">${t(key)}</button> `;
    const acts = ({draft: act("start", "start"), missed: act("start", "start"), pending: act("approve", "approve"),
      running: act("pause", "pause"), paused: act("resume", "resume")}[c.status] || "")
      + (["draft", "pending", "scheduled", "missed", "running", "paused"].includes(c.status) ? act("cancel", "cancel") : "");
    return `<tr class="pick ${c.id === picked ? "on" : ""}" data-id="${c.id}" data-status="${esc(c.status)}" tabindex="0"><td>${c.id}</td><td>${esc(c.name)}</td><td>${esc(t("cs_" + c.status))}${c.paused_reason ? `<br><span class="err">${esc(c.paused_reason)}</span>` : ""}</td>
      <td><div class="bar"><div style="width:${pct}%"></div></div><span class="muted">${c.progress.done}/${c.progress.total}</span></td>
      <td>${n(c, "sent")} / ${n(c, "delivered")} / ${n(c, "failed") + n(c, "rejected") + n(c, "expired")}${n(c, "unknown") ? ` <span class="err">(${n(c, "unknown")} ${esc(t("st_unknown"))})</span>` : ""}</td><td>${acts}</td></tr>`;
  }).join("");
  const c = list.find(x => x.id === picked);
  if (c) await detail(c);
  if ($("tab-campaigns").classList.contains("on")) timer = setTimeout(show, 1000);
}

let progress = null;  // the picked campaign's per-minute counts and when they were read

// The per-minute counts are read when a campaign is picked and when its counts change, at most
// every 5 s while it sends: reading them scans the campaign's messages.
async function detail(c) {
  const now = Date.now();
  const live = ["running", "paused"].includes(c.status);
  const seen = c.status + JSON.stringify(c.counts);
  if (!progress || progress.id !== c.id || (progress.seen !== seen && (!live || now - progress.at > 5000))) {
    const r = await api("GET", `/api/v1/campaigns/${c.id}/progress`);
    progress = {id: c.id, seen, at: now, minutes: r.data.minutes || []};
  }
  const {labels, sent, delivered, failed} = perMinute(progress.minutes);
  const chart = stackedBars(labels, [
    {name: t("sent"), values: sent}, {name: t("delivered"), values: delivered}, {name: t("failed"), values: failed}],
    {title: t("per_minute"), grouped: true});
  const minutes = progress.minutes;
  const states = Object.entries(c.counts).map(([k, v]) => `<div class="card" data-state="${esc(k)}"><b>${v}</b>${esc(t("st_" + k))}</div>`).join("");
  $("campaign-detail").innerHTML = `<h3>#${c.id} ${esc(c.name)} · ${esc(t("cs_" + c.status))}${c.approved_by ? ` · ${esc(t("approved_by"))} ${esc(c.approved_by)}` : ""}</h3>
    <div class="cards">${states}</div><h4>${esc(t("per_minute"))}</h4><div class="chart" id="campaign-chart" data-minutes="${minutes.length}">${chart}</div>`;
}

async function create() {
  const body = {name: $("c-name").value};
  if ($("c-template").value) body.template = $("c-template").value; else body.text = $("c-text").value;
  const file = $("c-file").files[0];
  if (file) {
    const up = await upload(file, $("c-sheet").value.trim());
    if (!up.ok) { $("c-out").innerHTML = `<p class="err">${esc(file.name)}: ${esc(errorOf(up))}</p>`; return; }
    body.recipients_upload = up.data.upload;
    if ($("c-sheet").value.trim()) body.sheet = $("c-sheet").value.trim();
  } else body.recipients_csv = $("c-csv").value;
  if ($("c-text-en").value && !body.template) body.texts = {en: $("c-text-en").value};
  const w = $("c-window").value.split("-");
  if (w.length === 2) body.send_window = {from: w[0].trim(), until: w[1].trim()};
  const r = await api("POST", "/api/v1/campaigns", body);
  if (!r.ok) { $("c-out").innerHTML = `<p class="err">${esc(errorOf(r))}${r.data.error?.field ? ` (${esc(r.data.error.field)})` : ""}</p>`; return; }
  const e = r.data.estimate;
  picked = r.data.id;
  $("c-out").innerHTML = `<p class="ok">#${r.data.id}: ${e.recipients} ${t("recipients")} · ${e.segments} ${t("segments")} (GSM-7 ${e.gsm7}, UCS-2 ${e.ucs2}) · ${e.carrier_billed} ${t("billed")} · ${e.duration_seconds} ${t("seconds_to_send")}</p>`
    + (r.data.rejects.length ? `<p class="err">${r.data.rejected ?? r.data.rejects.length} ${t("rejected")}:</p><div class="scroll"><table id="c-rejects"><tbody>${r.data.rejects.slice(0, 20).map(x => `<tr><td>${x.row}</td><td>${esc(x.value)}</td><td>${esc(x.reason)}</td></tr>`).join("")}</tbody></table></div>
      <p><button data-rejects="${r.data.id}">${t("download_rejects")}</button></p>` : "");
  show();
}

async function action(id, act) {
  let r = await api("POST", `/api/v1/campaigns/${id}/${act}`);
  if (r.status === 409 && r.data.error?.code === "missed_start" && confirm(r.data.error.message))
    r = await api("POST", `/api/v1/campaigns/${id}/${act}`, {confirm_late: true});
  if (!r.ok) $("c-out").innerHTML = `<p class="err">${esc(errorOf(r))}</p>`;
  show();
}
