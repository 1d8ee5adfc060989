// The console's entry: login, tabs, language. Each tab is a module with `show()`; the modules
// talk to the daemon only through the API (api.js) with the token the user logged in with.
import {$, api, site} from "./api.js";
import {t, lang, setLang, applyLang, onLang, keysDiffer} from "./i18n.js";
window.marqueeKeysDiffer = keysDiffer;
import * as channels from "./channels.js";
import * as editor from "./editor.js";
import * as fleet from "./fleet.js";
import * as alerts from "./alerts.js";
import * as campaigns from "./campaigns.js";
import {badge} from "./review.js";

const tabs = {channels, fleet, playlists: editor, alerts, campaigns};
let current = "channels";

async function login() {
  sessionStorage.setItem("marquee-token", $("token").value.trim());
  const r = await api("GET", "/api/v1/channels");
  if (!r.ok) { $("login-error").textContent = t("bad_token"); return; }
  Object.assign(site, r.data);
  $("login").style.display = "none"; $("app").style.display = "block";
  for (const m of Object.values(tabs)) await m.init?.();
  badge();
  tab(current);
}

function tab(name) {
  current = name;
  document.querySelectorAll("nav button").forEach(b => {
    b.classList.toggle("on", b.dataset.tab === name);
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
  });
  document.querySelectorAll("main > section").forEach(s => s.classList.toggle("on", s.id === "tab-" + name));
  tabs[name].show();
}

document.addEventListener("click", e => {
  const b = e.target.closest("button[data-tab]");
  if (b) tab(b.dataset.tab);
});
// Arrow keys move between tabs (WAI-ARIA tabs pattern).
document.querySelector("nav").addEventListener("keydown", e => {
  if (e.key !== "ArrowRight" && e.key !== "ArrowLeft") return;
  const all = [...document.querySelectorAll("nav button")];
  const i = all.indexOf(document.activeElement);
  if (i < 0) return;
  const next = all[(i + (e.key === "ArrowRight" ? 1 : all.length - 1)) % all.length];
  next.focus(); tab(next.dataset.tab);
});
// Enter or Space on a focusable element that acts as a button (a count card, a map point, a
// table row) does what a click does.
document.addEventListener("keydown", e => {
  if (e.key !== "Enter" && e.key !== " ") return;
  const el = e.target.closest?.('[role="button"]:not(button), tr[tabindex]');
  if (!el) return;
  e.preventDefault();
  el.dispatchEvent(new MouseEvent("click", {bubbles: true}));
});
$("do-login").onclick = login;
$("token").onkeydown = e => { if (e.key === "Enter") login(); };
$("logout").onclick = () => { sessionStorage.removeItem("marquee-token"); location.reload(); };
$("lang").onclick = () => { setLang(lang() === "en" ? "zh" : "en"); };
onLang(() => { if ($("app").style.display === "block") tabs[current].show(); });
applyLang();
if (sessionStorage.getItem("marquee-token")) { $("token").value = sessionStorage.getItem("marquee-token"); login(); }
