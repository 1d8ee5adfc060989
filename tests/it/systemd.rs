//! The shipped systemd unit and the notify protocol it relies on.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn shipped_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("systemd/marquee.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=marquee",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("marquee.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/marquee", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is missing: run the README's test command (scripts/test), which installs it");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}

#[test]
fn shipped_agent_unit_runs_the_agent_binary_and_passes_verify() {
    let unit = std::fs::read_to_string(repo().join("systemd/marquee-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/marquee-agent ") && unit.contains("Restart=always")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("marquee-agent.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/marquee-agent",
            env!("CARGO_BIN_EXE_marquee-agent"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is missing: run scripts/test, which installs it");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}

#[tokio::test]
async fn notifies_ready_pings_the_watchdog_and_says_stopping() {
    let site = Site::new(&format!("listen = \"127.0.0.1:{}\"", free_port()), "");
    let sock_path = site.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let d = Daemon::start_with_env(
        &site,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .await;
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let mut recv = |got: &mut Vec<String>| {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    eventually("READY=1 and two watchdog pings", || {
        recv(&mut got);
        let pings = got.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        (got.iter().any(|m| m.contains("READY=1")) && pings >= 2).then_some(())
    })
    .await;
    assert_eq!(d.stop().await, Some(0));
    eventually("STOPPING=1", || {
        recv(&mut got);
        got.iter().any(|m| m.contains("STOPPING=1")).then_some(())
    })
    .await;
}
