//! Lists and playlists as offices save them, through the real daemon: uploads of CSV in every
//! encoding and delimiter Excel and WPS write, XLSX written by a spreadsheet writer, numbers as
//! people type them, the rejected-rows report and its download, opt-out imports, the upload
//! limit, and playlists saved by Notepad. Inputs from the field are in `tests/fixtures/lists/`.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{DEADLINE, Daemon, Site, eventually, free_port, repo};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/lists").join(name)).unwrap()
}

/// A site with a dry-run gateway (every message sent is a line in `data/sms.jsonl`).
fn site(extra_sms: &str) -> Site {
    let site = Site::new(
        &format!("embedded = true\nlisten = \"127.0.0.1:{}\"", free_port()),
        "",
    );
    site.append_config(&format!(
        "[sms]\nsender = \"12345\"\n{extra_sms}\n[[sms.gateways]]\nname = \"dry\"\nkind = \"dry-run\"\npath = {:?}\nmessages_per_second = 200\n",
        site.dir.path().join("data/sms.jsonl").display().to_string()
    ));
    site
}

async fn post(d: &Daemon, token: &str, path: &str, body: Value) -> (u16, Value) {
    d.send(Method::POST, path, Some(token), Some(body)).await
}

async fn upload(d: &Daemon, token: &str, bytes: Vec<u8>, query: &str) -> (u16, Value) {
    let resp = marquee::http_client()
        .build()
        .unwrap()
        .post(format!("{}/api/v1/uploads{query}", d.http))
        .bearer_auth(token)
        .header("Content-Type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn campaign_from(d: &Daemon, token: &str, bytes: Vec<u8>, text: &str) -> Value {
    let (status, up) = upload(d, token, bytes, "").await;
    assert_eq!(status, 201, "{up}");
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/campaigns",
            Some(token),
            Some(json!({"name": "list", "text": text, "recipients_upload": up["upload"]})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    v
}

fn rejects(v: &Value) -> Vec<(i64, String)> {
    v["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_i64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The (to, text) of every message the dry-run gateway sent.
fn sent(site: &Site) -> Vec<(String, String)> {
    std::fs::read_to_string(site.dir.path().join("data/sms.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["to"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_lists_import_with_the_exact_recipients_and_rejects() {
    let site = site("");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();

    // Excel with `;` as separator: sniffed, described by the upload.
    let (status, up) = upload(&d, &token, fixture("recipients-semicolon.csv"), "").await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(
        (&up["delimiter"], &up["rows"], &up["number_column"]),
        (&json!(";"), &json!(2), &json!("phone"))
    );
    // The same text in the JSON field is read the same way.
    let semicolon = String::from_utf8(fixture("recipients-semicolon.csv")).unwrap();
    let (status, v) = post(
        &d,
        &token,
        "/api/v1/campaigns",
        json!({"name": "semi", "text": "{{name}}", "recipients_csv": semicolon}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["estimate"]["recipients"], 2, "{v}");

    // The last row without its trailing empty cell: all 21.
    let v = campaign_from(
        &d,
        &token,
        fixture("recipients-short-row.csv"),
        "Hi {{name}}",
    )
    .await;
    assert_eq!(v["estimate"]["recipients"], 21, "{v}");
    assert!(rejects(&v).is_empty(), "{v}");

    // GBK without a BOM, with `{{姓名}}` filled; sent end to end.
    let v = campaign_from(
        &d,
        &token,
        fixture("recipients-gbk.csv"),
        "{{姓名}}您好，政务开放日欢迎您",
    )
    .await;
    assert_eq!(v["estimate"]["recipients"], 2, "{v}");
    let id = v["id"].as_i64().unwrap();
    let (status, started) = d
        .send(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/start"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{started}");
    let got = eventually("the GBK list sent", || {
        let s = sent(&site);
        (s.len() == 2).then_some(s)
    })
    .await;
    let mut got = got;
    got.sort();
    assert_eq!(
        got,
        [
            (
                "+8613800138000".to_owned(),
                "张三您好，政务开放日欢迎您".to_owned()
            ),
            (
                "+8613900139000".to_owned(),
                "李四您好，政务开放日欢迎您".to_owned()
            ),
        ]
    );

    // Numbers as people type them, landlines and service numbers, rounded and extension numbers.
    let v = campaign_from(&d, &token, fixture("office-mixed.csv"), "{{姓名}}").await;
    assert_eq!(v["estimate"]["recipients"], 5, "{v}");
    assert_eq!(
        v["estimate"]["messages"], 5,
        "the estimate counts only what will be sent"
    );
    let r = rejects(&v);
    let rows: Vec<i64> = r.iter().map(|(row, _)| *row).collect();
    assert_eq!(rows, [3, 4, 5, 8, 9], "{r:?}");
    assert!(
        r[0].1.contains("a fixed-line number (+861087654321)"),
        "{r:?}"
    );
    assert!(
        r[1].1.contains("a fixed-line number (+8675586543210)"),
        "{r:?}"
    );
    assert!(r[2].1.contains("shared-cost"), "{r:?}");
    assert!(
        r[3].1.contains("scientific notation (1.38001E+10)"),
        "{r:?}"
    );
    assert!(r[4].1.contains("extension (转 12)"), "{r:?}");
    let id = v["id"].as_i64().unwrap();
    let (status, m) = d
        .get(&format!("/api/v1/campaigns/{id}/messages"), Some(&token))
        .await;
    assert_eq!(status, 200, "{m}");
    let mut numbers: Vec<&str> = m["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["recipient"].as_str().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        [
            "+8613400134000",
            "+8613500135000",
            "+8613600136000",
            "+8613700137000",
            "+8613900139000"
        ]
    );

    // The rejected rows as a CSV the office can open, fix and upload again.
    let csv = marquee::http_client()
        .build()
        .unwrap()
        .get(format!("{}/api/v1/campaigns/{id}/rejects", d.http))
        .bearer_auth(&token)
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(csv.starts_with(b"\xef\xbb\xbf"), "a BOM for Excel");
    let text = String::from_utf8(csv[3..].to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "手机号码,姓名,reason,row");
    assert!(lines[1].starts_with("010-87654321,北京座机,"), "{text}");
    assert!(lines[1].ends_with(",3"), "{text}");
    assert_eq!(lines.len(), 6, "{text}");
    // Fixed (the landlines replaced by mobiles) and uploaded again.
    let fixed = text
        .replace("010-87654321", "13300133000")
        .replace("0755-86543210", "13200132000");
    let v = campaign_from(&d, &token, fixed.into_bytes(), "{{姓名}}").await;
    assert_eq!(v["estimate"]["recipients"], 2, "{v}");
    assert_eq!(rejects(&v).len(), 3, "{v}");

    // An upload is used once.
    let (_, up) = upload(&d, &token, fixture("recipients-semicolon.csv"), "").await;
    let body = json!({"name": "x", "text": "x", "recipients_upload": up["upload"]});
    let (status, _) = d
        .send(
            Method::POST,
            "/api/v1/campaigns",
            Some(&token),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 201);
    let (status, e) = d
        .send(Method::POST, "/api/v1/campaigns", Some(&token), Some(body))
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["field"], "recipients_upload", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workbooks_utf16_text_and_optout_imports() {
    let site = site("");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();

    // An XLSX as Excel or WPS writes it: numbers as numeric cells, a second sheet.
    let mut wb = rust_xlsxwriter::Workbook::new();
    let s = wb.add_worksheet();
    s.set_name("名单").unwrap();
    for (c, h) in ["序号", "手机", "姓名"].iter().enumerate() {
        s.write(0, c as u16, *h).unwrap();
    }
    s.write(1, 0, 1).unwrap();
    s.write(1, 1, 13800138000.0).unwrap();
    s.write(1, 2, "张三").unwrap();
    s.write(2, 0, 2).unwrap();
    s.write(2, 1, "+86 139 0013 9000").unwrap();
    s.write(2, 2, "李四").unwrap();
    s.write(3, 0, 3).unwrap();
    s.write(3, 1, 1087654321.0).unwrap();
    s.write(3, 2, "座机").unwrap();
    let o = wb.add_worksheet();
    o.set_name("退订").unwrap();
    o.write(0, 0, "mobile").unwrap();
    o.write(1, 0, 13700137000.0).unwrap();
    o.write(2, 0, "010-87654321").unwrap();
    let xlsx = wb.save_to_buffer().unwrap();
    let (status, up) = upload(&d, &token, xlsx.clone(), "").await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(
        (
            &up["format"],
            &up["sheet"],
            &up["rows"],
            &up["number_column"]
        ),
        (&json!("xlsx"), &json!("名单"), &json!(3), &json!("手机"))
    );
    let (status, v) = d
        .send(
            Method::POST,
            "/api/v1/campaigns",
            Some(&token),
            Some(
                json!({"name": "xlsx", "text": "{{姓名}}您好", "recipients_upload": up["upload"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["estimate"]["recipients"], 2, "{v}");
    assert_eq!(rejects(&v).len(), 1, "{v}");
    assert_eq!(v["rejects"][0]["row"], 3, "{v}");
    assert_eq!(v["rejects"][0]["value"], "1087654321", "{v}");

    // Excel's "Unicode text": UTF-16 LE with a BOM, tab-separated.
    let text = "phone\tname\r\n13600136000\t王五\r\n１３５００１３５０００\t赵六\r\n";
    let utf16: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let (status, up) = upload(&d, &token, utf16, "").await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(
        (&up["encoding"], &up["delimiter"]),
        (&json!("UTF-16LE"), &json!("\t"))
    );
    let (status, v) = post(
        &d,
        &token,
        "/api/v1/campaigns",
        json!({"name": "utf16", "text": "{{name}}", "recipients_upload": up["upload"]}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["estimate"]["recipients"], 2, "{v}");

    // Opt-outs from a named sheet (a landline may be opted out) and from a GBK file.
    let (_, up) = upload(&d, &token, xlsx, "?sheet=%E9%80%80%E8%AE%A2").await;
    assert_eq!(up["sheet"], "退订", "{up}");
    let (status, v) = post(
        &d,
        &token,
        "/api/v1/optouts",
        json!({"upload": up["upload"], "sheet": "退订"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["added"], 2, "{v}");
    let (_, up) = upload(&d, &token, fixture("recipients-gbk.csv"), "").await;
    let (status, v) = post(
        &d,
        &token,
        "/api/v1/optouts",
        json!({"upload": up["upload"], "reason": "回复TD"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["added"], 2, "{v}");
    let (_, list) = d.get("/api/v1/optouts", Some(&token)).await;
    let mut numbers: Vec<&str> = list["optouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["number"].as_str().unwrap())
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        [
            "+861087654321",
            "+8613700137000",
            "+8613800138000",
            "+8613900139000"
        ]
    );

    // A list with no number column names what it found.
    let (status, up) = upload(&d, &token, "name;city\nx;y\n".into(), "").await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(up["number_column"], Value::Null);
    let (status, e) = post(
        &d,
        &token,
        "/api/v1/campaigns",
        json!({"name": "x", "text": "x", "recipients_upload": up["upload"]}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let m = e["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("\"name\", \"city\"") && m.contains("';' separated"),
        "{m}"
    );
    // An Excel 97-2003 file says how to save it; a broken workbook is a 400, not a crash.
    let (status, e) = upload(
        &d,
        &token,
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest".to_vec(),
        "",
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("save it as .xlsx"),
        "{e}"
    );
    let (status, e) = upload(&d, &token, b"PK\x03\x04not a zip".to_vec(), "").await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a workbook"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_gets_413_naming_it() {
    let site = site("max_upload_mib = 1");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let mut big = b"number\n".to_vec();
    while big.len() <= 1 << 20 {
        big.extend_from_slice(b"13800138000\n");
    }
    let (status, e) = upload(&d, &token, big, "").await;
    assert_eq!(status, 413, "{e}");
    let m = e["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("1 MiB") && m.contains("sms.max_upload_mib"),
        "{m}"
    );
    // Nothing is left behind, and the daemon goes on.
    let left: Vec<_> = std::fs::read_dir(site.dir.path().join("data/uploads"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let (status, _) = upload(&d, &token, fixture("recipients-semicolon.csv"), "").await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlists_saved_on_windows_go_live_and_bad_encodings_are_named() {
    let site = site("");
    std::fs::write(
        site.playlist("bom-notepad"),
        fixture("playlist-utf8-bom.json"),
    )
    .unwrap();
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let (status, v) = d.get("/api/v1/playlists/bom-notepad", Some(&token)).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["errors"].as_array().is_none_or(|e| e.is_empty()),
        "the BOM file is live: {v}"
    );
    assert_eq!(v["playlist"]["id"], "bom-notepad", "{v}");
    let (_, preview) = d
        .get("/api/v1/preview?channel=lobby&for=24h", Some(&token))
        .await;
    assert!(preview.to_string().contains("bom-notepad"), "{preview}");

    // Through the API: a BOM is fine; UTF-16 and ANSI/GBK bytes are named with where they are.
    let put = |body: Vec<u8>| {
        let url = format!("{}/api/v1/playlists/bom-notepad", d.http);
        let token = token.clone();
        async move {
            let r = marquee::http_client()
                .build()
                .unwrap()
                .put(url)
                .bearer_auth(token)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let src = String::from_utf8(fixture("playlist-utf8-bom.json")).unwrap();
    let (status, v) = put(fixture("playlist-utf8-bom.json")).await;
    assert_eq!(status, 200, "{v}");
    let body = src.trim_start_matches('\u{feff}');
    let utf16: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain(body.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let (status, v) = put(utf16).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-16 LE (it starts with the byte-order mark FF FE)"),
        "{v}"
    );
    let (gbk, _, _) = encoding_rs::GBK.encode(body);
    let (status, v) = put(gbk.into_owned()).await;
    assert_eq!(status, 400, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("not UTF-8: byte 0x") && m.contains("at byte offset"),
        "{m}"
    );
    assert_eq!(v["errors"][0]["line"], 13, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uploads_list_files_as_saved_and_writes_the_rejects_to_fix() {
    let site = site("");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let cli = |args: &[&str]| d.cli(&token, args);
    let list = |name: &str| {
        repo()
            .join("tests/fixtures/lists")
            .join(name)
            .display()
            .to_string()
    };
    // A GBK file, as Chinese Excel saves it, straight from disk.
    let out = cli(&[
        "campaign",
        "create",
        "--name",
        "gbk",
        "--text",
        "{{姓名}}您好",
        "--recipients",
        &list("recipients-gbk.csv"),
    ]);
    assert!(out.contains("2 recipients"), "{out}");
    // The mixed office list: five recipients, five rejected rows, written to a file to fix.
    let out = cli(&[
        "campaign",
        "create",
        "--name",
        "mixed",
        "--text",
        "{{姓名}}",
        "--recipients",
        &list("office-mixed.csv"),
    ]);
    assert!(
        out.contains("5 recipients") && out.contains("5 row(s) rejected"),
        "{out}"
    );
    assert!(out.contains("marquee campaign rejects 2"), "{out}");
    let fix = site.dir.path().join("fix.csv");
    cli(&[
        "campaign",
        "rejects",
        "2",
        "--out",
        &fix.display().to_string(),
    ]);
    let text = std::fs::read_to_string(&fix).unwrap();
    assert!(
        text.starts_with("\u{feff}手机号码,姓名,reason,row"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 6, "{text}");
    // Opt-outs from a workbook's named sheet.
    let xlsx = site.dir.path().join("退订.xlsx");
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("TD").unwrap();
    ws.write(0, 0, "phone").unwrap();
    ws.write(1, 0, 13700137000.0).unwrap();
    wb.save(&xlsx).unwrap();
    let out = cli(&[
        "optout",
        "import",
        &xlsx.display().to_string(),
        "--sheet",
        "TD",
        "--reason",
        "TD",
    ]);
    assert!(out.starts_with("1 added"), "{out}");
}

/// Exports open safely in a spreadsheet: text that came from outside and starts like a formula
/// gets a leading `'`; phone numbers stay as they are.
#[tokio::test]
async fn csv_exports_are_formula_safe() {
    let site = site("");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let (s, v) = d
        .send(
            Method::POST,
            "/api/v1/campaigns",
            Some(&token),
            Some(
                json!({"name": "x", "text": "=HYPERLINK(\"http://evil.example\",\"{{n}}\")",
                        "recipients": [{"number": "13800138000", "vars": {"n": "hi"}}]}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    let csv = marquee::http_client()
        .build()
        .unwrap()
        .get(format!("{}/api/v1/campaigns/{id}/messages", d.http))
        .bearer_auth(&token)
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv.lines().nth(1).unwrap();
    assert!(row.contains(",+8613800138000,"), "{csv}");
    assert!(row.contains("\"'=HYPERLINK("), "{csv}");
}

/// An alert's SMS part takes an uploaded list like a campaign does (the same reader): a GBK
/// file from Chinese Excel reaches every number in it, and phones and screens get the alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_sends_its_sms_to_an_uploaded_list() {
    let site = site("");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    let (status, up) = upload(&d, &token, fixture("recipients-gbk.csv"), "").await;
    assert_eq!(status, 201, "{up}");
    let (s, v) = d
        .send(
            Method::POST,
            "/api/v1/alerts",
            Some(&token),
            Some(
                json!({"text": {"zh": "暴雨红色预警，请避险"}, "expires_in": "10m",
                        "sms": {"recipients_upload": up["upload"]}}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["sms"]["estimate"]["recipients"], 2, "{v}");
    let mut got = eventually("both numbers texted", || {
        let s = sent(&site);
        (s.len() == 2).then_some(s)
    })
    .await;
    got.sort();
    assert_eq!(
        got[0],
        (
            "+8613800138000".to_owned(),
            "暴雨红色预警，请避险".to_owned()
        )
    );
    assert_eq!(got[1].0, "+8613900139000");
}

/// Below `auth.show_numbers_from` (default operator) phone numbers are masked in message lists,
/// rejected rows and the opt-out list; an operator sees them whole.
#[tokio::test]
async fn numbers_are_masked_below_operator() {
    let site = site("");
    site.append_config(
        "[[auth.tokens]]\nname = \"watcher\"\nrole = \"viewer\"\ntoken_env = \"MARQUEE_IT_WATCHER\"\n",
    );
    const WATCHER: &str = "watcher-token-0123456789";
    let d = Daemon::start_with_env(&site, &[("MARQUEE_IT_WATCHER", WATCHER)]).await;
    let admin = site.admin_token();
    let (s, v) = d
        .send(
            Method::POST,
            "/api/v1/campaigns",
            Some(&admin),
            Some(json!({"name": "x", "text": "hi",
                        "recipients": [{"number": "13800138000"}, {"number": "010-87654321"}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    let (s, _) = d
        .send(
            Method::POST,
            "/api/v1/optouts",
            Some(&admin),
            Some(json!({"numbers": ["13900139000"]})),
        )
        .await;
    assert_eq!(s, 200);
    let path = format!("/api/v1/campaigns/{id}/messages");
    let (_, m) = d.get(&path, Some(WATCHER)).await;
    assert_eq!(m["messages"][0]["recipient"], "+86138****8000", "{m}");
    let (_, m) = d.get(&path, Some(&admin)).await;
    assert_eq!(m["messages"][0]["recipient"], "+8613800138000", "{m}");
    let (_, r) = d
        .get(&format!("/api/v1/campaigns/{id}/rejects"), Some(WATCHER))
        .await;
    assert_eq!(r["rejects"][0]["value"], "010-87**4321", "{r}");
    let (_, o) = d.get("/api/v1/optouts", Some(WATCHER)).await;
    assert_eq!(o["optouts"][0]["number"], "+86139****9000", "{o}");
    let (_, o) = d.get("/api/v1/optouts", Some(&admin)).await;
    assert_eq!(o["optouts"][0]["number"], "+8613900139000", "{o}");
}

#[tokio::test]
async fn an_alert_raised_during_a_large_import_is_not_held_up_by_it() {
    let site = site("");
    let d = Daemon::start(&site).await;
    let token = site.admin_token();
    // 150,000 numbers: an import that runs for seconds, in chunks.
    let mut csv = String::from("phone\n");
    for i in 0..150_000u32 {
        csv.push_str(&format!("+86138{:08}\n", 10_000_000 + i));
    }
    let (status, up) = upload(&d, &token, csv.into_bytes(), "").await;
    assert_eq!(status, 201, "{up}");
    let (http, t) = (d.http.clone(), token.clone());
    let import = tokio::spawn(async move {
        let r = marquee::http_client()
            .build()
            .unwrap()
            .post(format!("{http}/api/v1/campaigns"))
            .bearer_auth(&t)
            .json(&json!({"name": "big", "text": "open day", "recipients_upload": up["upload"]}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    });
    // Once the import is under way, alerts are raised; each answers at once, while the import
    // is still running (it was not waited for).
    let importing = || async {
        let (_, list) = d.get("/api/v1/campaigns", Some(&token)).await;
        list["campaigns"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["status"] == "importing")
    };
    let start = std::time::Instant::now();
    while !importing().await {
        assert!(
            start.elapsed() < DEADLINE,
            "the import never showed as importing"
        );
        assert!(!import.is_finished(), "the import ended before it was seen");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for n in 0..3 {
        let asked = std::time::Instant::now();
        let (status, v) = post(
            &d,
            &token,
            "/api/v1/alerts",
            json!({"severity": "extreme", "text": {"en": format!("drill {n}")}, "expires_in": "10m"}),
        )
        .await;
        let took = asked.elapsed();
        assert_eq!(status, 201, "{v}");
        assert!(
            importing().await,
            "alert {n} was answered only after the import had finished ({took:?})"
        );
        assert!(
            took < std::time::Duration::from_secs(1),
            "alert {n} took {took:?}"
        );
    }
    let (status, body) = import.await.unwrap();
    assert_eq!(status, 201, "{body}");
}
