// The playlist editor: forms over the playlist file (items, schedule, targets, tier and weight),
// each slogan previewed as every target channel's screens draw it, a live check with the change
// impact, errors beside the field they name (the server's JSON Pointer), the JSON one click away
// (both views edit the same text). The review list is review.js.
import {$, api, esc, errorOf, debounce, site} from "./api.js";
import {t, has} from "./i18n.js";
import * as schedule from "./schedule.js";
import {screen, update} from "./screens.js";
import {proposals, onPublished} from "./review.js";

let doc = null;       // the playlist as an object; the form shows it
let isNew = false;    // not saved yet: its id is editable
let selected = 0;     // the item previewed
let mode = "form";
let written = "";     // the text last written into the JSON view from the form
let loaded = "";      // the text as last loaded or saved (edits since make the editor dirty)
let ids = [];         // the playlists that exist
let checks = 0;       // numbers each check, so that only the answer to the latest is shown
const stash = {};     // entries replaced by a change of kind, to come back when switched back

const dirty = () => $("source").value !== loaded;
const mayLeave = () => !dirty() || confirm(t("discard_edits"));

export async function init() {
  $("playlist").onchange = () => {
    if (mayLeave()) open($("playlist").value);
    else $("playlist").value = isNew ? "" : doc?.id ?? "";
  };
  $("new-playlist").onclick = () => { if (mayLeave()) create(); };
  $("check").onclick = () => check("valid");
  $("save").onclick = save;
  $("view-form").onclick = () => view("form");
  $("view-json").onclick = () => view("json");
  const form = $("form");
  form.addEventListener("input", input);
  form.addEventListener("change", change);
  form.addEventListener("click", click);
  form.addEventListener("focusin", e => {
    const it = e.target.closest(".item");
    if (it && Number(it.dataset.index) !== selected) { selected = Number(it.dataset.index); markSelected(); previewItem(); }
  });
  dragAndDrop(form);
  // A published proposal for the open playlist is read again, unless it has edits here.
  onPublished(async id => { if (!isNew && id === $("playlist").value && !dirty()) await open(id); });
  await show();
}

export async function show() {
  const r = await api("GET", "/api/v1/playlists");
  // Read after the list came: the user may have picked one meanwhile.
  const current = $("playlist").value || doc?.id;
  ids = (r.data.playlists || []).filter(p => p.id).map(p => p.id);
  $("playlist").innerHTML = (isNew ? `<option value="">${esc(t("new_playlist"))}</option>` : "")
    + ids.map(id => `<option ${id === current ? "selected" : ""}>${esc(id)}</option>`).join("");
  if (!doc && !isNew && !opening && $("playlist").value) await open($("playlist").value);
  else if (doc && !opening) render();
  proposals();
}

let opening = null;  // the id being loaded
async function open(id) {
  if (!id) return;
  isNew = false;
  opening = id;
  const r = await api("GET", "/api/v1/playlists/" + encodeURIComponent(id));
  if (opening !== id) return;  // another was picked meanwhile
  opening = null;
  $("check-out").innerHTML = "";
  selected = 0;
  fromText(r.data.source ?? "");
  loaded = $("source").value;
}

function create() {
  isNew = true;
  opening = null;
  selected = 0;
  doc = {id: "", title: "", tier: "normal", weight: 1,
    targets: {channels: site.channels.slice(0, 1)}, schedule: [schedule.fresh("daypart")],
    items: [{id: "slogan-1", seconds: 10, text: {zh: "", en: ""}}]};
  $("playlist").insertAdjacentHTML("afterbegin", `<option value="" selected>${esc(t("new_playlist"))}</option>`);
  $("check-out").innerHTML = "";
  toText(); loaded = $("source").value; view("form");
  document.querySelector('#form [data-bind="/id"]')?.focus();
}

// The JSON view's text → the form. A text that is not JSON keeps the JSON view open.
function fromText(text) {
  $("source").value = text;
  written = text;
  try { doc = JSON.parse(text); render(); return true; } catch (e) {
    doc = null;
    $("form").innerHTML = `<p class="err">${esc(t("not_json"))}: ${esc(e.message)}</p>`;
    return false;
  }
}

// The form → the JSON view's text (after every edit), then a check soon.
function toText() {
  // A language left empty is not written (the file format has no empty texts).
  const clean = {...doc, items: doc.items?.map(it => ({...it,
    text: Object.fromEntries(Object.entries(it.text || {}).filter(([, v]) => v !== ""))}))};
  if (!doc.items) delete clean.items;
  written = JSON.stringify(clean, null, 2) + "\n";
  $("source").value = written;
  autoCheck();
}

// The text the JSON view holds may have been edited there: read it back first.
function sync() {
  if ($("source").value !== written) return fromText($("source").value);
  return true;
}

function view(m) {
  if (m === "form" && !sync()) m = "json";
  mode = m;
  $("form").hidden = m !== "form";
  $("source").hidden = m !== "json";
  $("view-form").classList.toggle("on", m === "form");
  $("view-json").classList.toggle("on", m === "json");
}

// JSON Pointer (RFC 6901) get and set; `undefined` deletes.
const keys = p => p.split("/").slice(1).map(k => k.replace(/~1/g, "/").replace(/~0/g, "~"));
function setAt(ptr, value) {
  const ks = keys(ptr);
  let o = doc;
  for (const k of ks.slice(0, -1)) { if (o[k] === undefined || o[k] === null) o[k] = {}; o = o[k]; }
  if (value === undefined) delete o[ks.at(-1)]; else o[ks.at(-1)] = value;
}

// ---- rendering ----------------------------------------------------------------------------

// What identifies a form control across a redraw (a CSS selector), or null.
const KEYS = ["bind", "kind", "target", "act", "i", "day", "entry", "kindNew"];
function keyOf(el) {
  if (!el?.closest?.("#form")) return null;
  const parts = KEYS.filter(k => el.dataset[k] !== undefined)
    .map(k => `[data-${k.replace(/[A-Z]/g, c => "-" + c.toLowerCase())}="${CSS.escape(el.dataset[k])}"]`);
  if (!parts.length) return null;
  if (el.dataset.target) parts.push(`[value="${CSS.escape(el.value)}"]`);
  return parts.join("");
}

// Redraws the form; the keyboard stays on the control it was on (or on `focus`, a selector).
function render(focus) {
  if (!doc) return;
  const was = focus ?? keyOf(document.activeElement);
  const f = $("form");
  f.innerHTML = `<div class="editor"><div>${general()}${targets()}${schedule.render(doc)}${items()}</div>
    <aside class="preview-pane"><h3>${esc(t("screen_preview"))}</h3><p class="muted" id="preview-caption"></p><div id="item-preview" class="screens"></div></aside></div>`;
  schedule.explainAll(doc, f);
  markSelected();
  previewItem();
  if (was) (f.querySelector(was) || null)?.focus();
}

function general() {
  const tiers = ["fallback", "normal", "interrupt", "emergency"].map(x => `<option value="${x}" ${doc.tier === x ? "selected" : ""}>${esc(t("tier_" + x))}</option>`).join("");
  return `<fieldset><legend>${esc(t("general"))}</legend>
    <div class="row"><label>${esc(t("id"))} <input data-bind="/id" value="${esc(doc.id)}" size="28" ${isNew ? "" : "readonly"}></label>
      <label class="grow">${esc(t("title_field"))} <input data-bind="/title" value="${esc(doc.title ?? "")}" size="40"></label></div>
    <div class="row"><label>${esc(t("tier"))} <select data-bind="/tier">${tiers}</select></label>
      <span class="muted" id="tier-help">${esc(t("tier_help_" + (doc.tier || "normal")))}</span></div>
    <div class="row"><label>${esc(t("weight"))} <input type="number" min="1" max="1000" data-bind="/weight" data-type="int" value="${esc(doc.weight ?? 1)}" size="4"></label>
      <span class="muted" id="weight-help">${esc(t("weight_help").replaceAll("{n}", doc.weight ?? 1))}</span></div>
    <div class="row"><label>${esc(t("timezone"))} <input data-bind="/timezone" value="${esc(doc.timezone ?? "")}" placeholder="${esc(site.timezone)}" size="20"></label></div>
  </fieldset>`;
}

function targets() {
  const tg = doc.targets || {};
  const chans = [...new Set([...site.channels, ...(tg.channels || [])])];
  const disps = [...new Set([...site.displays.map(d => d.id), ...(tg.displays || [])])];
  const box = (kind, v) => {
    const i = (tg[kind] || []).indexOf(v);
    const known = kind === "channels" ? site.channels.includes(v) : site.displays.some(d => d.id === v);
    const chan = site.displays.find(d => d.id === v)?.channel;
    return `<label class="check" ${i >= 0 ? `data-ptr="/targets/${kind}/${i}"` : ""}><input type="checkbox" data-target="${kind}" value="${esc(v)}" ${i >= 0 ? "checked" : ""}>
      ${esc(v)}${chan ? ` <span class="muted">(${esc(chan)})</span>` : ""}${known ? "" : ` <span class="err">${esc(t("unknown"))}</span>`}</label>`;
  };
  return `<fieldset data-ptr="/targets"><legend>${esc(t("targets"))}</legend>
    <div><b>${esc(t("channels"))}</b> ${chans.map(c => box("channels", c)).join("")}</div>
    ${disps.length ? `<div><b>${esc(t("fleet"))}</b> ${disps.map(d => box("displays", d)).join("")}</div><p class="muted">${esc(t("display_target_help"))}</p>` : ""}
  </fieldset>`;
}

const LANGS = ["zh", "en"];
// One JSON Pointer segment (RFC 6901 §3).
const seg = k => String(k).replace(/~/g, "~0").replace(/\//g, "~1");
const count = s => Array.from(s || "").length;

function items() {
  const list = (doc.items || []).map((it, i) => {
    const p = `/items/${i}`;
    const langs = [...new Set([...LANGS, ...Object.keys(it.text || {})])];
    return `<div class="item" data-index="${i}" draggable="true" data-ptr="${p}">
      <div class="head"><span class="handle" aria-hidden="true">⠿</span><b>${i + 1}</b>
        <label>${esc(t("item_id"))} <input data-bind="${p}/id" value="${esc(it.id)}" size="16"></label>
        <label>${esc(t("seconds"))} <input type="number" min="1" max="3600" data-bind="${p}/seconds" data-type="int" value="${esc(it.seconds ?? 10)}" size="4"></label>
        <span class="grow"></span>
        <button type="button" class="small" data-act="up" data-i="${i}" aria-label="${esc(t("move_up"))}" ${i === 0 ? "disabled" : ""}>↑</button>
        <button type="button" class="small" data-act="down" data-i="${i}" aria-label="${esc(t("move_down"))}" ${i === doc.items.length - 1 ? "disabled" : ""}>↓</button>
        <button type="button" class="small" data-act="dup" data-i="${i}" >${esc(t("duplicate"))}</button>
        <button type="button" class="small" data-act="del" data-i="${i}" aria-label="${esc(t("delete"))}">✕</button></div>
      <div class="texts">${langs.map(l => `<label>${esc(has("text_" + l) ? t("text_" + l) : l)} <span class="muted" data-count="${esc(`${p}/text/${seg(l)}`)}">${count(it.text?.[l])} ${esc(t("chars"))}</span>
        <textarea class="text" data-bind="${esc(`${p}/text/${seg(l)}`)}" data-optional="1" lang="${esc(l)}">${esc(it.text?.[l] ?? "")}</textarea></label>`).join("")}</div>
    </div>`;
  }).join("");
  return `<fieldset data-ptr="/items"><legend>${esc(t("items"))}</legend>${list}
    <button type="button" data-act="add">+ ${esc(t("add_item"))}</button></fieldset>`;
}

function markSelected() {
  document.querySelectorAll("#form .item").forEach(x => x.classList.toggle("on", Number(x.dataset.index) === selected));
}

// The selected slogan on a screen of every target channel, in each of its languages.
function previewItem() {
  const box = $("item-preview");
  if (!box || !doc) return;
  const it = doc.items?.[selected];
  if (!it) { box.innerHTML = ""; box.dataset.screens = ""; return; }
  const tg = doc.targets || {};
  const chans = [...new Set([...(tg.channels || []), ...(tg.displays || []).map(d => site.displays.find(x => x.id === d)?.channel).filter(Boolean)])]
    .filter(c => site.channels.includes(c));
  $("preview-caption").textContent = `${selected + 1}. ${it.id} · ${it.seconds ?? 10} s`;
  const shown = chans.flatMap(c => Object.keys(it.text || {}).filter(l => it.text[l]).map(l => [c, l]));
  const frame = (c, l) => ({text: it.text[l], lang: l, tier: doc.tier, item: it.id, display: c});
  // The same screens as before: only their frames change (no reload while typing).
  const key = shown.map(x => x.join(":")).join(",");
  if (box.dataset.screens === key && key) {
    [...box.querySelectorAll(".screen")].forEach((w, k) => update(w, frame(...shown[k])));
    return;
  }
  box.innerHTML = "";
  box.dataset.screens = key;
  for (const [c, l] of shown) box.appendChild(screen(c, `${c} · ${l}`, frame(c, l)));
  if (!shown.length) box.innerHTML = `<p class="muted">${esc(t("preview_needs"))}</p>`;
}

// ---- editing ------------------------------------------------------------------------------

function input(e) {
  const el = e.target, ptr = el.dataset.bind;
  if (!ptr || !doc) return;
  let v = el.value;
  if (el.dataset.type === "int") v = v === "" ? undefined : Number(v);
  else if (v === "" && (el.dataset.optional || ptr === "/timezone")) v = undefined;
  setAt(ptr, v);
  const counter = document.querySelector(`[data-count="${CSS.escape(ptr)}"]`);
  if (counter) counter.textContent = `${count(el.value)} ${t("chars")}`;
  if (ptr === "/weight") $("weight-help").textContent = t("weight_help").replaceAll("{n}", el.value);
  if (ptr.startsWith("/items/")) previewItem();
  const m = ptr.match(/^\/schedule\/(\d+)\/(cron|for)$/);
  if (m) schedule.explainSoon(doc, $("form"), Number(m[1]));
  toText();
}

function change(e) {
  const el = e.target;
  if (el.dataset.bind === "/tier") { $("tier-help").textContent = t("tier_help_" + el.value); previewItem(); return; }
  if (el.dataset.bind === "/timezone") { schedule.explainAll(doc, $("form")); return; }
  if (el.dataset.target) {
    doc.targets ??= {};
    const k = el.dataset.target;
    const set = new Set(doc.targets[k] || []);
    el.checked ? set.add(el.value) : set.delete(el.value);
    const order = k === "channels" ? site.channels : site.displays.map(d => d.id);
    doc.targets[k] = [...set].sort((a, b) => order.indexOf(a) - order.indexOf(b));
    if (!doc.targets[k].length) delete doc.targets[k];
    toText(); render();
    return;
  }
  if (el.dataset.kind !== undefined) {
    // The entry as it was is kept: switching back brings it back.
    const i = Number(el.dataset.kind), old = doc.schedule[i];
    stash[`${i}:${schedule.kindOf(old)}`] = old;
    doc.schedule[i] = stash[`${i}:${el.value}`] ?? schedule.fresh(el.value);
    toText(); render();
  }
}

function click(e) {
  const b = e.target.closest("button");
  if (!b || !doc) return;
  const i = Number(b.dataset.i);
  const list = doc.items;
  switch (b.dataset.act) {
    case "up": [list[i - 1], list[i]] = [list[i], list[i - 1]]; selected = i - 1; break;
    case "down": [list[i + 1], list[i]] = [list[i], list[i + 1]]; selected = i + 1; break;
    case "dup": list.splice(i + 1, 0, {...structuredClone(list[i]), id: freshId(list[i].id)}); selected = i + 1; break;
    case "del": list.splice(i, 1); selected = Math.max(0, Math.min(selected, list.length - 1)); break;
    case "add": list.push({id: freshId("slogan"), seconds: 10, text: {zh: "", en: ""}}); selected = list.length - 1; break;
    case "add-entry": (doc.schedule ??= []).push(schedule.fresh(b.dataset.kindNew)); break;
    case "del-entry": doc.schedule.splice(i, 1); break;
    default:
      if (b.dataset.day) { schedule.toggleDay(doc, Number(b.dataset.entry), b.dataset.day); break; }
      return;
  }
  toText();
  // Where the keyboard goes: the same control of the moved item, the new item or entry, the
  // next one after a deletion.
  const n = (doc.schedule || []).length;
  const focus = {
    up: `[data-act="up"][data-i="${selected}"]`, down: `[data-act="down"][data-i="${selected}"]`,
    dup: `[data-bind="/items/${selected}/id"]`, add: `[data-bind="/items/${selected}/id"]`,
    del: list.length ? `[data-act="del"][data-i="${selected}"]` : `[data-act="add"]`,
    "add-entry": `[data-kind="${n - 1}"]`,
    "del-entry": n ? `[data-act="del-entry"][data-i="${Math.min(i, n - 1)}"]` : `[data-act="add-entry"]`,
  }[b.dataset.act];
  render(focus);
}

function freshId(base) {
  const stem = String(base).replace(/-\d+$/, "");
  for (let n = 2; ; n++) if (!doc.items.some(x => x.id === `${stem}-${n}`)) return `${stem}-${n}`;
}

function dragAndDrop(form) {
  let from = null;
  form.addEventListener("dragstart", e => {
    const it = e.target.closest?.(".item");
    if (!it) return;
    from = Number(it.dataset.index); it.classList.add("drag");
    e.dataTransfer.effectAllowed = "move";
  });
  form.addEventListener("dragover", e => { if (from !== null && e.target.closest(".item")) e.preventDefault(); });
  form.addEventListener("drop", e => {
    const it = e.target.closest(".item");
    if (from === null || !it) return;
    e.preventDefault();
    const to = Number(it.dataset.index);
    const [moved] = doc.items.splice(from, 1);
    doc.items.splice(to, 0, moved);
    selected = to; from = null;
    toText(); render();
  });
  form.addEventListener("dragend", () => { from = null; form.querySelectorAll(".drag").forEach(x => x.classList.remove("drag")); });
}

// ---- check, save, review ------------------------------------------------------------------

const idNow = () => (mode === "json" || !doc) ? (tryId() ?? $("playlist").value) : (doc.id || $("playlist").value);
function tryId() { try { return JSON.parse($("source").value).id; } catch { return null; } }

const autoCheck = debounce(() => { if (idNow()) check("valid", true); }, 500);

async function check(doneKey, quiet) {
  if (!quiet && mode === "form") sync();
  const id = idNow();
  if (!id) { $("check-out").innerHTML = `<div class="err">${esc(t("id_needed"))}</div>`; return; }
  const n = ++checks;
  const r = await api("POST", `/api/v1/playlists/${encodeURIComponent(id)}/check`, $("source").value, true);
  if (n === checks) showCheck(r, doneKey);  // an older answer is not shown over a newer one
}

async function save() {
  autoCheck.cancel();
  checks++;  // a check still on its way is older than this save
  if (mode === "form") sync();
  const id = idNow();
  if (!id) { $("check-out").innerHTML = `<div class="err">${esc(t("id_needed"))}</div>`; return; }
  // A new playlist must not take the name of one that exists (the save would replace it).
  if ((isNew || id !== doc?.id && id !== $("playlist").value) && ids.includes(id)) {
    $("check-out").innerHTML = `<div class="err">${esc(t("id_taken").replace("{id}", id))}</div>`;
    beside("/id", t("id_taken").replace("{id}", id));
    return;
  }
  const text = $("source").value;
  // A new playlist is created only (412 if one of that id appeared meanwhile).
  const r = await api("PUT", `/api/v1/playlists/${encodeURIComponent(id)}`, text, true, isNew ? {"If-None-Match": "*"} : {});
  showCheck(r, r.status === 202 ? "proposed" : "saved");
  if (r.ok) {
    loaded = text;
    if (isNew && r.status !== 202) { isNew = false; await show(); $("playlist").value = id; }
  }
  proposals();
}

// The answer of a check or save: errors beside their fields (and all of them listed), or the
// change impact.
function showCheck(r, doneKey) {
  document.querySelectorAll("#form .fielderr").forEach(x => x.remove());
  document.querySelectorAll("#form .invalid").forEach(x => x.classList.remove("invalid"));
  if (r.status === 400 && r.data.errors) {
    $("check-out").innerHTML = r.data.errors.map(e => `<div class="err">${e.line}:${e.column}: ${esc(e.message)}</div>`).join("");
    for (const e of r.data.errors) if (e.pointer !== undefined) beside(e.pointer, e.message);
    return;
  }
  if (!r.ok) { $("check-out").innerHTML = `<div class="err">${esc(errorOf(r))}</div>`; return; }
  const impact = r.data.impact || [];
  $("check-out").innerHTML = `<div class="ok">${t(doneKey)}</div>` + (impact.length
    ? impact.map(i => `<div>${t("changes")} ${esc(i.target)} ${t("from")} ${esc(i.from.replace("T", " ").slice(0, 16))}</div>`).join("")
    : `<div class="muted">${t("no_change")}</div>`);
}

// Puts `message` beside the field at `pointer`, or the nearest enclosing part of the form.
function beside(pointer, message) {
  let p = pointer;
  for (;;) {
    const el = document.querySelector(`#form [data-bind="${CSS.escape(p)}"]`) || document.querySelector(`#form [data-ptr="${CSS.escape(p)}"]`);
    if (el) {
      el.classList.add("invalid");
      const note = document.createElement("div");
      note.className = "fielderr"; note.dataset.for = pointer; note.textContent = message;
      (el.closest("label") || el).insertAdjacentElement("afterend", note);
      return;
    }
    if (!p) return;
    p = p.slice(0, p.lastIndexOf("/"));
  }
}
