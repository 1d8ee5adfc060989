//! Finds where a value stands in JSON source text, so that errors found after parsing
//! (an unknown channel, a bad cron line) can still be reported as `file:line:col`.

/// One step of a path into a JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// An object member.
    Key(&'a str),
    /// An array element.
    Index(usize),
}

/// The 1-based line and column (in characters) of the value at `path` in `src`, or of the deepest
/// part of the path that exists. Falls back to 1:1 when the source is not the JSON it was parsed from.
pub fn locate(src: &str, path: &[Step<'_>]) -> (usize, usize) {
    let bytes = src.as_bytes();
    let mut pos = skip_ws(bytes, 0);
    for step in path {
        match find_child(bytes, pos, *step) {
            Some(p) => pos = p,
            None => break,
        }
    }
    line_col(src, pos)
}

/// `path` as a JSON Pointer (RFC 6901 §3: `~` is written `~0` and `/` is written `~1`).
pub fn pointer(path: &[Step<'_>]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => format!("/{i}"),
        })
        .collect()
}

/// Line and column (1-based, column counted in characters) of byte offset `pos`.
pub fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let before = &src[..pos.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Start of the child value `step` of the container starting at `pos`.
fn find_child(b: &[u8], pos: usize, step: Step<'_>) -> Option<usize> {
    let open = *b.get(pos)?;
    let mut i = skip_ws(b, pos + 1);
    let mut index = 0;
    loop {
        if matches!(b.get(i), Some(b'}') | Some(b']') | None) {
            return None;
        }
        let hit = match (open, step) {
            (b'{', Step::Key(want)) => {
                let (key, end) = read_string(b, i)?;
                i = skip_ws(b, end);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = skip_ws(b, i + 1);
                key == want
            }
            (b'[', Step::Index(want)) => want == index,
            _ => return None,
        };
        if hit {
            return Some(i);
        }
        i = skip_ws(b, skip_value(b, i)?);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            _ => return None,
        }
        index += 1;
    }
}

/// Reads a JSON string starting at `i` (a `"`); returns its decoded text and the index after it.
fn read_string(b: &[u8], i: usize) -> Option<(String, usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let end = skip_value(b, i)?;
    let text: String = serde_json::from_slice(&b[i..end]).ok()?;
    Some((text, end))
}

/// Index just after the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_value(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace()
            {
                j += 1;
            }
            Some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "{\n  \"id\": \"x\",\n  \"list\": [1, {\"a\": \"b\\\"}\"}, [3]],\n  \"k\\u0065y\": \"深\",\n  \"z\": true\n}";

    #[test]
    fn pointers_escape_as_rfc_6901_says() {
        // RFC 6901 §5's examples: "/a~1b" names "a/b", "/m~0n" names "m~n".
        assert_eq!(pointer(&[Step::Key("a/b")]), "/a~1b");
        assert_eq!(pointer(&[Step::Key("m~n")]), "/m~0n");
        assert_eq!(
            pointer(&[Step::Key("items"), Step::Index(2), Step::Key("seconds")]),
            "/items/2/seconds"
        );
        assert_eq!(pointer(&[]), "");
    }

    #[test]
    fn finds_members_and_elements() {
        assert_eq!(locate(SRC, &[Step::Key("id")]), (2, 9));
        assert_eq!(locate(SRC, &[Step::Key("list"), Step::Index(0)]), (3, 12));
        assert_eq!(
            locate(SRC, &[Step::Key("list"), Step::Index(1), Step::Key("a")]),
            (3, 21)
        );
        assert_eq!(locate(SRC, &[Step::Key("list"), Step::Index(2)]), (3, 30));
        assert_eq!(locate(SRC, &[Step::Key("key")]), (4, 15));
        assert_eq!(locate(SRC, &[Step::Key("z")]), (5, 8));
    }

    #[test]
    fn missing_path_stops_at_deepest_existing_part() {
        assert_eq!(locate(SRC, &[Step::Key("list"), Step::Index(9)]), (3, 11));
        assert_eq!(locate(SRC, &[Step::Key("nope")]), (1, 1));
        assert_eq!(locate("garbage", &[Step::Key("a")]), (1, 1));
    }
}
