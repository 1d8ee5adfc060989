//! SMS segmentation and cost. GSM-7: 160 septets in one message, 153 per part of a long one;
//! the extension characters `^ { } \ [ ~ ] | €` and form feed take two septets, and a part never
//! splits such a pair. Any character outside GSM-7 makes the whole message UCS-2: 70 UTF-16 units
//! in one message, 67 per part; characters outside the BMP take two units and are never split.
//! Chinese carriers bill differently: every character counts 1, the signature `【…】` included,
//! ≤ 70 → 1 message, else ⌈n / 67⌉.

use serde::Serialize;

/// The coding a message goes out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// GSM 03.38 7-bit default alphabet (with its extension table).
    Gsm7,
    /// UCS-2 (UTF-16BE on the wire).
    Ucs2,
}

/// How a text travels: coding, size in coding units, and parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Segments {
    /// Coding.
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Number of SMS parts.
    pub parts: usize,
}

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{0c}";

/// Septets of each ASCII character in GSM-7 (0: not in GSM-7), so that the usual text is not
/// searched for in the tables character by character.
static GSM7_ASCII: std::sync::LazyLock<[u8; 128]> = std::sync::LazyLock::new(|| {
    let mut t = [0u8; 128];
    for c in (0..128u8).map(char::from) {
        t[c as usize] = gsm7_width_slow(c).unwrap_or(0) as u8;
    }
    t
});

/// Septets a character takes in GSM-7, `None` if it is not in GSM-7.
fn gsm7_width(c: char) -> Option<usize> {
    if c.is_ascii() {
        Some(usize::from(GSM7_ASCII[c as usize])).filter(|&w| w > 0)
    } else {
        gsm7_width_slow(c)
    }
}

fn gsm7_width_slow(c: char) -> Option<usize> {
    if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else if c != '\u{1b}' && GSM7_BASIC.contains(c) {
        Some(1)
    } else {
        None
    }
}

/// Counts parts when characters of the given widths are packed into parts of `per_part`
/// units, never splitting a character.
fn pack(widths: impl Iterator<Item = usize>, single: usize, per_part: usize) -> (usize, usize) {
    let widths: Vec<usize> = widths.collect();
    let units: usize = widths.iter().sum();
    if units <= single {
        return (units, 1);
    }
    let (mut parts, mut used) = (1, 0);
    for w in widths {
        if used + w > per_part {
            parts += 1;
            used = 0;
        }
        used += w;
    }
    (units, parts)
}

/// How `text` is coded: GSM-7 when every character is in the GSM-7 tables, else UCS-2.
pub fn encoding(text: &str) -> Encoding {
    if text.chars().all(|c| gsm7_width(c).is_some()) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// How `text` is coded and into how many parts it splits.
pub fn segments(text: &str) -> Segments {
    let gsm: Option<Vec<usize>> = text.chars().map(gsm7_width).collect();
    match gsm {
        Some(widths) => {
            let (units, parts) = pack(widths.into_iter(), 160, 153);
            Segments {
                encoding: Encoding::Gsm7,
                units,
                parts,
            }
        }
        None => {
            let (units, parts) = pack(text.chars().map(char::len_utf16), 70, 67);
            Segments {
                encoding: Encoding::Ucs2,
                units,
                parts,
            }
        }
    }
}

/// Messages a Chinese carrier bills for `text` sent with `signature` (e.g. `【市政府】`).
pub fn carrier_cn(text: &str, signature: Option<&str>) -> usize {
    let n = text.chars().count() + signature.map_or(0, |s| s.chars().count());
    if n <= 70 { 1 } else { n.div_ceil(67) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(text: &str) -> (Encoding, usize, usize) {
        let s = segments(text);
        assert_eq!(encoding(text), s.encoding, "{text:?}");
        (s.encoding, s.units, s.parts)
    }

    #[test]
    fn the_ascii_table_agrees_with_the_gsm7_tables() {
        for c in (0..=0x24ffu32).filter_map(char::from_u32) {
            assert_eq!(gsm7_width(c), gsm7_width_slow(c), "{c:?}");
        }
    }

    #[test]
    fn gsm7_table() {
        let a = |n| "a".repeat(n);
        assert_eq!(seg(""), (Encoding::Gsm7, 0, 1));
        assert_eq!(seg(&a(160)), (Encoding::Gsm7, 160, 1));
        assert_eq!(seg(&a(161)), (Encoding::Gsm7, 161, 2));
        assert_eq!(seg(&a(306)), (Encoding::Gsm7, 306, 2));
        assert_eq!(seg(&a(307)), (Encoding::Gsm7, 307, 3));
        assert_eq!(
            seg(&a(399)),
            (Encoding::Gsm7, 399, 3),
            "399 GSM chars are 3 parts, as Kannel sends them"
        );
        // Latin-1 letters of the basic table stay GSM-7.
        assert_eq!(
            seg("Ça coûte 5€"),
            (Encoding::Ucs2, 11, 1),
            "û is not GSM-7"
        );
        assert_eq!(
            seg("Ça coute 5€"),
            (Encoding::Gsm7, 12, 1),
            "€ takes two septets"
        );
    }

    #[test]
    fn escapes_count_two_and_are_never_split() {
        assert_eq!(seg(&"{".repeat(80)), (Encoding::Gsm7, 160, 1));
        assert_eq!(seg(&"{".repeat(81)), (Encoding::Gsm7, 162, 2));
        // 152 plain septets then an escape pair: the pair cannot start at 153, so it moves to part 2.
        let text = format!("{}{{{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(seg(&text), (Encoding::Gsm7, 164, 2));
        let text = format!("{}{{{}", "a".repeat(152), "a".repeat(152));
        // Part 1: 152 (pair does not fit) · part 2: 2 + 151 · part 3: 1.
        assert_eq!(seg(&text), (Encoding::Gsm7, 306, 3));
    }

    #[test]
    fn ucs2_table() {
        let zh = |n| "政".repeat(n);
        assert_eq!(seg(&zh(70)), (Encoding::Ucs2, 70, 1));
        assert_eq!(seg(&zh(71)), (Encoding::Ucs2, 71, 2));
        assert_eq!(seg(&zh(134)), (Encoding::Ucs2, 134, 2));
        assert_eq!(
            seg(&zh(140)),
            (Encoding::Ucs2, 140, 3),
            "140 Chinese chars are 3 parts"
        );
        // One Chinese comma makes an English text UCS-2.
        assert_eq!(
            seg(&format!("{}，", "a".repeat(69))),
            (Encoding::Ucs2, 70, 1)
        );
    }

    #[test]
    fn surrogate_pairs_take_two_units_and_are_never_split() {
        assert_eq!(seg("😀"), (Encoding::Ucs2, 2, 1));
        assert_eq!(seg(&"😀".repeat(35)), (Encoding::Ucs2, 70, 1));
        assert_eq!(seg(&"😀".repeat(36)), (Encoding::Ucs2, 72, 2));
        // 66 units then an emoji: the pair does not fit at 67, so it opens part 2.
        let text = format!("{}😀{}", "政".repeat(66), "政".repeat(5));
        assert_eq!(seg(&text), (Encoding::Ucs2, 73, 2));
    }

    #[test]
    fn chinese_carrier_counts_characters_with_the_signature() {
        let sig = Some("【市政府】");
        assert_eq!(carrier_cn(&"政".repeat(65), sig), 1);
        assert_eq!(carrier_cn(&"政".repeat(66), sig), 2, "66 + 5 = 71 > 70");
        assert_eq!(carrier_cn(&"政".repeat(129), sig), 2, "134 = 2 × 67");
        assert_eq!(carrier_cn(&"政".repeat(130), sig), 3);
        assert_eq!(carrier_cn("hello", None), 1);
    }
}
