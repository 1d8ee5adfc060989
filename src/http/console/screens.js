// Slogan previews drawn by the screens' own renderer: the agent's page (/console/screen.html,
// the same HTML and CSS) in a frame the size of the channel's screens ([schedule.screens]),
// scaled down to fit. Frames are posted to it (same origin only).
import {esc, site} from "./api.js";

const loaded = new WeakSet();

window.addEventListener("message", e => {
  if (e.origin !== location.origin || e.data?.screen !== "ready") return;
  for (const f of document.querySelectorAll("iframe.screen-frame")) {
    if (f.contentWindow === e.source) { loaded.add(f); post(f); }
  }
});

function post(f) {
  if (loaded.has(f) && f.dataset.frame) f.contentWindow.postMessage(JSON.parse(f.dataset.frame), location.origin);
}

// A screen of `channel` showing `frame` ({text, lang, kind, tier, item, display}), fitted into
// `width` × `height` CSS pixels.
export function screen(channel, caption, frame, width = 260, height = 180) {
  const s = site.screens?.[channel] || {width: 1920, height: 1080};
  // Fits the box; a portrait screen stands as high as a landscape one is.
  const scale = Math.min(width / s.width, height / s.height);
  const wrap = document.createElement("div");
  wrap.className = "screen";
  wrap.dataset.channel = channel;
  wrap.dataset.lang = frame.lang || "";
  wrap.innerHTML = `<div class="box" style="width:${Math.round(s.width * scale)}px;height:${Math.round(s.height * scale)}px">
    <iframe class="screen-frame" src="/console/screen.html#preview" width="${s.width}" height="${s.height}"
      style="transform:scale(${scale})" tabindex="-1" title="${esc(caption)}"></iframe></div>
    <div class="cap">${esc(caption)} · ${s.width}×${s.height}</div>`;
  update(wrap, frame);
  return wrap;
}

// Shows `frame` on a screen made by `screen()`.
export function update(wrap, frame) {
  const f = wrap.querySelector("iframe");
  f.dataset.frame = JSON.stringify({display: "preview", kind: "timeline", ...frame});
  post(f);
}
