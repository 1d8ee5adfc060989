//! Phone numbers as people type them → E.164 (`+8613812345678`), validated by libphonenumber's
//! metadata (the `phonenumber` crate), with a configurable default region.
//!
//! What is read ([`clean`]): `+86 138…`, `0086138…`, `86138…`, a bare national number; spaces
//! (also the ideographic space U+3000 and no-break spaces), dashes, dots and brackets; full-width
//! digits and signs as a Chinese input method types them (`＋８６　１３８…`, the Unicode
//! "Halfwidth and Fullwidth Forms" block U+FF01–U+FF5E folded to ASCII); invisible marks pasted
//! with a number (zero-width space, byte-order mark, bidi marks); RFC 3966 `tel:`; Excel's text
//! markers (a leading apostrophe, `="…"`).
//!
//! What is refused, each with its own reason: an extension (`ext`, `x`, `#`, `转`, `分机`,
//! `;ext=`: an SMS cannot reach one), a number a spreadsheet already rounded into scientific
//! notation (`1.38001E+10`), and, for SMS ([`normalize_for_sms`]), every number type that cannot
//! take an SMS where the region's numbering plan tells them apart (it does for CN): fixed lines
//! (unless allowed), toll-free, premium, shared-cost, UAN (China's 400 numbers), VoIP, pager,
//! voicemail, short codes.

use phonenumber::country::Id;
use phonenumber::{Mode, Type};

/// Why a number was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing there.
    #[error("empty")]
    Empty,
    /// Not parseable as a phone number.
    #[error("not a phone number: {0}")]
    Unparseable(String),
    /// Parsed, but no such number exists in that country's numbering plan.
    #[error("not a valid number")]
    Invalid,
    /// The default region is not an ISO 3166 code.
    #[error("unknown region {0:?}")]
    Region(String),
    /// An extension behind the number.
    #[error("has an extension ({0}): an SMS cannot reach an extension")]
    Extension(String),
    /// The number was rounded by a spreadsheet (`1.38001E+10`).
    #[error(
        "written in scientific notation ({0}): the spreadsheet already rounded this number and its last digits are lost; format the column as text and export again"
    )]
    Scientific(String),
    /// A valid number of a type that cannot take an SMS (or not through these gateways).
    #[error("a {kind} number ({e164}) cannot receive SMS{hint}")]
    NotMobile {
        /// The number.
        e164: String,
        /// Its type, in words.
        kind: &'static str,
        /// What would allow it.
        hint: &'static str,
    },
}

/// A number as shown to someone who may not see it whole: every digit but the first five and
/// the last four becomes `*` (`+8613800138000` → `+86138****8000`); short values are masked
/// whole but for their last two digits.
pub fn mask(number: &str) -> String {
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let (keep_head, keep_tail) = if digits >= 11 { (5, 4) } else { (0, 2) };
    let mut seen = 0;
    number
        .chars()
        .map(|c| {
            if !c.is_ascii_digit() {
                return c;
            }
            seen += 1;
            if seen <= keep_head || seen > digits - keep_tail.min(digits) {
                c
            } else {
                '*'
            }
        })
        .collect()
}

/// Parses an ISO 3166-1 alpha-2 region (`CN`, `DE`).
pub fn region(code: &str) -> Result<Id, PhoneError> {
    code.trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| PhoneError::Region(code.to_owned()))
}

/// Folds what people type into plain digits and a leading `+`: full-width forms, separators,
/// invisible marks, `tel:`, Excel's text markers. Refuses extensions and scientific notation.
pub fn clean(raw: &str) -> Result<String, PhoneError> {
    // Full-width forms (U+FF01..U+FF5E) are ASCII shifted by 0xFEE0; U+3000 is a space.
    let folded: String = raw
        .chars()
        .map(|c| match c {
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
            '\u{3000}' | '\u{a0}' | '\u{2007}' | '\u{202f}' => ' ',
            // Hyphens and dashes a word processor or an input method puts in.
            '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{30fc}' => '-',
            _ => c,
        })
        .filter(|c| {
            !matches!(
                c,
                '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}' | '\u{feff}'
            )
        })
        .collect();
    let mut s = folded.trim();
    // Excel's text markers: '13800138000 and ="13800138000".
    s = s.strip_prefix('\'').unwrap_or(s).trim();
    if let Some(inner) = s.strip_prefix("=\"").and_then(|r| r.strip_suffix('"')) {
        s = inner.trim();
    }
    // RFC 3966: tel:+86-138-0013-8000;ext=12. (ASCII lowercase keeps every byte offset, so
    // positions found in it cut `s` on the same characters.)
    if s.to_ascii_lowercase().starts_with("tel:") {
        s = s[4..].trim();
    }
    let lower = s.to_ascii_lowercase();
    for marker in [
        ";ext=", "ext.", "ext", "x", "#", "转", "分机", ",", ";", "p", "w",
    ] {
        if let Some(at) = lower.find(marker)
            && lower[..at].chars().any(|c| c.is_ascii_digit())
            && lower[at + marker.len()..]
                .chars()
                .any(|c| c.is_ascii_digit())
        {
            return Err(PhoneError::Extension(s[at..].trim().to_owned()));
        }
    }
    // 1.38001E+10 (or 1.38E10): a number column a spreadsheet wrote as a float.
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some((mantissa, exp)) = compact.split_once(['e', 'E'])
        && !mantissa.is_empty()
        && mantissa.chars().all(|c| c.is_ascii_digit() || c == '.')
        && mantissa.chars().filter(|c| *c == '.').count() <= 1
        && !exp.is_empty()
        && exp
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit())
        && exp.trim_start_matches(['+', '-']).len() <= 3
    {
        return Err(PhoneError::Scientific(compact));
    }
    let out: String = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.' | '/' | '\t'))
        .collect();
    if out.is_empty() {
        return Err(PhoneError::Empty);
    }
    Ok(out)
}

/// Normalises `raw` to E.164, reading numbers without a country code in `default`. Any valid
/// number type is accepted (opt-out lists hold landlines too); for sending use
/// [`normalize_for_sms`].
pub fn normalize(raw: &str, default: Id) -> Result<String, PhoneError> {
    parse(raw, default).map(|n| n.format().mode(Mode::E164).to_string())
}

/// Normalises `raw` like [`normalize`] and refuses numbers that cannot receive an SMS: where the
/// numbering plan tells mobile numbers apart, only mobile and fixed-line-or-mobile numbers pass,
/// and fixed lines when `fixed_line` allows them (gateways that deliver SMS to landlines).
pub fn normalize_for_sms(raw: &str, default: Id, fixed_line: bool) -> Result<String, PhoneError> {
    let n = parse(raw, default)?;
    let e164 = n.format().mode(Mode::E164).to_string();
    let kind = match n.number_type(&phonenumber::metadata::DATABASE) {
        Type::Mobile | Type::FixedLineOrMobile | Type::PersonalNumber | Type::Unknown => {
            return Ok(e164);
        }
        Type::FixedLine if fixed_line => return Ok(e164),
        Type::FixedLine => "fixed-line",
        Type::TollFree => "toll-free",
        Type::PremiumRate => "premium-rate",
        Type::SharedCost => "shared-cost",
        Type::Uan => "universal access (UAN)",
        Type::Voip => "VoIP",
        Type::Pager => "pager",
        Type::Voicemail => "voicemail",
        Type::Emergency => "emergency",
        Type::ShortCode => "short code",
        _ => "non-mobile",
    };
    Err(PhoneError::NotMobile {
        e164,
        kind,
        hint: if kind == "fixed-line" {
            " (set fixed_line = true on gateways that deliver to landlines)"
        } else {
            ""
        },
    })
}

fn parse(raw: &str, default: Id) -> Result<phonenumber::PhoneNumber, PhoneError> {
    let mut s = clean(raw)?;
    if let Some(rest) = s.strip_prefix("00") {
        s = format!("+{rest}");
    }
    let parsed = if s.starts_with('+') {
        phonenumber::parse(None, &s)
    } else {
        phonenumber::parse(Some(default), &s)
    };
    let number = parsed.map_err(|e| PhoneError::Unparseable(e.to_string()))?;
    if !phonenumber::is_valid(&number) {
        // "86138…" without a plus: the default region's own country code written as if it
        // were national digits. Only that code: a mistyped national number must not turn into
        // a valid number abroad (CN 12125551234 is not New York).
        let own_code = phonenumber::metadata::DATABASE
            .by_id(default.as_ref())
            .map(|m| m.country_code().to_string());
        if !s.starts_with('+')
            && own_code.is_some_and(|c| s.starts_with(&c))
            && let Ok(n) = phonenumber::parse(None, format!("+{s}"))
            && phonenumber::is_valid(&n)
        {
            return Ok(n);
        }
        return Err(PhoneError::Invalid);
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_forms_normalise_to_e164() {
        for raw in [
            "+8613812345678",
            "+86 138 1234 5678",
            "008613812345678",
            "8613812345678",
            "13812345678",
            "138-1234-5678",
            "(+86) 138.1234.5678",
        ] {
            assert_eq!(
                normalize(raw, Id::CN),
                Ok("+8613812345678".to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn other_regions_and_default_region() {
        assert_eq!(
            normalize("+49 151 12345678", Id::CN),
            Ok("+4915112345678".into())
        );
        assert_eq!(
            normalize("0151 12345678", Id::DE),
            Ok("+4915112345678".into())
        );
        assert_eq!(region("de"), Ok(Id::DE));
        assert!(region("XX1").is_err());
    }

    #[test]
    fn rejects_say_why() {
        assert_eq!(normalize("  ", Id::CN), Err(PhoneError::Empty));
        assert!(matches!(
            normalize("hello", Id::CN),
            Err(PhoneError::Unparseable(_))
        ));
        assert_eq!(
            normalize("1381234567", Id::CN),
            Err(PhoneError::Invalid),
            "10 digits"
        );
        assert_eq!(normalize("+86123", Id::CN), Err(PhoneError::Invalid));
    }
    #[test]
    fn typed_as_people_type_them() {
        for raw in [
            "１３８００１３８０００",
            "＋８６　１３８　００１３　８０００",
            "（+86）138－0013－8000",
            "+86 138\u{2014}0013\u{2014}8000",
            "tel:+86-138-0013-8000",
            "'13800138000",
            "=\"13800138000\"",
            "\u{feff}\u{202a}13800138000\u{202c}",
            "\u{a0}138 0013 8000\u{3000}",
            "０086 138 0013 8000",
        ] {
            assert_eq!(
                normalize(raw, Id::CN),
                Ok("+8613800138000".to_string()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn extensions_and_rounded_numbers_say_so() {
        for raw in [
            "010-12345678 ext 12",
            "010-12345678x12",
            "010-12345678#12",
            "010-12345678转123",
            "010-12345678 分机 8",
            "tel:+86-10-12345678;ext=12",
        ] {
            assert!(
                matches!(normalize(raw, Id::CN), Err(PhoneError::Extension(_))),
                "{raw:?}: {:?}",
                normalize(raw, Id::CN)
            );
        }
        for raw in ["1.38001E+10", "1.38001e10", "1E+10", " 1.3800138E+10 "] {
            let e = normalize(raw, Id::CN).unwrap_err();
            assert!(matches!(e, PhoneError::Scientific(_)), "{raw:?}: {e:?}");
            assert!(e.to_string().contains("format the column as text"), "{e}");
        }
    }

    #[test]
    fn masks_keep_the_country_the_network_and_the_last_four() {
        assert_eq!(mask("+8613800138000"), "+86138****8000");
        assert_eq!(mask("13800138000"), "13800**8000");
        assert_eq!(mask("010-87654321"), "010-87**4321");
        assert_eq!(mask("12345"), "***45");
        assert_eq!(mask(""), "");
    }

    #[test]
    fn case_folding_letters_and_foreign_looking_typos_are_safe() {
        // KELVIN SIGN lowercases to a one-byte 'k', DOTTED CAPITAL I to two characters: neither
        // may shift where a marker is cut.
        for raw in ["\u{212A}1x2", "İ1x2", "\u{212A}\u{212A}tel:1", "ß1#2"] {
            let _ = normalize(raw, Id::CN);
        }
        assert!(matches!(
            normalize("\u{212A}1x2", Id::CN),
            Err(PhoneError::Extension(_))
        ));
        // Invalid in CN, valid as +1…: refused, not sent abroad.
        assert_eq!(normalize("12125551234", Id::CN), Err(PhoneError::Invalid));
        assert_eq!(normalize("12345678901", Id::CN), Err(PhoneError::Invalid));
        assert_eq!(
            normalize("8613800138000", Id::CN),
            Ok("+8613800138000".into())
        );
    }

    #[test]
    fn only_numbers_that_take_an_sms_are_sent_to() {
        let sms = |raw| normalize_for_sms(raw, Id::CN, false);
        assert_eq!(sms("13800138000"), Ok("+8613800138000".into()));
        assert_eq!(sms("+49 151 12345678"), Ok("+4915112345678".into()));
        // Beijing and Shenzhen landlines, a 400 service number, an 800 toll-free number.
        for (raw, kind) in [
            ("010-87654321", "fixed-line"),
            ("0755-86543210", "fixed-line"),
            ("400-810-8888", "shared-cost"),
            ("800-810-8888", "toll-free"),
        ] {
            match sms(raw) {
                Err(PhoneError::NotMobile { kind: k, .. }) => assert_eq!(k, kind, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
            // Opt-out lists still take them.
            assert!(normalize(raw, Id::CN).is_ok(), "{raw}");
        }
        assert_eq!(
            normalize_for_sms("010-87654321", Id::CN, true),
            Ok("+861087654321".into())
        );
        let e = sms("010-87654321").unwrap_err().to_string();
        assert!(
            e.contains("a fixed-line number (+861087654321) cannot receive SMS"),
            "{e}"
        );
    }
}
