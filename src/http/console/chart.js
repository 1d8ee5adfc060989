// Zone arithmetic and small SVG charts (no library: a few lines each).
import {esc} from "./api.js";

const fmt = {};
function parts(ms, tz) {
  fmt[tz] ??= new Intl.DateTimeFormat("en-US", {timeZone: tz, hourCycle: "h23", year: "numeric",
    month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit"});
  const p = {};
  for (const x of fmt[tz].formatToParts(new Date(ms))) p[x.type] = x.value;
  return {y: +p.year, m: +p.month, d: +p.day, h: +p.hour, mi: +p.minute, s: +p.second};
}

// The zone's UTC offset at instant `ms`, in milliseconds.
export function offsetAt(ms, tz) {
  const p = parts(ms, tz);
  return Date.UTC(p.y, p.m - 1, p.d, p.h, p.mi, p.s) - Math.floor(ms / 1000) * 1000;
}

// The instant of local wall-clock time y-m-d hh:mm in `tz`: the earlier one when the time
// happens twice (clocks go back), the first instant after the gap when it is skipped (clocks go
// forward, as the daemon's calendar::local_to_utc does).
export function instantOf(y, m, d, hh, mm, tz) {
  const wall = Date.UTC(y, m - 1, d, hh, mm);
  const before = wall - offsetAt(wall - 864e5, tz), after = wall - offsetAt(wall + 864e5, tz);
  const fits = [before, after].filter(t => t + offsetAt(t, tz) === wall).sort((a, b) => a - b);
  if (fits.length) return fits[0];
  const change = offsetChange(Math.min(before, after), Math.max(before, after) + 1, tz);
  return change ? change[1] : before;
}

// Wall-clock date (y, m, d) of instant `ms` in `tz`.
export function dateIn(ms, tz) { const p = parts(ms, tz); return {y: p.y, m: p.m, d: p.d}; }

// Wall-clock hours since local midnight of instant `ms` in `tz` (e.g. 6.5 at 06:30).
export function wallHours(ms, tz) { const p = parts(ms, tz); return p.h + p.mi / 60 + p.s / 3600; }

// The last second before and the first second after the zone's offset changes in [a, b), or null.
export function offsetChange(a, b, tz) {
  let lo = a, hi = b - 1;
  if (offsetAt(lo, tz) === offsetAt(hi, tz)) return null;
  while (hi - lo > 1000) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (offsetAt(mid, tz) === offsetAt(lo, tz)) lo = mid; else hi = mid;
  }
  return [lo, hi];
}

// The start of the local hour that instant `ms` is in (for zones offset by half hours too).
export function hourStart(ms, tz) { const p = parts(ms, tz); return Math.floor(ms / 1000) * 1000 - (p.mi * 60 + p.s) * 1000; }

// "HH:MM" of instant `ms` in `tz`.
export function hhmm(ms, tz) { const p = parts(ms, tz); return String(p.h).padStart(2, "0") + ":" + String(p.mi).padStart(2, "0"); }

// An RFC 3339 instant as "YYYY-MM-DD HH:MM:SS" wall-clock time in `tz` ("-" when absent).
export function local(iso, tz) {
  if (!iso) return "-";
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) return iso;
  const p = parts(ms, tz), two = n => String(n).padStart(2, "0");
  return `${p.y}-${two(p.m)}-${two(p.d)} ${two(p.h)}:${two(p.mi)}:${two(p.s)}`;
}

// "YYYY-MM-DD" of a wall-clock date.
export const ymd = ({y, m, d}) => `${y}-${String(m).padStart(2, "0")}-${String(d).padStart(2, "0")}`;

// The next calendar day.
export function nextDay({y, m, d}) {
  const t = new Date(Date.UTC(y, m - 1, d + 1));
  return {y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate()};
}

const palette = ["#0b5cad", "#c77700", "#1b7f3b", "#8a3ffc", "#b00020", "#007d79", "#6f6f6f", "#d12771"];
export const colour = i => palette[i % palette.length];

// Bars: `labels` along x, `series` [{name, values}] stacked (`grouped`: side by side);
// answers SVG text. A bar is at most 48 units wide, so a short series does not fill the chart.
export function stackedBars(labels, series, {height = 180, title = "", grouped = false} = {}) {
  const w = Math.max(600, labels.length * 26), h = height, pad = 28;
  const tops = labels.map((_, i) => grouped ? Math.max(0, ...series.map(x => x.values[i] || 0))
    : series.reduce((s, x) => s + (x.values[i] || 0), 0));
  const max = Math.max(1, ...tops);
  const slot = Math.min(48 * (grouped ? series.length : 1) + 8, (w - pad - 4) / Math.max(1, labels.length));
  const bw = grouped ? (slot - 4) / Math.max(1, series.length) : slot - 4;
  const rows = Math.ceil(series.length / 4);
  let out = `<svg viewBox="0 0 ${w} ${h + 26 + rows * 14}" role="img" aria-label="${esc(title)}"><title>${esc(title)}</title>`;
  out += `<text x="2" y="12" font-size="10">${max}</text><line x1="${pad}" y1="${h}" x2="${w}" y2="${h}" stroke="#999"/>`;
  labels.forEach((label, i) => {
    let y = h;
    series.forEach((s, k) => {
      const v = s.values[i] || 0;
      if (!v) return;
      const bh = (v / max) * (h - 16);
      const x = pad + i * slot + 2 + (grouped ? k * bw : 0);
      const top = grouped ? h - bh : (y -= bh);
      out += `<rect class="datum" x="${x}" y="${top}" width="${Math.max(1, bw - (grouped ? 1 : 0))}" height="${bh}" fill="${colour(k)}"><title>${esc(label)} ${esc(s.name)}: ${v}</title></rect>`;
    });
    if (labels.length <= 24 || i % Math.ceil(labels.length / 24) === 0)
      out += `<text x="${pad + i * slot + slot / 2}" y="${h + 12}" font-size="9" text-anchor="middle">${esc(label)}</text>`;
  });
  series.forEach((s, k) => {
    const x = pad + (k % 4) * 150, y = h + 20 + Math.floor(k / 4) * 14;
    out += `<rect x="${x}" y="${y}" width="9" height="9" fill="${colour(k)}"/><text x="${x + 12}" y="${y + 8}" font-size="10">${esc(s.name)}</text>`;
  });
  return out + "</svg>";
}
