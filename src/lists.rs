//! Lists as offices have them: one reader for every recipient or opt-out list (a campaign's
//! recipients, an opt-out import, an upload from the console, an alert's SMS list).
//!
//! - **Spreadsheets**: `.xlsx` (Excel 2007 and later, WPS) is recognised by its first bytes (a
//!   ZIP) and read by `calamine` cell by cell: the first sheet, or a named one. A numeric cell
//!   that holds a whole number is read as its digits (`13800138000`, not `1.38E+10`). The file is
//!   checked first (parts inflated and counted, shared-string count against its part). Excel
//!   97-2003 `.xls` (an OLE2 container) is refused with how to save it: calamine reads it only
//!   into a rectangle sized by the cell positions the file claims.
//! - **Text** (`.csv`, `.txt`): UTF-8 with or without a byte-order mark; UTF-16 LE/BE with a BOM
//!   (Excel's "Unicode text"), or without one when the first bytes show it; otherwise, when the
//!   bytes are not valid UTF-8, GB18030 (a superset of GBK and GB2312: Chinese Excel's
//!   "CSV (逗号分隔)"). Decoding is `encoding_rs` (the WHATWG Encoding Standard) and streams.
//! - **Delimiter**: Excel's `sep=;` first line when present, else the one of `,` `;` tab `|`
//!   seen most often in the header line outside quotes (`,` when none).
//! - **Rows**: quoted fields may hold delimiters and line breaks (RFC 4180); missing trailing
//!   cells are empty; rows whose cells are all empty are skipped; a row with more non-empty
//!   cells than the header names is handed on with [`Row::extra`] set, for the caller to reject.
//!
//! Rows are handed out one at a time: nothing is collected here, so a text list of any length
//! is read in bounded memory. A spreadsheet is held whole by `calamine` (at most 1,048,576 rows).

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use calamine::Reader;
use serde::Serialize;

/// What was found in a list: its format, encoding, delimiter and columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// `csv` or `xlsx`.
    pub format: &'static str,
    /// The text encoding (`UTF-8`, `UTF-16LE`, `UTF-16BE`, `gb18030`: the WHATWG names); none for spreadsheets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
    /// The delimiter of a text list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// The sheet read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    /// The header's column names, trimmed.
    pub columns: Vec<String>,
}

/// One data row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based data row (the header is row 0): what people see as spreadsheet row `row + 1`.
    pub row: usize,
    /// Cells, trimmed, one per header column (missing trailing cells are empty).
    pub cells: Vec<String>,
    /// Non-empty cells beyond the header's columns (a delimiter inside an unquoted value?).
    pub extra: usize,
}

/// Why a list cannot be read at all (a bad row is the caller's reject, not this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ListError {
    /// What is wrong, naming the line, sheet or encoding.
    pub message: String,
}

fn err(message: impl Into<String>) -> ListError {
    ListError {
        message: message.into(),
    }
}

/// Which sheet of a workbook to read (default: the first).
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Sheet name.
    pub sheet: Option<String>,
}

/// Reads a list, handing each non-blank data row to `each` with the layout; returns the layout.
pub fn read<R: Read + Seek>(
    mut src: R,
    opts: &ListOptions,
    mut each: impl FnMut(&Layout, Row),
) -> Result<Layout, ListError> {
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut src, &mut magic).map_err(|e| err(format!("cannot read: {e}")))?;
    src.seek(SeekFrom::Start(0))
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let magic = &magic[..n];
    if magic.starts_with(b"PK\x03\x04") || magic.starts_with(&[0xd0, 0xcf, 0x11, 0xe0]) {
        // A ZIP (xlsx) or an OLE2 container (xls): never read as text.
        return read_workbook(src, opts, &mut each);
    }
    if n == 0 {
        return Err(err("the list is empty: no header row"));
    }
    read_text(src, &mut each)
}

fn read_up_to(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The encoding of a text list: a BOM, UTF-16 without one (NULs beside ASCII), valid UTF-8, or
/// else GB18030. Leaves `src` at its start.
fn sniff_encoding<R: Read + Seek>(src: &mut R) -> std::io::Result<&'static encoding_rs::Encoding> {
    let mut head = [0u8; 64];
    let n = read_up_to(src, &mut head)?;
    let head = &head[..n];
    src.seek(SeekFrom::Start(0))?;
    if let Some((enc, _)) = encoding_rs::Encoding::for_bom(head) {
        return Ok(enc);
    }
    // "n\0u\0m\0…": UTF-16 written without its BOM.
    let pairs = head.len() / 2;
    if pairs >= 2 {
        let odd_nuls = (0..pairs).filter(|i| head[2 * i + 1] == 0).count();
        let even_nuls = (0..pairs).filter(|i| head[2 * i] == 0).count();
        if odd_nuls * 4 >= pairs * 3 && even_nuls == 0 {
            return Ok(encoding_rs::UTF_16LE);
        }
        if even_nuls * 4 >= pairs * 3 && odd_nuls == 0 {
            return Ok(encoding_rs::UTF_16BE);
        }
    }
    // Valid UTF-8 all through? Checked in chunks, carrying a sequence cut at a chunk's end.
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry = 0;
    let valid = loop {
        let k = src.read(&mut buf[carry..])?;
        if k == 0 {
            break carry == 0;
        }
        let filled = carry + k;
        match std::str::from_utf8(&buf[..filled]) {
            Ok(_) => carry = 0,
            Err(e) if e.error_len().is_none() => {
                let good = e.valid_up_to();
                buf.copy_within(good..filled, 0);
                carry = filled - good;
            }
            Err(_) => break false,
        }
    };
    src.seek(SeekFrom::Start(0))?;
    Ok(if valid {
        encoding_rs::UTF_8
    } else {
        encoding_rs::GB18030
    })
}

/// The delimiter of a header line: the most frequent of `,` `;` tab `|` outside quotes.
fn sniff_delimiter(header: &str) -> u8 {
    let mut counts = [0usize; 4];
    let mut quoted = false;
    for c in header.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => counts[0] += 1,
            ';' if !quoted => counts[1] += 1,
            '\t' if !quoted => counts[2] += 1,
            '|' if !quoted => counts[3] += 1,
            _ => {}
        }
    }
    let best = (0..4).max_by_key(|&i| (counts[i], 4 - i)).unwrap_or(0);
    if counts[best] == 0 {
        b','
    } else {
        [b',', b';', b'\t', b'|'][best]
    }
}

/// The header line and the delimiter: named by Excel's hint line (`sep=;`, before the
/// header; whether there was one is the third value), else sniffed from the header.
fn header_and_delimiter(
    text: &mut impl BufRead,
    enc: &'static encoding_rs::Encoding,
) -> Result<(u8, Vec<u8>, bool), ListError> {
    let decode = |e: std::io::Error| err(format!("cannot decode as {}: {e}", enc.name()));
    let mut first = Vec::new();
    text.read_until(b'\n', &mut first).map_err(decode)?;
    // Only the line end is taken off: `sep=` followed by a tab names the tab.
    let hint = std::str::from_utf8(&first)
        .ok()
        .map(|l| l.trim_end_matches(['\r', '\n']))
        .and_then(|l| l.strip_prefix("sep="))
        .and_then(|d| (d.len() == 1).then(|| d.as_bytes()[0]));
    Ok(match hint {
        Some(d) => {
            let mut h = Vec::new();
            text.read_until(b'\n', &mut h).map_err(decode)?;
            (d, h, true)
        }
        None => (
            sniff_delimiter(&String::from_utf8_lossy(&first)),
            first,
            false,
        ),
    })
}

fn read_text<R: Read + Seek>(
    mut src: R,
    each: &mut impl FnMut(&Layout, Row),
) -> Result<Layout, ListError> {
    let enc = sniff_encoding(&mut src).map_err(|e| err(format!("cannot read: {e}")))?;
    let decoded = encoding_rs_io::DecodeReaderBytesBuilder::new()
        .encoding(Some(enc))
        .bom_override(true)
        .strip_bom(true)
        .build(src);
    let mut text = BufReader::with_capacity(64 * 1024, decoded);
    let (delimiter, header_line, hint) = header_and_delimiter(&mut text, enc)?;
    let newlines = std::rc::Rc::new(std::cell::RefCell::new(NewlineCount::default()));
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(Lines::new(
            std::io::Cursor::new(header_line).chain(text),
            &newlines,
        ));
    let header = rdr
        .headers()
        .map_err(|e| err(format!("header row: {e}")))?
        .clone();
    let layout = Layout {
        format: "csv",
        encoding: Some(enc.name()),
        delimiter: Some(delimiter as char),
        sheet: None,
        columns: header.iter().map(|h| h.trim().to_owned()).collect(),
    };
    if layout.columns.iter().all(String::is_empty) {
        return Err(err("the list has no header row"));
    }
    let mut rec = csv::StringRecord::new();
    // Rows as a spreadsheet numbers them: blank lines count (they are empty rows), a quoted
    // field's line breaks do not (its record is one row). The header is line 1; a record stands
    // on the line of its last byte, less its own line breaks.
    let breaks = |r: &csv::StringRecord| {
        r.iter()
            .map(|f| f.matches('\n').count() as u64)
            .sum::<u64>()
    };
    let mut folded = breaks(&header);
    loop {
        let more = rdr.read_record(&mut rec).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line()) + u64::from(hint);
            err(format!("line {line}: {e}"))
        })?;
        if !more {
            return Ok(layout);
        }
        let own = breaks(&rec);
        let last_byte = rdr.position().byte().saturating_sub(1);
        let line = 1 + newlines.borrow_mut().before(last_byte);
        let row = line.saturating_sub(1 + own + folded) as usize;
        folded += own;
        if rec.iter().all(str::is_empty) {
            continue;
        }
        each(&layout, shape(row, rec.iter(), layout.columns.len()));
    }
}

/// Line breaks seen in a stream, counted up to a byte offset as the reader moves on.
#[derive(Default)]
struct NewlineCount {
    /// Offsets of `\n` read but not yet counted.
    pending: std::collections::VecDeque<u64>,
    /// `\n` before the last offset asked about.
    counted: u64,
    /// Bytes read so far.
    read: u64,
}

impl NewlineCount {
    /// How many `\n` stand before byte `offset` (offsets asked about only grow).
    fn before(&mut self, offset: u64) -> u64 {
        while self.pending.front().is_some_and(|&o| o < offset) {
            self.pending.pop_front();
            self.counted += 1;
        }
        self.counted
    }
}

/// A reader that notes where each `\n` is.
struct Lines<R> {
    inner: R,
    count: std::rc::Rc<std::cell::RefCell<NewlineCount>>,
}

impl<R> Lines<R> {
    fn new(inner: R, count: &std::rc::Rc<std::cell::RefCell<NewlineCount>>) -> Self {
        Lines {
            inner,
            count: count.clone(),
        }
    }
}

impl<R: Read> Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut c = self.count.borrow_mut();
        let base = c.read;
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                c.pending.push_back(base + i as u64);
            }
        }
        c.read += n as u64;
        Ok(n)
    }
}

/// A row's cells fitted to `width` columns: missing ones empty, extra non-empty ones counted.
fn shape<'a>(row: usize, cells: impl Iterator<Item = &'a str>, width: usize) -> Row {
    let mut out = Vec::with_capacity(width);
    let mut extra = 0;
    for c in cells {
        if out.len() < width {
            out.push(c.trim().to_owned());
        } else if !c.trim().is_empty() {
            extra += 1;
        }
    }
    out.resize(width, String::new());
    Row {
        row,
        cells: out,
        extra,
    }
}

/// A spreadsheet cell as text: whole numbers as their digits.
fn cell_text(d: &calamine::DataRef<'_>) -> String {
    use calamine::DataRef;
    match d {
        DataRef::Empty => String::new(),
        DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => {
            s.trim().to_owned()
        }
        DataRef::SharedString(s) => s.trim().to_owned(),
        DataRef::Int(i) => i.to_string(),
        DataRef::Float(f) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{}", *f as i64),
        DataRef::Float(f) => f.to_string(),
        DataRef::Bool(b) => b.to_string(),
        DataRef::DateTime(t) => t.as_f64().to_string(),
        DataRef::Error(e) => format!("#{e:?}"),
    }
}

/// Most bytes a workbook's parts may expand to (a ZIP bomb is refused before it is read).
pub const MAX_EXPANDED: u64 = 512 << 20;

/// Most columns read from a sheet (cells further right are ignored).
pub const MAX_COLUMNS: u32 = 1024;

/// Checks an XLSX (a ZIP) before `calamine` opens it: every part is inflated and counted (the
/// sizes a ZIP declares are not trusted) against [`MAX_EXPANDED`], and the shared strings'
/// declared count must fit their part (calamine reserves room for `uniqueCount` strings up
/// front, so a small file declaring billions would exhaust memory).
fn preflight_xlsx(bytes: &[u8]) -> Result<(), ListError> {
    let bad = |e: &dyn std::fmt::Display| err(format!("not a workbook that can be read: {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(&e))?;
    let mut expanded = 0u64;
    let mut strings_size = None;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| bad(&e))?;
        let name = f.name().to_owned();
        let left = MAX_EXPANDED - expanded;
        let n = std::io::copy(&mut (&mut f).take(left + 1), &mut std::io::sink())
            .map_err(|e| bad(&e))?;
        expanded += n.min(left);
        if n > left {
            return Err(err(format!(
                "the workbook expands to more than {} MiB: save it again, or as CSV",
                MAX_EXPANDED >> 20
            )));
        }
        if name == "xl/sharedStrings.xml" {
            strings_size = Some(n);
        }
    }
    let Some(size) = strings_size else {
        return Ok(());
    };
    let f = zip.by_name("xl/sharedStrings.xml").map_err(|e| bad(&e))?;
    let mut r = quick_xml::Reader::from_reader(std::io::BufReader::new(f));
    let mut buf = Vec::new();
    loop {
        match r.read_event_into(&mut buf).map_err(|e| bad(&e))? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)
                if e.local_name().as_ref() == b"sst" =>
            {
                for a in e.attributes() {
                    let a = a.map_err(|e| bad(&e))?;
                    if matches!(a.key.local_name().as_ref(), b"uniqueCount" | b"count") {
                        let v = String::from_utf8_lossy(&a.value).trim().to_owned();
                        // Each shared string takes at least `<si/>`: five bytes.
                        if v.parse::<u64>().map_or(true, |n| n > size / 5 + 1) {
                            return Err(err(format!(
                                "the workbook declares {v} shared strings in {size} bytes: a damaged or hostile file"
                            )));
                        }
                    }
                }
                return Ok(());
            }
            quick_xml::events::Event::Eof => return Ok(()),
            _ => {}
        }
        buf.clear();
    }
}

fn read_workbook<R: Read + Seek>(
    mut src: R,
    opts: &ListOptions,
    each: &mut impl FnMut(&Layout, Row),
) -> Result<Layout, ListError> {
    let mut bytes = Vec::new();
    src.read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if !bytes.starts_with(b"PK") {
        // .xls (BIFF) and the other containers: calamine builds a whole rectangle from the
        // cell positions a file claims, so a small hostile file could ask for billions.
        return Err(err(
            "an Excel 97-2003 .xls workbook: save it as .xlsx (Excel or WPS: Save As, Excel Workbook) or as CSV",
        ));
    }
    preflight_xlsx(&bytes)?;
    // A parser fault on a damaged file (fuzzing found calamine subtracting a malformed
    // `<dimension>` unchecked) is an error for this upload, not a crash of the daemon.
    let mut rows = Vec::new();
    let layout = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        read_sheet(bytes, opts, &mut |_: &Layout, r: Row| rows.push(r))
    }))
    .map_err(|_| err("the workbook is damaged: the spreadsheet reader failed on it"))??;
    for r in rows {
        each(&layout, r);
    }
    Ok(layout)
}

/// The sheet asked for, or the first.
fn pick_sheet(names: &[String], asked: Option<&String>) -> Result<String, ListError> {
    match asked {
        Some(s) if names.contains(s) => Ok(s.clone()),
        Some(s) => Err(err(format!(
            "no sheet {s:?} (the workbook has {})",
            names.join(", ")
        ))),
        None => names
            .first()
            .cloned()
            .ok_or_else(|| err("the workbook has no sheet")),
    }
}

/// Reads the sheet cell by cell (never as one rectangle sized by the positions the file
/// claims); rows are numbered from the header row as a spreadsheet numbers them.
fn read_sheet(
    bytes: Vec<u8>,
    opts: &ListOptions,
    each: &mut impl FnMut(&Layout, Row),
) -> Result<Layout, ListError> {
    let mut book: calamine::Xlsx<_> = calamine::Xlsx::new(std::io::Cursor::new(bytes))
        .map_err(|e| err(format!("not a workbook that can be read: {e}")))?;
    let sheet = pick_sheet(&book.sheet_names(), opts.sheet.as_ref())?;
    let mut cells = book
        .worksheet_cells_reader(&sheet)
        .map_err(|e| err(format!("sheet {sheet:?}: {e}")))?;
    let mut layout: Option<Layout> = None;
    let mut header_row = 0u32;
    let mut current: Option<(u32, Vec<String>)> = None;
    let mut emit = |row_no: u32, cells: Vec<String>, layout: &mut Option<Layout>, sheet: &str| {
        if cells.iter().all(String::is_empty) {
            return;
        }
        match layout {
            None => {
                let mut columns = cells;
                while columns.last().is_some_and(String::is_empty) {
                    columns.pop();
                }
                header_row = row_no;
                *layout = Some(Layout {
                    format: "xlsx",
                    encoding: None,
                    delimiter: None,
                    sheet: Some(sheet.to_owned()),
                    columns,
                });
            }
            Some(l) => {
                let row = (row_no - header_row) as usize;
                each(
                    l,
                    shape(row, cells.iter().map(String::as_str), l.columns.len()),
                );
            }
        }
    };
    loop {
        let cell = cells
            .next_cell()
            .map_err(|e| err(format!("sheet {sheet:?}: {e}")))?;
        let Some(cell) = cell else { break };
        let (r, c) = cell.get_position();
        if c >= MAX_COLUMNS {
            continue;
        }
        if current.as_ref().is_some_and(|(cr, _)| *cr != r)
            && let Some((cr, row)) = current.take()
        {
            emit(cr, row, &mut layout, &sheet);
        }
        let entry = current.get_or_insert_with(|| (r, Vec::new()));
        let text = cell_text(cell.get_value());
        if !text.is_empty() {
            if entry.1.len() <= c as usize {
                entry.1.resize(c as usize + 1, String::new());
            }
            entry.1[c as usize] = text;
        }
    }
    if let Some((cr, row)) = current.take() {
        emit(cr, row, &mut layout, &sheet);
    }
    layout.ok_or_else(|| err(format!("sheet {sheet:?} is empty: no header row")))
}

/// Header names that hold phone numbers (ASCII case ignored), English and Chinese.
pub const NUMBER_COLUMNS: [&str; 13] = [
    "number",
    "phone",
    "mobile",
    "to",
    "msisdn",
    "tel",
    "手机",
    "手机号",
    "手机号码",
    "电话",
    "电话号码",
    "联系电话",
    "号码",
];

/// What to say when a list has no number column.
pub fn no_number_column(layout: &Layout) -> String {
    format!(
        "no number column: name one of {} (the header has {}{})",
        NUMBER_COLUMNS.join(", "),
        if layout.columns.is_empty() {
            "no columns".to_owned()
        } else {
            layout
                .columns
                .iter()
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        match layout.delimiter {
            Some(d) => format!("; read as {} separated", delimiter_name(d)),
            None => String::new(),
        }
    )
}

fn delimiter_name(d: char) -> String {
    match d {
        '\t' => "tab".into(),
        c => format!("{c:?}"),
    }
}

/// The column holding phone numbers (see [`NUMBER_COLUMNS`]).
pub fn number_column(columns: &[String]) -> Option<usize> {
    columns.iter().position(|h| {
        let h = h.trim().to_lowercase();
        NUMBER_COLUMNS.contains(&h.as_str())
    })
}

/// The column holding a recipient's language (`lang`, `language`, `语言`).
pub fn lang_column(columns: &[String]) -> Option<usize> {
    columns.iter().position(|h| {
        matches!(
            h.trim().to_lowercase().as_str(),
            "lang" | "language" | "语言"
        )
    })
}

/// A list's bytes: a file or a buffer.
pub trait Source: Read + Seek + Send {}
impl<T: Read + Seek + Send> Source for T {}

/// Reads a list held in memory.
pub fn read_bytes(
    bytes: &[u8],
    opts: &ListOptions,
    each: impl FnMut(&Layout, Row),
) -> Result<Layout, ListError> {
    read(std::io::Cursor::new(bytes), opts, each)
}

/// Uploaded list files (`POST /api/v1/uploads`) under `data_dir/uploads/`, each used once.
pub mod uploads {
    use std::path::{Path, PathBuf};

    /// The folder of uploads under `data_dir`.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("uploads")
    }

    /// The file of upload `id`, when `id` has the shape this module gives ids (32 hex digits).
    pub fn path(data_dir: &Path, id: &str) -> Option<PathBuf> {
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| dir(data_dir).join(format!("{id}.list")))
    }

    /// Takes upload `id` for one use and opens it, or says why not. Taking is a rename, so two
    /// requests naming the same upload (a double click, a retry) cannot both import it.
    pub fn open(data_dir: &Path, id: &str) -> Result<std::fs::File, String> {
        let p = path(data_dir, id).ok_or_else(|| format!("{id:?} is not an upload id"))?;
        let taken = p.with_extension("taken");
        std::fs::rename(&p, &taken)
            .and_then(|()| std::fs::File::open(&taken))
            .map_err(|_| format!("no upload {id} (uploads are used once, kept for an hour, and kept by the node that took them: on a shared store, send the upload and its use to the same node)"))
    }

    /// Removes upload `id` once it has been used (or its use failed: an upload is used once).
    pub fn remove(data_dir: &Path, id: &str) {
        if let Some(p) = path(data_dir, id) {
            let _ = std::fs::remove_file(p.with_extension("taken"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(bytes: &[u8]) -> (Layout, Vec<Row>) {
        let mut out = Vec::new();
        let l = read_bytes(bytes, &ListOptions::default(), |_, r| out.push(r)).unwrap();
        (l, out)
    }

    #[test]
    fn delimiters_are_sniffed_from_the_header() {
        for (src, d) in [
            ("phone;name\n13800138000;张三\n", ';'),
            ("phone\tname\n13800138000\t张三\n", '\t'),
            ("phone|name\n13800138000|张三\n", '|'),
            ("phone,name\n13800138000,张三\n", ','),
            ("\"a;b\",phone,name\nx,13800138000,张三\n", ','),
            ("sep=;\nphone;name\n13800138000;张三\n", ';'),
            ("sep=\t\r\nphone\tname\r\n13800138000\t张三\r\n", '\t'),
        ] {
            let (l, r) = rows(src.as_bytes());
            assert_eq!(l.delimiter, Some(d), "{src:?}");
            let n = number_column(&l.columns).unwrap();
            assert_eq!(r[0].cells[n], "13800138000", "{src:?}");
            assert_eq!(r.len(), 1);
        }
    }

    #[test]
    fn encodings_are_detected() {
        let text = "手机,姓名\r\n13800138000,张三\r\n";
        let utf8_bom = [b"\xef\xbb\xbf".as_slice(), text.as_bytes()].concat();
        let (gbk, _, _) = encoding_rs::GBK.encode(text);
        let le: Vec<u8> = [0xff, 0xfe]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        let be: Vec<u8> = [0xfe, 0xff]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        // Without a BOM only an ASCII start shows UTF-16 (NULs beside letters).
        let le_no_bom: Vec<u8> = "phone,name\r\n13800138000,张三\r\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for (bytes, enc) in [
            (text.as_bytes().to_vec(), "UTF-8"),
            (utf8_bom, "UTF-8"),
            (gbk.into_owned(), "gb18030"),
            (le, "UTF-16LE"),
            (be, "UTF-16BE"),
            (le_no_bom, "UTF-16LE"),
        ] {
            let (l, r) = rows(&bytes);
            assert_eq!(l.encoding, Some(enc));
            assert_eq!(number_column(&l.columns), Some(0), "{enc}");
            assert_eq!(r[0].cells, ["13800138000", "张三"], "{enc}");
        }
    }

    #[test]
    fn a_multibyte_sequence_across_the_check_chunk_stays_utf8() {
        let mut text = String::from("number,name\n");
        while text.len() < 64 * 1024 + 10 {
            text.push_str("13800138000,张三李四王五\n");
        }
        let (l, r) = rows(text.as_bytes());
        assert_eq!(l.encoding, Some("UTF-8"));
        assert!(r.iter().all(|r| r.cells[1] == "张三李四王五"));
    }

    #[test]
    fn short_long_blank_and_quoted_rows() {
        let src = "number,name,note\n\
                   13800138000,a,\n\
                   13900139000,b\n\
                   ,,\n\
                   \n\
                   13700137000,\"c, with\nbreak\",x\n\
                   13600136000,d,e,f\n";
        let (_, r) = rows(src.as_bytes());
        let (_, crlf) = rows(src.replace('\n', "\r\n").as_bytes());
        let numbers = |r: &[Row]| r.iter().map(|r| r.row).collect::<Vec<_>>();
        assert_eq!(numbers(&crlf), numbers(&r), "CRLF counts the same");
        let (_, unended) = rows(src.trim_end().as_bytes());
        assert_eq!(
            numbers(&unended),
            numbers(&r),
            "a last line without its end"
        );
        assert_eq!(r.len(), 4, "{r:?}");
        assert_eq!(r[1].cells, ["13900139000", "b", ""]);
        assert_eq!(r[2].cells[1], "c, with\nbreak");
        // Spreadsheet rows: 2, 3, (4 `,,` and 5 blank), 6 (two lines, one row), 7.
        let numbers: Vec<usize> = r.iter().map(|r| r.row).collect();
        assert_eq!(numbers, [1, 2, 5, 6]);
        assert_eq!(r[3].extra, 1);
    }

    #[test]
    fn empty_and_headerless_lists_say_so() {
        assert!(read_bytes(b"", &ListOptions::default(), |_, _| {}).is_err());
        let e = read_bytes(b",,\n1,2,3\n", &ListOptions::default(), |_, _| {}).unwrap_err();
        assert!(e.message.contains("no header"), "{e}");
        let (l, _) = rows(b"name;city\nx;y\n");
        let m = no_number_column(&l);
        assert!(
            m.contains("\"name\", \"city\"") && m.contains("';' separated"),
            "{m}"
        );
    }

    #[test]
    fn number_columns_in_english_and_chinese() {
        let cols = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(number_column(&cols(&["姓名", "手机号码"])), Some(1));
        assert_eq!(number_column(&cols(&[" Phone "])), Some(0));
        assert_eq!(number_column(&cols(&["name"])), None);
        assert_eq!(lang_column(&cols(&["phone", "Language"])), Some(1));
    }

    #[test]
    fn workbooks_are_read_with_whole_numbers_exact() {
        use rust_xlsxwriter::Workbook;
        let mut wb = Workbook::new();
        let s = wb.add_worksheet();
        s.set_name("名单").unwrap();
        s.write(0, 0, "手机").unwrap();
        s.write(0, 1, "姓名").unwrap();
        s.write(1, 0, 13800138000.0).unwrap();
        s.write(1, 1, "张三").unwrap();
        s.write(2, 0, "＋８６ １３９ ００１３ ９０００").unwrap();
        s.write(4, 0, 13700137000.0).unwrap();
        let other = wb.add_worksheet();
        other.set_name("other").unwrap();
        other.write(0, 0, "number").unwrap();
        other.write(1, 0, 13600136000.0).unwrap();
        let bytes = wb.save_to_buffer().unwrap();
        let (l, r) = rows(&bytes);
        assert_eq!((l.format, l.sheet.as_deref()), ("xlsx", Some("名单")));
        assert_eq!(r.len(), 3, "the blank row is skipped");
        assert_eq!(r[0].cells, ["13800138000", "张三"]);
        assert_eq!(r[1].cells[0], "＋８６ １３９ ００１３ ９０００");
        // Spreadsheet row 5 (the blank row 4 counted): data row 4.
        assert_eq!((r[2].row, r[2].cells[1].as_str()), (4, ""));
        let mut got = Vec::new();
        let opts = ListOptions {
            sheet: Some("other".into()),
        };
        read_bytes(&bytes, &opts, |_, r| got.push(r.cells[0].clone())).unwrap();
        assert_eq!(got, ["13600136000"]);
        let opts = ListOptions {
            sheet: Some("nope".into()),
        };
        let e = read_bytes(&bytes, &opts, |_, _| {}).unwrap_err();
        assert!(e.message.contains("名单, other"), "{e}");
    }

    /// The workbook written by a spreadsheet writer with one part's text changed.
    fn edited_xlsx(part: &str, edit: impl Fn(&str) -> String) -> Vec<u8> {
        use std::io::Write;
        let mut wb = rust_xlsxwriter::Workbook::new();
        let s = wb.add_worksheet();
        s.write(0, 0, "手机").unwrap();
        s.write(1, 0, "13800138000").unwrap();
        let bytes = wb.save_to_buffer().unwrap();
        let mut zin = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..zin.len() {
            let mut f = zin.by_index(i).unwrap();
            let name = f.name().to_owned();
            let mut text = Vec::new();
            f.read_to_end(&mut text).unwrap();
            if name == part {
                text = edit(&String::from_utf8(text).unwrap()).into_bytes();
            }
            out.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            out.write_all(&text).unwrap();
        }
        out.finish().unwrap().into_inner()
    }

    #[test]
    fn hostile_workbooks_are_refused_not_a_crash() {
        let ok = edited_xlsx("xl/worksheets/sheet1.xml", str::to_owned);
        let (_, r) = rows(&ok);
        assert_eq!(r[0].cells, ["13800138000"]);
        // calamine reserves `uniqueCount` strings before reading any: refused first.
        let bomb = edited_xlsx("xl/sharedStrings.xml", |x| {
            x.replacen("uniqueCount=\"", "uniqueCount=\"999999999", 1)
        });
        let e = read_bytes(&bomb, &ListOptions::default(), |_, _| {}).unwrap_err();
        assert!(e.message.contains("shared strings"), "{e}");
        // The same in single quotes, after a long attribute: still read from the tag.
        let quoted = edited_xlsx("xl/sharedStrings.xml", |x| {
            let at = x.find("<sst ").unwrap() + 5;
            let attrs_end = x[at..].find('>').unwrap() + at;
            let tag = &x[at..attrs_end];
            let kept: String = tag
                .split_whitespace()
                .filter(|a| !a.starts_with("uniqueCount") && !a.starts_with("count"))
                .collect::<Vec<_>>()
                .join(" ");
            format!(
                "{}{kept} pad='{}' uniqueCount='99999999999'{}",
                &x[..at],
                "x".repeat(5000),
                &x[attrs_end..]
            )
        });
        let e = read_bytes(&quoted, &ListOptions::default(), |_, _| {}).unwrap_err();
        assert!(e.message.contains("99999999999 shared strings"), "{e}");
        // A reversed <dimension> (found by fuzzing) makes calamine fail: an error.
        // Whatever it answers, the call returns (a panic would fail this test).
        let reversed = edited_xlsx("xl/worksheets/sheet1.xml", |x| {
            assert!(x.contains("<dimension ref=\"A1:A2\"/>"), "{x}");
            x.replace("<dimension ref=\"A1:A2\"/>", "<dimension ref=\"B9:A1\"/>")
        });
        let answer = read_bytes(&reversed, &ListOptions::default(), |_, _| {});
        if let Err(e) = answer {
            assert!(e.message.contains("damaged"), "{e}");
        }
    }

    #[test]
    fn a_broken_zip_is_an_error_not_a_panic() {
        let e = read_bytes(b"PK\x03\x04garbage", &ListOptions::default(), |_, _| {}).unwrap_err();
        assert!(e.message.contains("not a workbook"), "{e}");
        let e = read_bytes(
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest",
            &ListOptions::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(e.message.contains("save it as .xlsx"), "{e}");
    }

    #[test]
    fn far_away_cells_do_not_size_anything() {
        // Cells at A1 and XFD1048576: read cell by cell, nothing is sized by the rectangle.
        let mut wb = rust_xlsxwriter::Workbook::new();
        let s = wb.add_worksheet();
        s.write(0, 0, "phone").unwrap();
        s.write(1, 0, "13800138000").unwrap();
        s.write(1_048_575, 16_383, "far").unwrap();
        let (l, r) = rows(&wb.save_to_buffer().unwrap());
        assert_eq!(l.columns, ["phone"]);
        assert_eq!(r.len(), 1, "the far cell is past the column limit: {r:?}");
        assert_eq!(r[0].cells, ["13800138000"]);
    }
}
