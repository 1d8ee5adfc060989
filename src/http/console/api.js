// The API client and small DOM helpers shared by every tab.

export const $ = id => document.getElementById(id);

export const esc = s => String(s ?? "").replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));

const auth = () => ({Authorization: "Bearer " + sessionStorage.getItem("marquee-token")});

// One API call. `body` is sent as JSON, or as it is when `raw`; `extra` headers. Answers
// {ok, status, data}.
export async function api(method, path, body, raw, extra) {
  const headers = {...auth(), ...extra};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {method, headers, body: body === undefined ? undefined : (raw ? body : JSON.stringify(body))});
  const data = await r.json().catch(() => ({}));
  return {ok: r.ok, status: r.status, data};
}

// Uploads a file as it is (POST /api/v1/uploads).
export async function upload(file, sheet) {
  const q = sheet ? "?sheet=" + encodeURIComponent(sheet) : "";
  const r = await fetch("/api/v1/uploads" + q, {method: "POST", body: file,
    headers: {...auth(), "Content-Type": "application/octet-stream"}});
  return {ok: r.ok, status: r.status, data: await r.json().catch(() => ({}))};
}

// Fetches `path` as CSV and saves it as `name`.
// Answers the error message when the daemon refused.
export async function download(path, name) {
  const r = await fetch(path, {headers: {...auth(), Accept: "text/csv"}});
  if (!r.ok) return (await r.json().catch(() => ({})))?.error?.message ?? String(r.status);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob()); a.download = name; a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  return null;
}

// The error message of a failed call.
export const errorOf = r => r.data?.error?.message ?? String(r.status);

// Calls `f` once `ms` after the last call; `.cancel()` drops a pending call.
export function debounce(f, ms) {
  let timer = null;
  const d = (...args) => { clearTimeout(timer); timer = setTimeout(() => f(...args), ms); };
  d.cancel = () => clearTimeout(timer);
  return d;
}

// What the whole console knows of the configuration (GET /api/v1/channels), loaded at login.
export const site = {channels: [], displays: [], timezone: "UTC", screens: {}};
