//! Renderers: how a [`Frame`] reaches the screen. Each keeps the last frame shown (a screen is
//! never blanked on disconnect or shutdown).

use std::io::Write;

use serde_json::json;

use super::player::{Frame, FrameKind};

/// Something that shows frames.
pub trait Renderer: Send {
    /// Shows `frame` now. `version` is the applied timeline version, if any.
    fn show(&mut self, frame: &Frame, version: Option<u64>);
}

/// One JSON line per frame on stdout.
pub struct Jsonl {
    /// Display id (written in each line).
    pub display: String,
}

/// The JSON form of a frame, shared by the jsonl and web renderers.
pub fn frame_json(display: &str, frame: &Frame, version: Option<u64>) -> serde_json::Value {
    json!({
        "display": display,
        "kind": frame.kind,
        "item": frame.item,
        "playlist": frame.playlist,
        "lang": frame.lang,
        "text": frame.text,
        "tier": frame.tier,
        "start": frame.start,
        "until": frame.until,
        "timeline_version": version,
    })
}

impl Renderer for Jsonl {
    fn show(&mut self, frame: &Frame, version: Option<u64>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", frame_json(&self.display, frame, version));
        let _ = out.flush();
    }
}

/// Full-screen text for console and LED displays (ANSI).
pub struct Terminal;

impl Renderer for Terminal {
    fn show(&mut self, frame: &Frame, _version: Option<u64>) {
        let cols: usize = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(80);
        let rows: usize = std::env::var("LINES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(24);
        let style = match frame.kind {
            FrameKind::Alert => "\x1b[1;37;41m",
            FrameKind::Timeline => "\x1b[1m",
            FrameKind::Fallback => "\x1b[2m",
        };
        let width = unicode_width(&frame.text);
        let pad = cols.saturating_sub(width) / 2;
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "\x1b[2J\x1b[{};1H{}{}{}\x1b[0m",
            rows / 2,
            " ".repeat(pad),
            style,
            frame.text
        );
        let _ = out.flush();
    }
}

/// Display width: CJK characters take two columns.
fn unicode_width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            if (c as u32) >= 0x1100 && !c.is_ascii() {
                2
            } else {
                1
            }
        })
        .sum()
}
