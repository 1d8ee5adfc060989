//! Property-based fuzzing of what reads outside input: the CAP parser and decision, the list
//! reader (CSV/TXT in any encoding, XLSX) and the phone number normaliser. Each target feeds
//! arbitrary bytes and mutations of real-shaped inputs (the CAP field corpus, the office lists)
//! and fails on a panic, naming the input. The normal suite runs a short pass; a long run is
//! `MARQUEE_FUZZ_SECS=600 cargo test --release --lib fuzz -- --ignored` (see `docs/cap.md`).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A mutation of an input: at a position, one of flip, insert, delete, duplicate, truncate.
fn mutations() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), 0u8..5, any::<u8>()), 0..12)
}

fn mutate(base: &[u8], ops: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(at, op, byte) in ops {
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let i = at % b.len();
        match op {
            0 => b[i] ^= byte | 1,
            1 => b.insert(i, byte),
            2 => {
                b.remove(i);
            }
            3 => {
                let end = (i + 1 + usize::from(byte)).min(b.len());
                let chunk = b[i..end].to_vec();
                b.splice(i..i, chunk);
            }
            _ => b.truncate(i),
        }
    }
    b
}

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e != "md"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Runs `check` on inputs from `strategy` for `budget`, or for `cases` when `budget` is none.
fn run<S: Strategy>(
    strategy: S,
    budget: Option<Duration>,
    cases: u32,
    check: impl Fn(S::Value) + Copy,
) where
    S::Value: std::fmt::Debug,
{
    let start = Instant::now();
    let mut round = 0u64;
    loop {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: if budget.is_some() { 2_000 } else { cases },
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        );
        if let Err(e) = runner.run(&strategy, |v| {
            check(v);
            Ok(())
        }) {
            panic!("fuzz failure: {e}");
        }
        round += 1;
        match budget {
            Some(b) if start.elapsed() < b => continue,
            _ => break,
        }
    }
}

fn cap_target(budget: Option<Duration>, cases: u32) {
    let docs = corpus("tests/fixtures/cap/field");
    let n = docs.len();
    let rules = crate::domain::cap::CapRules {
        policy: crate::domain::cap::default_policy(),
        areas: vec![],
        default_scope: Some(crate::domain::cap::Scope::All),
        accept_test: true,
        start_at_onset: false,
        located: vec![("d".into(), 23.05, 113.32)],
        geo_miss_scope: None,
    };
    let now = chrono::Utc::now();
    let check = |xml: &[u8]| {
        let text = String::from_utf8_lossy(xml);
        if let Ok(a) = crate::domain::cap::parse(&text) {
            let _ = crate::domain::cap::decide(&a, &rules, now);
        }
    };
    run(
        (0..n, mutations()),
        budget,
        cases,
        |(i, ops): (usize, Vec<(usize, u8, u8)>)| check(&mutate(&docs[i], &ops)),
    );
    run(
        proptest::collection::vec(any::<u8>(), 0..512),
        budget.map(|b| b / 4),
        cases,
        |b: Vec<u8>| check(&b),
    );
}

fn lists_target(budget: Option<Duration>, cases: u32) {
    let mut inputs = corpus("tests/fixtures/lists");
    let mut wb = rust_xlsxwriter::Workbook::new();
    let s = wb.add_worksheet();
    s.write(0, 0, "手机").unwrap();
    s.write(1, 0, 13800138000.0).unwrap();
    s.write(2, 0, "＋８６ １３９ ００１３ ９０００").unwrap();
    inputs.push(wb.save_to_buffer().unwrap());
    let n = inputs.len();
    let read = |bytes: &[u8]| {
        let _ = crate::lists::read_bytes(bytes, &crate::lists::ListOptions::default(), |_, r| {
            for c in &r.cells {
                let _ =
                    crate::domain::phone::normalize_for_sms(c, phonenumber::country::Id::CN, false);
            }
        });
    };
    run(
        (0..n, mutations()),
        budget,
        cases,
        |(i, ops): (usize, Vec<(usize, u8, u8)>)| read(&mutate(&inputs[i], &ops)),
    );
    run("\\PC{0,40}", budget.map(|b| b / 4), cases, |s: String| {
        let _ = crate::domain::phone::normalize(&s, phonenumber::country::Id::CN);
    });
}

fn long_budget() -> Option<Duration> {
    let secs = std::env::var("MARQUEE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Some(Duration::from_secs(secs))
}

#[test]
fn cap_parser_and_decision_never_panic() {
    cap_target(None, 300);
}

#[test]
fn list_reader_and_number_normaliser_never_panic() {
    lists_target(None, 300);
}

#[test]
#[ignore = "long fuzz run: MARQUEE_FUZZ_SECS (default 600)"]
fn fuzz_cap_long() {
    cap_target(long_budget(), 0);
}

#[test]
#[ignore = "long fuzz run: MARQUEE_FUZZ_SECS (default 600)"]
fn fuzz_lists_long() {
    lists_target(long_budget(), 0);
}
