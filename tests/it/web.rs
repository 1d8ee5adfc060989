//! The web renderer in a real headless Chromium (Debian's chromium + chromium-driver), driven
//! over the WebDriver HTTP protocol: the page shows the current slogan and follows the agent
//! (server-sent events, no reload), and an alert restyles it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use chrono::Duration;
use serde_json::{Value, json};

use crate::harness::*;

pub(crate) struct Driver {
    child: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        let port = free_port();
        // Its own process group, so that dropping the driver also ends the browsers it started.
        let child = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: run the README's test command (scripts/test), which installs chromium and chromium-driver");
        let base = format!("http://127.0.0.1:{port}");
        let http = marquee::http_client().build().unwrap();
        let start = std::time::Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(start.elapsed() < DEADLINE, "chromedriver did not start");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,720", format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Driver {
            child,
            base,
            session,
            _profile: profile,
        }
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = marquee::http_client()
            .build()
            .unwrap()
            .request(method.clone(), url);
        if method != reqwest::Method::GET {
            req = req.json(&body);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    pub(crate) async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Chooses `path` in the file input `css` (as a person picking a file does).
    pub(crate) async fn choose_file(&self, css: &str, path: &std::path::Path) {
        let el = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {el}"))
            .to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({"text": path.display().to_string()}),
        )
        .await;
    }

    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls the page state until `pred` holds.
    pub(crate) async fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = std::time::Instant::now();
        loop {
            let v = self
                .eval("return {text: document.getElementById('text').textContent, cls: document.body.className, item: document.body.dataset.item, updates: Number(document.body.dataset.updates), loaded: window.performance.timeOrigin};")
                .await;
            if pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; page: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Polls `script` (which returns a value) until `pred` holds.
    pub(crate) async fn until(
        &self,
        what: &str,
        script: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = std::time::Instant::now();
        loop {
            let v = self.eval(script).await;
            if pred(&v) {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; got {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Opens the console at `base` afresh and logs in with `token`.
    pub(crate) async fn log_in(&self, base: &str, token: &str) {
        self.go(&format!("{base}/")).await;
        self.eval(&format!(
            "sessionStorage.clear(); document.getElementById('token').value = '{token}'; document.getElementById('do-login').click();"
        ))
        .await;
        self.until(
            "the console",
            "return getComputedStyle(document.getElementById('app')).display",
            |v| v == "block",
        )
        .await;
    }

    /// Presses keys on the real keyboard (WebDriver actions): `\u{E007}` is Enter, `\u{E014}`
    /// the right arrow key, `\u{E004}` Tab (WebDriver §17.4.2).
    pub(crate) async fn keys(&self, keys: &str) {
        let mut acts = Vec::new();
        for k in keys.chars() {
            acts.push(json!({"type": "keyDown", "value": k.to_string()}));
            acts.push(json!({"type": "keyUp", "value": k.to_string()}));
        }
        self.call(
            reqwest::Method::POST,
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": acts}]}),
        )
        .await;
    }

    /// Sets the browser window's size (CSS pixels), e.g. a phone's width.
    pub(crate) async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Saves a screenshot as a test artifact under target/test-artifacts/.
    pub(crate) async fn screenshot(&self, name: &str) {
        let b64 = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let dir = repo().join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let png = decode_base64(
            b64.as_str()
                .unwrap_or_else(|| panic!("no screenshot: {b64}")),
        );
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        std::fs::write(dir.join(name), png).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Killing chromedriver alone leaves Chromium running: kill the whole group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = s.bytes().filter_map(val).collect();
    digits
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().fold(0u32, |acc, d| (acc << 6) | u32::from(*d)) << (6 * (4 - c.len()));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

#[tokio::test]
async fn web_renderer_in_chromium_follows_the_agent_and_shows_alerts() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    let d = Daemon::start(&site).await;
    let from = (chrono::Utc::now() - Duration::minutes(1)).to_rfc3339();
    let until = (chrono::Utc::now() + Duration::hours(1)).to_rfc3339();
    std::fs::write(
        site.playlist("test-lobby"),
        format!(
            r#"{{"id": "test-lobby", "tier": "interrupt", "targets": {{"channels": ["lobby"]}},
               "schedule": [{{"from": "{from}", "until": "{until}"}}],
               "items": [{{"id": "w1", "text": {{"zh": "网页一", "en": "web one"}}, "seconds": 1}},
                         {{"id": "w2", "text": {{"zh": "网页二", "en": "web two"}}, "seconds": 1}}]}}"#
        ),
    )
    .unwrap();
    let mut agent = AgentProc::start(
        &agent_config(&d, &site, "lobby-web-1", "lobby", port),
        &["--render", "web"],
    );
    let url = agent
        .wait_log("the web renderer address", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("web renderer listening"))
        })
        .await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let driver = Driver::start().await;
    driver.go(&url).await;
    let first = driver
        .wait("a slogan of the test playlist", |v| {
            v["text"]
                .as_str()
                .is_some_and(|t| t.contains("网页") || t.contains("web"))
        })
        .await;
    driver.screenshot("web-renderer-slogan.png").await;
    // It advances by itself: another item, pushed over SSE into the same page (no reload).
    let next = driver
        .wait("the page to advance", |v| {
            v["item"] != first["item"] && v["updates"].as_u64() > first["updates"].as_u64()
        })
        .await;
    assert_eq!(next["loaded"], first["loaded"], "the page was not reloaded");

    // An alert restyles the page at once.
    let sub = Sub::connect(port, "marquee/v1/alert/#").await;
    let topic = "marquee/v1/alert/all";
    let raised = alert(
        &site,
        topic,
        1,
        "t-1",
        "台风预警 TYPHOON",
        Duration::minutes(5),
    );
    sub.client
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, raised)
        .await
        .unwrap();
    let v = driver
        .wait("the alert on the page", |v| v["cls"] == "alert")
        .await;
    assert_eq!(v["text"], "台风预警 TYPHOON");
    driver.screenshot("web-renderer-alert.png").await;
}

pub(crate) fn contains(needle: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v.as_str().is_some_and(|s| s.contains(needle))
}

#[tokio::test]
async fn web_console_logs_in_edits_a_playlist_previews_and_handles_alerts() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n[[sms.gateways]]\nname = \"dry-run\"\nkind = \"dry-run\"\npath = {:?}\nmessages_per_second = 20\n",
        site.dir.path().join("data/sms.jsonl").display().to_string()
    ));
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let driver = Driver::start().await;
    driver.go(&format!("{}/", d.http)).await;

    // A wrong token is refused; the right one opens the console.
    driver.eval("document.getElementById('token').value = 'nope-0123456789abcdef'; document.getElementById('do-login').click();").await;
    driver
        .until(
            "the login error",
            "return document.getElementById('login-error').textContent",
            contains("not accepted"),
        )
        .await;
    driver.eval(&format!("document.getElementById('token').value = '{token}'; document.getElementById('do-login').click();")).await;
    driver
        .until(
            "the console",
            "return getComputedStyle(document.getElementById('app')).display",
            |v| v == "block",
        )
        .await;
    driver
        .until(
            "the channel preview",
            "return document.getElementById('preview-out').textContent",
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
    driver.screenshot("console-channels.png").await;

    // Playlists: open hotline-12345, break it (inline error), fix it (impact), save.
    driver.eval("document.querySelector('[data-tab=playlists]').click(); const s = document.getElementById('playlist'); s.value = 'hotline-12345'; s.dispatchEvent(new Event('change'));").await;
    driver
        .until(
            "the playlist source",
            "return document.getElementById('source').value",
            contains("12345"),
        )
        .await;
    driver.eval("const a = document.getElementById('source'); a.value = a.value.replace('\"weight\": 1,', '\"weight\": 1, \"colour\": 2,'); document.getElementById('check').click();").await;
    driver
        .until(
            "the inline error",
            "return document.getElementById('check-out').textContent",
            contains("unknown field `colour`"),
        )
        .await;
    driver.screenshot("console-playlist-error.png").await;
    driver.eval("const a = document.getElementById('source'); a.value = a.value.replace(' \"colour\": 2,', '').replace('全天候为您服务', '控制台修改'); document.getElementById('check').click();").await;
    driver
        .until(
            "the change impact",
            "return document.getElementById('check-out').textContent",
            contains("channel lobby"),
        )
        .await;
    driver
        .eval("document.getElementById('save').click();")
        .await;
    driver
        .until(
            "saved",
            "return document.getElementById('check-out').textContent",
            contains("Saved"),
        )
        .await;
    assert!(
        std::fs::read_to_string(site.playlist("hotline-12345"))
            .unwrap()
            .contains("控制台修改")
    );

    // The preview shows the change (the hotline runs 06:00-23:00 Shanghai time; look at noon).
    driver.eval("document.querySelector('[data-tab=channels]').click(); document.getElementById('lang').click(); const c = document.getElementById('channel'); c.value = 'lobby'; document.getElementById('at').value = '2030-01-02T12:00'; document.getElementById('preview').click();").await;
    // The daemon reloads the saved file after its debounce: ask again until it shows.
    driver
        .until(
            "the edited slogan in the preview",
            "document.getElementById('preview').click(); return document.getElementById('preview-out').textContent",
            contains("控制台修改"),
        )
        .await;
    driver.screenshot("console-preview-zh.png").await;

    // Alerts: raise, see it listed, clear it.
    driver.eval("document.querySelector('[data-tab=alerts]').click(); document.getElementById('alert-en').value = 'Console drill'; document.getElementById('raise').click();").await;
    driver
        .until(
            "the raised alert",
            "return document.getElementById('alerts').textContent",
            contains("Console drill"),
        )
        .await;
    let (_, list) = d.get("/api/v1/alerts", Some(&token)).await;
    assert_eq!(list["alerts"][0]["text"]["en"], "Console drill");
    driver.screenshot("console-alerts.png").await;
    driver
        .eval("document.querySelector('[data-clear]').click();")
        .await;
    driver
        .until(
            "the cleared alert",
            "return document.getElementById('alerts').textContent",
            contains("已撤销"),
        )
        .await;
    let (_, list) = d.get("/api/v1/alerts", Some(&token)).await;
    assert!(list["alerts"][0]["cleared_at"].is_string());
    let (_, audit) = d.get("/api/v1/audit", Some(&token)).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["playlist.put", "alert.raise", "alert.clear"]);

    // SMS: create a draft with its estimate and a rejected row, start it, watch it finish.
    driver.eval("document.querySelector('[data-tab=campaigns]').click(); document.getElementById('c-name').value = '开放日短信'; document.getElementById('c-text').value = '{{name}}您好，欢迎参加政务开放日'; document.getElementById('c-csv').value = 'number,name\\n13800138000,张三\\n13900139000,李四\\n12,坏号码\\n'; document.getElementById('c-create').click();").await;
    driver
        .until(
            "the estimate",
            "return document.getElementById('c-out').textContent",
            contains("2 位收件人 · 2 条短信 (GSM-7 0, UCS-2 2)"),
        )
        .await;
    let out = driver
        .eval("return document.getElementById('c-out').textContent")
        .await;
    assert!(out.as_str().unwrap().contains("1 行被拒绝"), "{out}");
    driver
        .until(
            "the draft in the list",
            "return document.getElementById('campaigns').textContent",
            contains("草稿"),
        )
        .await;
    driver
        .eval("document.querySelector('[data-act=start]').click();")
        .await;
    driver
        .until(
            "the campaign done, both delivered",
            "return document.getElementById('campaigns').textContent",
            |v| {
                v.as_str()
                    .is_some_and(|s| s.contains("已完成") && s.contains("0 / 2 / 0"))
            },
        )
        .await;
    driver.screenshot("console-sms.png").await;
    let sent = std::fs::read_to_string(site.dir.path().join("data/sms.jsonl")).unwrap();
    assert_eq!(sent.lines().count(), 2);
    assert!(sent.contains("张三您好，欢迎参加政务开放日"), "{sent}");

    // The same from a workbook the office saved: chosen in the file picker, uploaded as it is;
    // the landline in it is a rejected row, listed with its reason and downloadable.
    let xlsx = site.dir.path().join("名单.xlsx");
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for (r, (phone, name)) in [
        ("手机", "姓名"),
        ("13700137000", "王五"),
        ("010-87654321", "座机"),
    ]
    .iter()
    .enumerate()
    {
        ws.write(r as u32, 0, *phone).unwrap();
        ws.write(r as u32, 1, *name).unwrap();
    }
    wb.save(&xlsx).unwrap();
    driver.choose_file("#c-file", &xlsx).await;
    driver.eval("document.getElementById('c-name').value = '名单文件'; document.getElementById('c-text').value = '{{姓名}}您好'; document.getElementById('c-create').click();").await;
    driver
        .until(
            "the workbook's estimate",
            "return document.getElementById('c-out').textContent",
            contains("1 位收件人"),
        )
        .await;
    let rejects = driver
        .eval("return document.getElementById('c-rejects').textContent")
        .await;
    assert!(
        rejects
            .as_str()
            .is_some_and(|s| s.contains("010-87654321") && s.contains("fixed-line")),
        "{rejects}"
    );
    let button = driver
        .eval("return document.querySelector('[data-rejects]').textContent")
        .await;
    assert_eq!(button, "下载被拒绝的行（CSV）");
    driver.screenshot("console-sms-upload.png").await;
    // Started, it finishes; its detail shows the states and a per-minute chart.
    driver.resize(1280, 1800).await;
    driver
        .eval("document.querySelector('[data-act=start]').click();")
        .await;
    driver
        .until(
            "the workbook's campaign done",
            "return [...document.querySelectorAll('#campaigns tr')].filter(r => r.textContent.includes('名单文件') && r.dataset.status === 'done' && r.textContent.includes('0 / 1 / 0')).length",
            |v| v == 1,
        )
        .await;
    driver
        .until(
            "its per-minute chart",
            "return document.querySelector('#campaign-chart')?.dataset.minutes",
            |v| {
                v.as_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 1))
            },
        )
        .await;
    let delivered = driver
        .eval("return document.querySelector('#campaign-detail .card[data-state=delivered] b')?.textContent")
        .await;
    assert_eq!(delivered, "1");
    driver.screenshot("console-sms-progress.png").await;
    assert_eq!(
        std::fs::read_to_string(site.dir.path().join("data/sms.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
}

#[tokio::test]
async fn web_console_proposes_a_playlist_and_a_second_person_publishes_it() {
    const EDITOR: &str = "editor-review-0123456789";
    const APPROVER: &str = "approver-review-0123456789";
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config(
        "[approval]\nplaylists = true\n\
         [[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_env = \"IT_WEB_ED\"\n\
         [[auth.tokens]]\nname = \"supervisor\"\nrole = \"approver\"\ntoken_env = \"IT_WEB_AP\"\n",
    );
    let d = Daemon::start_with_env(&site, &[("IT_WEB_ED", EDITOR), ("IT_WEB_AP", APPROVER)]).await;
    let driver = Driver::start().await;
    driver.log_in(&d.http, EDITOR).await;
    // The editor saves a change: it is proposed, not written.
    driver.eval("document.querySelector('[data-tab=playlists]').click(); const s = document.getElementById('playlist'); s.value = 'hotline-12345'; s.dispatchEvent(new Event('change'));").await;
    driver
        .until(
            "the playlist source",
            "return document.getElementById('source').value",
            contains("12345"),
        )
        .await;
    driver.eval("const a = document.getElementById('source'); a.value = a.value.replace('全天候为您服务', '审核后发布'); document.getElementById('save').click();").await;
    driver
        .until(
            "proposed",
            "return document.getElementById('check-out').textContent",
            contains("Proposed for review"),
        )
        .await;
    driver
        .until(
            "the pending badge",
            "return document.getElementById('pending-badge').textContent",
            |v| v == "1",
        )
        .await;
    driver.screenshot("console-review-proposed.png").await;
    let file = site.playlist("hotline-12345");
    assert!(
        !std::fs::read_to_string(&file)
            .unwrap()
            .contains("审核后发布")
    );
    // The approver logs in (a fresh page, no token kept) and publishes it from the list.
    driver.log_in(&d.http, APPROVER).await;
    driver
        .eval("document.querySelector('[data-tab=playlists]').click();")
        .await;
    driver
        .until(
            "the proposal listed",
            "return document.getElementById('proposals').textContent",
            contains("office"),
        )
        .await;
    driver.screenshot("console-review-pending.png").await;
    driver
        .eval("document.querySelector('[data-decision=publish]').click();")
        .await;
    driver
        .until(
            "the list emptied",
            "return document.getElementById('pending-badge').textContent",
            |v| v == "",
        )
        .await;
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&file)
        .unwrap()
        .contains("审核后发布")
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the published playlist was not written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    driver.screenshot("console-review-published.png").await;
}
