// Alerts: raise one with its scope chosen on the registry (channels, or displays: from a list or
// on a map when displays have a location), optionally with an SMS part (a template or the alert's
// text, to an uploaded list), approve and clear; a live view of which displays acknowledged.
import {$, api, esc, errorOf, upload, site} from "./api.js";
import {t, textOf} from "./i18n.js";
import {local} from "./chart.js";

let open = null;   // the alert whose acknowledgements are shown
let timer = null;
const chosen = {channels: new Set(), displays: new Set()};

export function init() {
  $("raise").onclick = raise;
  for (const id of ["alert-channels", "alert-displays", "alert-map"]) $(id).addEventListener("click", pick);
  $("alerts").addEventListener("click", act);
}

export async function show() {
  clearTimeout(timer);
  drawScope();
  smsTemplates();
  const r = await api("GET", "/api/v1/alerts");
  const list = (r.data.alerts || []).slice(0, 20);
  $("alerts").innerHTML = list.map(a => {
    const state = a.cleared_at ? "cleared" : a.status;
    const acts = (a.cleared_at ? "" : (a.status === "pending" ? `<button data-approve="${esc(a.id)}">${t("approve")}</button> ` : "") + `<button data-clear="${esc(a.id)}">${t("clear")}</button> `)
      + `<button data-acks="${esc(a.id)}">${t("acks")}</button>`;
    return `<tr data-status="${esc(state)}"><td>${esc(a.id)}</td><td>${esc(textOf(a.text))}<div class="muted">${esc(scopeText(a.scope))}</div></td><td>${esc(t("as_" + state))}</td><td data-ackcount="${esc(a.id)}"></td><td>${acts}</td></tr>`;
  }).join("");
  await Promise.all(list.map(async a => {
    const d = (await api("GET", "/api/v1/alerts/" + a.id)).data;
    const cell = document.querySelector(`[data-ackcount="${CSS.escape(a.id)}"]`);
    if (cell) cell.textContent = `${(d.acks || []).length}` + ((d.not_acknowledged || []).length ? ` / ${(d.acks || []).length + d.not_acknowledged.length}` : "");
  }));
  if (open) await acks(open);
  if ($("tab-alerts").classList.contains("on")) timer = setTimeout(show, 2000);
}

const scopeText = s => s === "all" ? t("everywhere") : s.channels ? `${t("channels")}: ${s.channels.join(", ")}` : `${t("fleet")}: ${(s.displays || []).join(", ")}`;

function drawScope() {
  const chip = (kind, v, extra = "") => `<button type="button" class="chip small" data-scope="${kind}" data-v="${esc(v)}" aria-pressed="${chosen[kind].has(v)}">${esc(v)}${extra}</button>`;
  $("alert-channels").innerHTML = `<b>${esc(t("channels"))}</b> ` + site.channels.map(c => chip("channels", c)).join("");
  $("alert-displays").innerHTML = site.displays.length ? `<b>${esc(t("fleet"))}</b> ` + site.displays.map(d => chip("displays", d.id, ` <span class="muted">${esc(d.channel)}</span>`)).join("") : "";
  $("alert-map").innerHTML = map();
}

// Displays with a location on a plain equirectangular sketch (no tiles: no external URL).
function map() {
  const placed = site.displays.filter(d => d.lat != null && d.lon != null);
  if (!placed.length) return "";
  const lats = placed.map(d => d.lat), lons = placed.map(d => d.lon);
  const pad = 0.005;
  const [x0, x1, y0, y1] = [Math.min(...lons) - pad, Math.max(...lons) + pad, Math.min(...lats) - pad, Math.max(...lats) + pad];
  const W = 480, H = Math.max(160, Math.min(480, W * (y1 - y0) / (x1 - x0)));
  const dots = placed.map(d => {
    const x = ((d.lon - x0) / (x1 - x0)) * W, y = H - ((d.lat - y0) / (y1 - y0)) * H, on = chosen.displays.has(d.id);
    return `<g><circle cx="${x}" cy="${y}" r="9" fill="${on ? "#b00020" : "#0b5cad"}" data-scope="displays" data-v="${esc(d.id)}" tabindex="0" role="button" aria-pressed="${on}"><title>${esc(d.id)} (${d.lat}, ${d.lon})</title></circle>
      <text x="${x + 11}" y="${y + 4}" font-size="11">${esc(d.id)}</text></g>`;
  }).join("");
  return `<div class="map"><svg viewBox="0 0 ${W + 120} ${H}" role="group" aria-label="${esc(t("map"))}">${dots}</svg></div>`;
}

// A channel and a display scope exclude each other (an alert names channels or displays).
function pick(e) {
  const b = e.target.closest("[data-scope]");
  if (!b) return;
  const kind = b.dataset.scope, other = kind === "channels" ? "displays" : "channels";
  chosen[other].clear();
  chosen[kind].has(b.dataset.v) ? chosen[kind].delete(b.dataset.v) : chosen[kind].add(b.dataset.v);
  const where = b.closest("#alert-map") ? "#alert-map" : b.closest(".chips") ? "#" + b.closest(".chips").id : null;
  drawScope();
  // Keep the keyboard on the control that was used.
  if (where) document.querySelector(`${where} [data-scope="${kind}"][data-v="${CSS.escape(b.dataset.v)}"]`)?.focus();
}

let templates = null;
async function smsTemplates() {
  if (!templates) templates = (await api("GET", "/api/v1/sms/templates")).data.templates || [];
  const was = $("alert-template").value;
  $("alert-template").innerHTML = `<option value="">${esc(t("no_sms"))}</option><option value="-">${esc(t("sms_alert_text"))}</option>`
    + templates.map(x => `<option value="${esc(x.name)}">${esc(x.name)}: ${esc(x.text)}</option>`).join("");
  $("alert-template").value = was;
  if (!$("alert-sms-file")) $("alert-template").insertAdjacentHTML("afterend",
    `<label><span id="alert-sms-label"></span> <input id="alert-sms-file" type="file" accept=".csv,.txt,.tsv,.xlsx,text/csv,text/plain"></label>`);
  $("alert-sms-label").textContent = t("c_file");
}

async function raise() {
  const text = {};
  if ($("alert-zh").value) text.zh = $("alert-zh").value;
  if ($("alert-en").value) text.en = $("alert-en").value;
  const scope = chosen.channels.size ? {channels: [...chosen.channels]} : chosen.displays.size ? {displays: [...chosen.displays]} : "all";
  const body = {text, scope, severity: $("alert-severity").value, expires_in: $("alert-expires").value};
  const tpl = $("alert-template").value;
  if (tpl) {
    const file = $("alert-sms-file")?.files[0];
    if (!file) { say(false, t("sms_needs_list")); return; }
    const up = await upload(file);
    if (!up.ok) { say(false, `${file.name}: ${errorOf(up)}`); return; }
    body.sms = {recipients_upload: up.data.upload};
    if (tpl !== "-") body.sms.template = tpl;
  }
  const r = await api("POST", "/api/v1/alerts", body);
  say(r.ok, r.ok ? (r.data.message ?? r.data.id) : errorOf(r));
  if (r.ok) open = r.data.id;
  show();
}

function say(ok, msg) { $("alert-out").className = ok ? "ok" : "err"; $("alert-out").textContent = msg; }

async function act(e) {
  const b = e.target.closest("button");
  if (!b) return;
  if (b.dataset.clear) await api("DELETE", "/api/v1/alerts/" + b.dataset.clear);
  if (b.dataset.approve) { const r = await api("POST", `/api/v1/alerts/${b.dataset.approve}/approve`); if (!r.ok) say(false, errorOf(r)); }
  if (b.dataset.acks) open = b.dataset.acks;
  show();
}

// Which displays put the alert on screen (with latency) and which have not.
async function acks(id) {
  const r = await api("GET", "/api/v1/alerts/" + encodeURIComponent(id));
  if (!r.ok) { $("alert-detail").innerHTML = ""; return; }
  const d = r.data;
  const sms = d.sms ? `<p>${esc(t("campaigns"))} #${d.sms.campaign}: ${esc(t("cs_" + d.sms.status))} · ${d.sms.delivered}/${d.sms.recipients} ${esc(t("delivered"))} · ${d.sms.failed} ${esc(t("failed"))}</p>` : "";
  $("alert-detail").innerHTML = `<h3>${esc(id)}: ${esc(textOf(d.alert.text))}</h3>${sms}
    <div class="cards"><div class="card ok"><b id="acked-count">${d.acks.length}</b>${esc(t("acknowledged"))}</div><div class="card ${d.not_acknowledged.length ? "bad" : ""}"><b id="unacked-count">${d.not_acknowledged.length}</b>${esc(t("not_acknowledged"))}</div></div>
    <div class="scroll"><table><tbody id="alert-acks">${d.acks.map(a => `<tr><td class="ok">✓ ${esc(a.display)}</td><td>${esc(local(a.displayed_at, site.timezone))}</td><td>${a.latency_ms ?? "-"} ms</td></tr>`).join("")}
    ${d.not_acknowledged.map(x => `<tr><td class="err">✗ ${esc(x)}</td><td colspan="2">${esc(t("not_acknowledged"))}</td></tr>`).join("")}</tbody></table></div>`;
}
