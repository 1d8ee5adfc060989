//! The command line as a user runs it: real binary, shipped files and broken fixtures.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use crate::harness::{bin, repo};

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_passes_on_the_shipped_config_and_playlists() {
    let out = run(&["check", "-c", "config/marquee.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: config/marquee.toml and 7 playlists"));
}

#[test]
fn check_locates_every_broken_playlist_and_fails() {
    let out = run(&["check", "-c", "tests/fixtures/broken/marquee.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let dir = "tests/fixtures/broken/playlists";
    for want in [
        format!("{dir}/bad-cron.json:4:25: bad cron line \"0 8 * * FUNDAY\""),
        format!("{dir}/bad-json.json:4:3: expected `,` or `}}`"),
        format!("{dir}/empty-text.json:5:40: text for language \"zh\" is empty"),
        format!("{dir}/unknown-channel.json:3:37: unknown channel \"tram\""),
        format!("{dir}/unknown-field.json:4:10: unknown field `colour`"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("5 problem(s) found"), "{err}");
}

#[test]
fn bad_config_is_reported_with_every_problem_and_serve_refuses_to_start() {
    let out = run(&["check", "-c", "tests/fixtures/bad-config.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("tests/fixtures/bad-config.toml: mqtt.listen: 0.0.0.0:1883 is reachable from other machines"), "{err}");
    assert!(
        err.contains("schedule.timezone: unknown IANA zone \"Mars/Olympus\""),
        "{err}"
    );

    let out = run(&["serve", "-c", "tests/fixtures/bad-config.toml"]);
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    assert!(text(&out.stderr).contains("anonymous clients are refused"));

    let out = run(&["check", "-c", "tests/fixtures/nope.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("tests/fixtures/nope.toml: cannot read"));
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let out = run(&["schema", "playlist"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(repo().join("docs/playlist.schema.json")).unwrap();
    assert_eq!(
        text(&out.stdout),
        committed,
        "docs/playlist.schema.json is stale: run `marquee schema playlist > docs/playlist.schema.json`"
    );
}

#[test]
fn preview_explains_which_playlist_wins() {
    let out = run(&[
        "preview",
        "--channel",
        "subway",
        "--at",
        "2021-05-15T09:00:00+08:00",
        "--for",
        "2h",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("09:00 → 09:30  normal"), "{t}");
    assert!(t.contains("open-day-2021-transit (weight 2)"), "{t}");
    assert!(t.contains("replacing fallback"), "{t}");
    assert!(t.contains("5月15日 政务开放日"), "{t}");

    let out = run(&[
        "preview",
        "--channel",
        "lobby",
        "--at",
        "2021-05-15T09:10",
        "--for",
        "10m",
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seg = &v["segments"][0];
    assert_eq!(seg["tier"], "interrupt");
    assert_eq!(
        seg["playlists"],
        serde_json::json!(["open-day-2021-notice"])
    );
    let first_text = seg["items"][0]["text"]["en"].as_str().unwrap();
    assert!(first_text.contains("opening ceremony"), "{first_text}");

    let out = run(&["preview", "--channel", "tram", "--at", "now"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown channel \"tram\""));
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(&["keygen", "--out", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = std::fs::metadata(dir.path().join("signing.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let public = std::fs::read_to_string(dir.path().join("signing.pub")).unwrap();
    assert!(marquee::wire::PublicKey::from_hex(&public).is_ok());
    let again = run(&["keygen", "--out", d]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("--force"));
}

#[test]
fn shipped_agent_configs_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let keys = run(&["keygen", "--out", dir.path().to_str().unwrap()]);
    assert!(keys.status.success());
    let public = dir.path().join("signing.pub");
    for ch in ["lobby", "subway", "bus", "public"] {
        let src = std::fs::read_to_string(repo().join(format!("config/agent-{ch}.toml"))).unwrap();
        assert!(
            src.contains("public_key_file = \"data/signing.pub\""),
            "agent-{ch} pins the daemon's key"
        );
        // The report key where `marquee display add ID --out data/credentials` writes it.
        let id = src
            .lines()
            .find_map(|l| l.strip_prefix("id = \""))
            .unwrap()
            .trim_end_matches('"');
        let shipped_key = format!("\"data/credentials/{id}.report.key\"");
        assert!(
            src.contains(&format!("report_key_file = {shipped_key}")),
            "agent-{ch}"
        );
        let key = dir.path().join(format!("{id}.report.key"));
        marquee::keys::write_atomic(
            &key,
            marquee::wire::KeyPair::from_seed([7; 32])
                .secret_hex()
                .as_bytes(),
            0o600,
        )
        .unwrap();
        let path = dir.path().join(format!("agent-{ch}.toml"));
        std::fs::write(
            &path,
            src.replace(
                "\"data/signing.pub\"",
                &format!("{:?}", public.display().to_string()),
            )
            .replace(&shipped_key, &format!("{:?}", key.display().to_string())),
        )
        .unwrap();
        let cfg = marquee::agent::config::AgentConfig::load(&path)
            .unwrap_or_else(|e| panic!("agent-{ch}: {e}"));
        assert_eq!(cfg.channel, ch);
    }
}
