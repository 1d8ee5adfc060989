//! A real Kannel on loopback: bearerbox with a `fake` SMSC, Kannel's fakesmsc client logging
//! every message it gets, and smsbox serving `/cgi-bin/sendsms`. All on free 127.0.0.1 ports,
//! stopped on drop. `scripts/test` installs the Debian packages `kannel` and `kannel-extras`.
//!
//! Self-contained: the integration tests and `marquee-bench sms-kannel` both include it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until `Some`, or panics after 20 s naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub const USER: &str = "marquee";
pub const PASS: &str = "kannelpass";
/// Numbers the only SMSC refuses (its `denied-prefix`): bearerbox finds no route, and smsbox
/// answers 403 "Not routable. Do not try again.".
pub const UNROUTABLE: &str = "+86199";

pub struct Kannel {
    pub dir: PathBuf,
    pub sendsms: String,
    admin: String,
    children: Vec<Child>,
}

/// Parts of one concatenated message: (from, to, reference, total).
type PartKey = (String, String, u16, u8);

/// One message as fakesmsc received it (concatenated parts joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub to: String,
    pub from: String,
    pub text: String,
    pub parts: usize,
}

fn unquote(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn utf16be(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    String::from_utf16_lossy(&units)
}

/// Kannel's configuration for one bearerbox, one smsbox, a fake SMSC and our sendsms user, all
/// on loopback ports, logging into `dir`.
fn write_config(dir: &Path, admin: u16, smsbox: u16, smsc: u16, sendsms: u16) -> PathBuf {
    let d = dir.display().to_string();
    let conf = format!(
        r#"group = core
admin-port = {admin}
admin-interface = 127.0.0.1
admin-password = adminpass
status-password = adminpass
admin-allow-ip = "127.0.0.1"
admin-deny-ip = "*.*.*.*"
smsbox-port = {smsbox}
smsbox-interface = 127.0.0.1
box-allow-ip = "127.0.0.1"
box-deny-ip = "*.*.*.*"
log-file = "{d}/bearerbox.log"
log-level = 1
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = fake
our-host = 127.0.0.1
port = {smsc}
connect-allow-ip = "127.0.0.1"
denied-prefix = "{UNROUTABLE}"

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
log-file = "{d}/smsbox.log"
log-level = 1

group = sendsms-user
username = {USER}
password = {PASS}
user-allow-ip = "127.0.0.1"
concatenation = true
max-messages = 10
"#
    );
    let conf_path = dir.join("kannel.conf");
    std::fs::write(&conf_path, conf).unwrap();
    conf_path
}

impl Kannel {
    /// Starts Kannel with its config and logs in `dir`.
    pub async fn start(dir: &Path) -> Kannel {
        for bin in [
            "/usr/sbin/bearerbox",
            "/usr/sbin/smsbox",
            "/usr/lib/kannel/test/fakesmsc",
        ] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install the Debian packages kannel and kannel-extras (scripts/test does)"
            );
        }
        let (admin, smsbox, smsc, sendsms) = (free_port(), free_port(), free_port(), free_port());
        let conf_path = write_config(dir, admin, smsbox, smsc, sendsms);
        let root = dir.to_path_buf();
        let spawn = |cmd: &mut Command, out: &str| {
            let f = std::fs::File::create(root.join(out)).unwrap();
            cmd.stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .current_dir(&root)
                .spawn()
                .unwrap()
        };
        let mut k = Kannel {
            sendsms: format!("http://127.0.0.1:{sendsms}/cgi-bin/sendsms"),
            admin: format!("http://127.0.0.1:{admin}/status.txt?password=adminpass"),
            children: Vec::new(),
            dir: dir.to_path_buf(),
        };
        k.children.push(spawn(
            Command::new("/usr/sbin/bearerbox")
                .args(["-v", "2"])
                .arg(&conf_path),
            "bearerbox.out",
        ));
        let client = marquee::http_client().build().unwrap();
        let admin_url = k.admin.clone();
        wait_for("bearerbox admin port", || async {
            client
                .get(&admin_url)
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await;
        wait_for("the fake SMSC port", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", smsc))
                .await
                .ok()
        })
        .await;
        // -m 0: send no MO messages; -v 0: log every MT ("Got message N: <…>").
        k.children.push(spawn(
            Command::new("/usr/lib/kannel/test/fakesmsc").args([
                "-H",
                "127.0.0.1",
                "-r",
                &smsc.to_string(),
                "-m",
                "0",
                "-v",
                "0",
                "0 0 text unused",
            ]),
            "fakesmsc.log",
        ));
        k.children.push(spawn(
            Command::new("/usr/sbin/smsbox")
                .args(["-v", "2"])
                .arg(&conf_path),
            "smsbox.out",
        ));
        k.wait_online(&client).await;
        k
    }

    /// Waits until the fake SMSC is online, smsbox connected and sendsms answering.
    async fn wait_online(&self, client: &reqwest::Client) {
        wait_for("the fake SMSC online and smsbox connected", || async {
            let s = client
                .get(&self.admin)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (s.contains("(online") && s.contains("smsbox:")).then_some(())
        })
        .await;
        wait_for("sendsms answering", || async {
            (client.get(&self.sendsms).send().await.ok()?.status() == 403).then_some(())
        })
        .await;
    }

    pub fn fakesmsc_log(&self) -> PathBuf {
        self.dir.join("fakesmsc.log")
    }

    /// Every message fakesmsc logged, concatenated parts joined (UDH 8- or 16-bit reference).
    pub fn received(&self) -> Vec<Received> {
        let log = std::fs::read(self.fakesmsc_log()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let mut out = Vec::new();
        let mut pending: std::collections::BTreeMap<PartKey, Vec<(u8, Vec<u8>)>> =
            Default::default();
        for line in log.lines() {
            let Some(i) = line.find("Got message ") else {
                continue;
            };
            let Some(start) = line[i..].find('<').map(|s| i + s + 1) else {
                continue;
            };
            let body = line[start..].trim_end().trim_end_matches('>');
            let mut f = body.splitn(4, ' ');
            let (from, to, kind) = (
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
                f.next().unwrap_or(""),
            );
            let rest = f.next().unwrap_or("");
            let (from, to) = (from.to_owned(), to.to_owned());
            match kind {
                "text" => out.push(Received {
                    from,
                    to,
                    text: rest.to_owned(),
                    parts: 1,
                }),
                "ucs-2" => out.push(Received {
                    from,
                    to,
                    text: utf16be(&unquote(rest)),
                    parts: 1,
                }),
                "udh" => {
                    let (udh, data) = rest.split_once(" data ").unwrap_or((rest, ""));
                    let udh = unquote(udh);
                    let data = unquote(data);
                    // IEI 0 (8-bit ref) or 8 (16-bit ref).
                    let (r, total, seq) = match (udh.get(1), udh.get(2)) {
                        (Some(0), Some(3)) => (u16::from(udh[3]), udh[4], udh[5]),
                        (Some(8), Some(4)) => {
                            (u16::from_be_bytes([udh[3], udh[4]]), udh[5], udh[6])
                        }
                        _ => (0, 1, 1),
                    };
                    let key = (from.clone(), to.clone(), r, total);
                    let parts = pending.entry(key.clone()).or_default();
                    parts.push((seq, data));
                    if parts.len() == usize::from(total) {
                        let mut parts = pending.remove(&key).unwrap();
                        parts.sort_by_key(|p| p.0);
                        let joined: Vec<u8> = parts.into_iter().flat_map(|p| p.1).collect();
                        // The UDH line does not say the coding: UCS-2 has NUL bytes or is not
                        // UTF-8.
                        let text = if joined.contains(&0) || std::str::from_utf8(&joined).is_err() {
                            utf16be(&joined)
                        } else {
                            String::from_utf8(joined).unwrap()
                        };
                        out.push(Received {
                            from,
                            to,
                            text,
                            parts: usize::from(total),
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }
}

impl Drop for Kannel {
    fn drop(&mut self) {
        // smsbox and fakesmsc first, then bearerbox.
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
