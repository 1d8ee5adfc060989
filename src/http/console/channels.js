// The week: what plays when over seven days on a channel or one display, drawn as lanes per
// local day (23 or 25 hours on daylight-saving days), tiers as colours, each playlist's share
// of voice as its part of a stretch, alerts as a red band; a stretch opens its loop. Also "what
// does display X show at T" (GET /api/v1/frame) and the old list view (GET /api/v1/preview).
import {$, api, esc, errorOf, site} from "./api.js";
import {t, lang, textOf} from "./i18n.js";
import {instantOf, dateIn, hhmm, ymd, nextDay, wallHours, offsetChange} from "./chart.js";
import {screen} from "./screens.js";

let week = null;
let inited = false;

export function init() {
  $("channel").innerHTML = site.channels.map(c => `<option>${esc(c)}</option>`).join("");
  $("channel").onchange = () => { fillDisplays(); show(); };
  $("week-display").onchange = show;
  $("week-show").onclick = show;
  $("frame-show").onclick = frameAt;
  $("preview").onclick = preview;
  if (!$("week-from").value) $("week-from").value = ymd(dateIn(Date.now(), site.timezone));
  fillDisplays();
  inited = true;
}

function fillDisplays() {
  const c = $("channel").value, keep = $("week-display").value;
  const ds = site.displays.filter(d => d.channel === c);
  $("week-display").innerHTML = `<option value="">${esc(t("whole_channel"))}</option>` +
    ds.map(d => `<option ${d.id === keep ? "selected" : ""}>${esc(d.id)}</option>`).join("");
}

export async function show() {
  if (!inited) return;
  fillDisplays();
  const tiers = ["emergency", "interrupt", "normal", "fallback", "none"];
  $("week-legend").innerHTML = tiers.map(x => `<span><i class="t-${x}"></i>${esc(t("tier_" + x))}</span>`).join("")
    + `<span><i style="background:var(--bad)"></i>${esc(t("alert_band"))}</span>`
    + `<span><i class="dstband" style="position:static;display:inline-block"></i>${esc(t("dst_day"))}</span>`;
  const [y, m, d] = $("week-from").value.split("-").map(Number);
  const tz = site.timezone;
  const from = instantOf(y, m, d, 0, 0, tz);
  const q = target() + `&at=${encodeURIComponent(new Date(from).toISOString())}&for=8days`;
  const [r, al] = await Promise.all([api("GET", "/api/v1/preview?" + q), api("GET", "/api/v1/alerts")]);
  if (!r.ok) { $("week").innerHTML = `<p class="err">${esc(errorOf(r))}</p>`; return; }
  week = r.data;
  const alerts = (al.data.alerts || []).filter(covers);
  let day = {y, m, d};
  let html = `<div class="hours"><span></span><div>${[0, 6, 12, 18, 24].map(h => `<span>${h}:00</span>`).join("")}</div></div>`;
  for (let i = 0; i < 7; i++) {
    const next = nextDay(day);
    const a = instantOf(day.y, day.m, day.d, 0, 0, tz), b = instantOf(next.y, next.m, next.d, 0, 0, tz);
    html += lane(day, a, b, alerts);
    day = next;
  }
  $("week").innerHTML = html;
  $("week-detail").innerHTML = "";
  preview();
}

function target() {
  const d = $("week-display").value;
  return d ? "display=" + encodeURIComponent(d) : "channel=" + encodeURIComponent($("channel").value);
}

// Whether alert `a` reached (or will reach) what the week shows: approved, and in scope.
function covers(a) {
  if (a.status === "pending") return false;
  if (a.scope === "all") return true;
  const d = $("week-display").value, c = $("channel").value;
  if (a.scope.channels) return a.scope.channels.includes(c);
  if (a.scope.displays) return d ? a.scope.displays.includes(d)
    : a.scope.displays.some(x => site.displays.find(y => y.id === x)?.channel === c);
  return false;
}

// One local day: positions are wall-clock time (06:00 lines up on every day). On a
// daylight-saving day the skipped or repeated hour is a hatched band, and the day's real
// length (23 or 25 h) is marked.
function lane(day, a, b, alerts) {
  // The day's real length: 23, 25, or 23.5 hours (Lord Howe) on a daylight-saving day.
  const tz = site.timezone, hours = Math.round((b - a) / 6e4) / 60;
  const x = ms => ms >= b ? 24 : wallHours(ms, tz);
  const place = (f, u) => {
    let w = x(u) - x(f);
    if (w <= 0) w = (u - f) / 36e5;  // inside a repeated hour
    return `left:${(100 * x(f)) / 24}%;width:${(100 * w) / 24}%`;
  };
  const weekday = new Date(Date.UTC(day.y, day.m - 1, day.d)).getUTCDay();
  const dst = hours !== 24 ? ` <span class="dst" title="${esc(t("dst_day"))}">${hours} h</span>` : "";
  let html = `<div class="day" data-day="${ymd(day)}" data-hours="${hours}"><div class="label">${ymd(day).slice(5)} ${esc(t("wd" + weekday))}${dst}</div><div class="lane">`;
  week.segments.forEach((s, i) => {
    const f = Math.max(Date.parse(s.from), a), u = Math.min(Date.parse(s.until), b);
    if (u <= f) return;
    const total = s.weights.reduce((p, q) => p + q, 0) || 1;
    const parts = s.playlists.map((p, k) => `<span class="shade${k % 4}" style="flex-grow:${s.weights[k] || 1}" title="${esc(p)} ${Math.round((100 * (s.weights[k] || 1)) / total)}%"></span>`).join("");
    const label = `${hhmm(f, tz)}–${u >= b ? "24:00" : hhmm(u, tz)}`;
    html += `<button class="stretch t-${s.tier || "none"}" data-seg="${i}" style="${place(f, u)}"
      title="${esc(label)} ${esc(share(s))}" aria-label="${esc(label)} ${esc(t("tier_" + (s.tier || "none")))} ${esc(share(s))}">${parts}</button>`;
  });
  const change = hours !== 24 ? offsetChange(a, b, tz) : null;
  if (change !== null) {
    const before = wallHours(change[0], tz), after = wallHours(change[1], tz);
    const [lo, hi] = [Math.min(before, after), Math.max(before, after)];
    const what = after > before ? t("hour_skipped") : t("hour_repeated");
    html += `<div class="dstband" style="left:${(100 * lo) / 24}%;width:${(100 * (hi - lo)) / 24}%" title="${esc(what)}"></div>`;
  }
  for (const al of alerts) {
    // On screens from its start (or its approval, under the two-person rule).
    const f = Math.max(Date.parse(al.starts_at || al.issued_at), al.approved_at ? Date.parse(al.approved_at) : 0, a);
    const u = Math.min(Date.parse(al.cleared_at || al.expires_at), b);
    if (u <= f) continue;
    html += `<div class="alertband" style="${place(f, u)}" title="${esc(textOf(al.text))}"></div>`;
  }
  return html + "</div></div>";
}

// "hotline-12345 25% · open-day 75%".
function share(s) {
  if (!s.tier) return t("nothing");
  const total = s.weights.reduce((x, y) => x + y, 0) || 1;
  return s.playlists.map((p, k) => `${p} ${Math.round((100 * (s.weights[k] || 1)) / total)}%`).join(" · ");
}

// A stretch's loop, and its first slogan as the screens draw it.
function detail(i, button) {
  document.querySelectorAll(".stretch.on").forEach(b => b.classList.remove("on"));
  button.classList.add("on");
  const s = week.segments[i], tz = site.timezone;
  const when = `${s.from.slice(0, 10)} ${hhmm(Date.parse(s.from), tz)} – ${s.until.slice(0, 10)} ${hhmm(Date.parse(s.until), tz)}`;
  const loop = s.items.map(x => `<tr><td>${esc(x.playlist)}</td><td>${esc(x.id)}</td><td>${x.seconds}s</td><td>${esc(textOf(x.text))}</td></tr>`).join("");
  $("week-detail").innerHTML = `<div class="seg ${esc(s.tier || "")}"><b>${esc(when)}</b> · ${esc(t("tier_" + (s.tier || "none")))} · ${esc(share(s))}
    ${s.replaced.length ? `<div class="muted">${esc(t("replaces"))} ${esc(s.replaced.join(", "))}</div>` : ""}
    ${s.tier ? `<div class="scroll"><table><thead><tr><th>${esc(t("playlist"))}</th><th>${esc(t("item"))}</th><th>${esc(t("seconds"))}</th><th>${esc(t("text"))}</th></tr></thead><tbody>${loop}</tbody></table></div>
      <p class="muted">${esc(t("loop_total"))}: ${s.items.reduce((x, y) => x + y.seconds, 0)} s</p>` : `<p class="muted">${esc(t("nothing"))}</p>`}</div>`;
  // Its start, or now when it started earlier (what was published before now is not kept).
  const at = new Date(Math.max(Date.parse(s.from), Date.now() + 60e3));
  $("frame-at").value = ymd(dateIn(at.getTime(), tz)) + "T" + hhmm(at.getTime(), tz);
}

// GET /api/v1/frame: what the chosen display (or the channel) shows at the chosen moment,
// from the published timeline, drawn by the screen's renderer in each language.
async function frameAt() {
  const at = $("frame-at").value;
  if (!at) { $("frame-note").textContent = t("pick_time"); return; }
  const out = $("frame-out");
  out.innerHTML = "";
  for (const l of ["zh", "en"]) {
    const r = await api("GET", `/api/v1/frame?${target()}&at=${encodeURIComponent(at)}&lang=${l}`);
    if (!r.ok) { $("frame-note").textContent = errorOf(r); return; }
    const f = r.data.frame;
    $("frame-note").textContent = r.data.topic ? `${r.data.topic} v${r.data.version}` : t("no_timeline");
    const caption = `${r.data.display || r.data.channel} · ${r.data.at.slice(0, 16).replace("T", " ")} · ${f.kind === "fallback" ? t("local_fallback") : f.playlist + "/" + f.item} · ${l}`;
    const s = screen(r.data.channel, caption, {...f, display: r.data.display || r.data.channel,
      text: f.kind === "fallback" ? t("local_fallback") : f.text}, 300);
    s.dataset.item = f.item;
    out.appendChild(s);
  }
}

// The list view of a shorter stretch (GET /api/v1/preview).
async function preview() {
  const at = $("at").value ? "&at=" + encodeURIComponent($("at").value) : "";
  const r = await api("GET", `/api/v1/preview?${target()}&for=${$("for").value}${at}`);
  if (!r.ok) { $("preview-out").innerHTML = `<p class="err">${esc(errorOf(r))}</p>`; return; }
  const time = x => x.slice(11, 16);
  $("preview-out").innerHTML = r.data.segments.map(s => {
    const seen = new Set();
    const items = s.items.filter(i => !seen.has(i.playlist + i.id) && seen.add(i.playlist + i.id));
    return `<div class="seg ${esc(s.tier)}"><b>${time(s.from)}–${time(s.until)}</b> ${esc(t("tier_" + (s.tier || "none")))} ${esc(s.playlists.join(", "))}
      ${s.replaced.length ? `<span class="muted">(${t("replaces")} ${esc(s.replaced.join(", "))})</span>` : ""}
      ${s.tier ? items.map(i => `<div>${esc(i.text[lang()] ?? Object.values(i.text)[0])} <span class="muted">${i.seconds}s · ${esc(i.playlist)}/${esc(i.id)}</span></div>`).join("") : `<div class="muted">${t("nothing")}</div>`}</div>`;
  }).join("");
}

document.addEventListener("click", e => {
  const b = e.target.closest("button.stretch");
  if (b) detail(Number(b.dataset.seg), b);
});
