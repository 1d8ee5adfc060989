//! Phone numbers: anything a CSV may hold (`+86 138…`, `0086138…`, `86138…`, a bare 11-digit
//! Chinese mobile, spaces, dashes, brackets) → E.164 (`+8613812345678`), validated by
//! libphonenumber's metadata (the `phonenumber` crate), with a configurable default region.

use phonenumber::Mode;
use phonenumber::country::Id;

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
}

/// Parses an ISO 3166-1 alpha-2 region (`CN`, `DE`).
pub fn region(code: &str) -> Result<Id, PhoneError> {
    code.trim()
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| PhoneError::Region(code.to_owned()))
}

/// Normalises `raw` to E.164, reading numbers without a country code in `default`.
pub fn normalize(raw: &str, default: Id) -> Result<String, PhoneError> {
    let mut s: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.' | '\u{a0}' | '\t'))
        .collect();
    if s.is_empty() {
        return Err(PhoneError::Empty);
    }
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
        // "86138…" without a plus: the country code written as if it were national digits.
        if !s.starts_with('+')
            && let Ok(n) = phonenumber::parse(None, format!("+{s}"))
            && phonenumber::is_valid(&n)
        {
            return Ok(n.format().mode(Mode::E164).to_string());
        }
        return Err(PhoneError::Invalid);
    }
    Ok(number.format().mode(Mode::E164).to_string())
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
}
