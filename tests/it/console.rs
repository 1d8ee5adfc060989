//! The console as the publicity office uses it, in a real headless Chromium against the real
//! daemon and a real agent: a playlist built entirely through the forms (its slogans previewed
//! by the screens' own renderer, its cron line explained, a field error shown beside the field),
//! proposed, published by a second person and played by the agent; the week and the frame at a
//! moment; the fleet dashboard; an alert raised on one display chosen on the map and its
//! acknowledgement seen live. Both languages are complete, nothing leaves loopback, and the page
//! works at a phone's width. Screenshots go to target/test-artifacts/.

use serde_json::Value;

use crate::harness::*;
use crate::web::{Driver, contains};

const EDITOR: &str = "editor-console-0123456789";
const APPROVER: &str = "approver-console-0123456789";

/// Sets a form control's value as typing does (input and change events that bubble).
fn set(css: &str, value: &str) -> String {
    format!(
        "{{ const e = document.querySelector({css:?}); if (!e) throw new Error('no ' + {css:?}); e.value = {value:?}; \
         e.dispatchEvent(new Event('input', {{bubbles: true}})); e.dispatchEvent(new Event('change', {{bubbles: true}})); }}"
    )
}

fn click(css: &str) -> String {
    format!(
        "{{ const e = document.querySelector({css:?}); if (!e) throw new Error('no ' + {css:?}); e.click(); }}"
    )
}

/// Every URL the page and its frames requested, and the origin it was served from.
const REQUESTED: &str = "const all = [location.href, ...performance.getEntriesByType('resource').map(e => e.name)];
  for (const f of document.querySelectorAll('iframe')) { try { all.push(f.contentWindow.location.href,
    ...f.contentWindow.performance.getEntriesByType('resource').map(e => e.name)); } catch (e) { all.push('unreadable frame'); } }
  return all;";

fn only_loopback(urls: &Value, base: &str) {
    let urls = urls.as_array().expect("a list of URLs");
    assert!(urls.len() > 5, "{urls:?}");
    for u in urls {
        let u = u.as_str().unwrap_or("");
        assert!(
            u.starts_with(base) || u.starts_with("blob:") || u == "about:blank",
            "the console requested {u}, not its own loopback origin {base}"
        );
    }
}

#[tokio::test]
async fn console_builds_a_playlist_in_forms_reviews_it_and_an_agent_plays_it() {
    let port = free_port();
    let site = Site::new(&format!("listen = \"127.0.0.1:{port}\""), "");
    site.append_config(
        "[schedule.screens]\nsubway = \"1080x1920\"\n\
         [[schedule.displays]]\nid = \"lobby-west-2\"\nchannel = \"lobby\"\nlat = 31.2304\nlon = 121.4737\n\
         [[schedule.displays]]\nid = \"subway-l2-7\"\nchannel = \"subway\"\nlat = 31.2397\nlon = 121.4998\n\
         [approval]\nplaylists = true\n\
         [[auth.tokens]]\nname = \"office\"\nrole = \"editor\"\ntoken_env = \"IT_CON_ED\"\n\
         [[auth.tokens]]\nname = \"supervisor\"\nrole = \"operator\"\ntoken_env = \"IT_CON_AP\"\n",
    );
    let d = Daemon::start_with_env(&site, &[("IT_CON_ED", EDITOR), ("IT_CON_AP", APPROVER)]).await;
    let mut agent = AgentProc::start(
        &agent_config(&d, &site, "lobby-west-2", "lobby", port),
        &["--render", "jsonl"],
    );
    let driver = Driver::start().await;
    driver.resize(1280, 1600).await;
    driver.log_in(&d.http, EDITOR).await;

    // A new playlist, built in the forms only.
    driver
        .eval(&format!(
            "{} {}",
            click("[data-tab=playlists]"),
            click("#new-playlist")
        ))
        .await;
    driver
        .until(
            "the new playlist's form",
            "return document.querySelector('#form [data-bind=\"/id\"]')?.readOnly",
            |v| v == false,
        )
        .await;
    // A new playlist may not take an existing one's id (its save would replace that file).
    driver
        .eval(&format!(
            "{} {}",
            set("#form [data-bind='/id']", "hotline-12345"),
            click("#save")
        ))
        .await;
    driver
        .until(
            "the id refused",
            "return document.getElementById('check-out').textContent",
            contains("exists already"),
        )
        .await;
    let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
    let local = |h: i64| {
        (chrono::Utc::now() + chrono::Duration::hours(h))
            .with_timezone(&tz)
            .format("%Y-%m-%dT%H:%M")
            .to_string()
    };
    driver
        .eval(
            &[
                set("#form [data-bind='/id']", "open-day-form"),
                set("#form [data-bind='/title']", "开放日（表单）"),
                set("#form [data-bind='/tier']", "interrupt"),
                set("#form [data-kind='0']", "range"),
            ]
            .join("\n"),
        )
        .await;
    driver
        .until(
            "the range entry",
            "return document.querySelector(\"#form [data-bind='/schedule/0/from']\")?.type",
            |v| v == "datetime-local",
        )
        .await;
    driver
        .eval(
            &[
                set("#form [data-bind='/schedule/0/from']", &local(-1)),
                set("#form [data-bind='/schedule/0/until']", &local(3)),
                set("#form [data-bind='/items/0/text/zh']", "开放日表单标语"),
                set(
                    "#form [data-bind='/items/0/text/en']",
                    "Open Day, from the form",
                ),
                set("#form [data-bind='/items/0/seconds']", "2"),
                click("#form [data-act=add]"),
            ]
            .join("\n"),
        )
        .await;
    driver
        .until(
            "the second item",
            "return document.querySelectorAll('#form .item').length",
            |v| v == 2,
        )
        .await;
    driver
        .eval(
            &[
                set("#form [data-bind='/items/1/id']", "second"),
                set("#form [data-bind='/items/1/text/zh']", "第二条"),
                set("#form [data-bind='/items/1/seconds']", "2"),
                click("#form [data-act=up][data-i='1']"),
            ]
            .join("\n"),
        )
        .await;
    // Moved up: "second" is first now; a duplicate of it, then deleted again.
    driver
        .until(
            "the moved item",
            "return document.querySelector(\"#form [data-bind='/items/0/id']\").value",
            |v| v == "second",
        )
        .await;
    driver
        .eval(&click("#form [data-act=dup][data-i='0']"))
        .await;
    driver
        .until(
            "the duplicate",
            "return document.querySelector(\"#form [data-bind='/items/1/id']\")?.value",
            |v| v == "second-2",
        )
        .await;
    driver
        .eval(&click("#form [data-act=del][data-i='1']"))
        .await;
    driver
        .until(
            "two items again",
            "return [...document.querySelectorAll(\"#form [data-bind$='/id']\")].map(e => e.value).join(',')",
            |v| v == "open-day-form,second,slogan-1",
        )
        .await;
    // The character count is live.
    let count = driver
        .eval("return document.querySelector(\"[data-count='/items/1/text/zh']\").textContent")
        .await;
    assert_eq!(count, "7 characters");

    // A cron entry explained, with its next five starts; then removed.
    driver
        .eval(&click("#form [data-act=add-entry][data-kind-new=cron]"))
        .await;
    driver
        .eval(&set("#form [data-bind='/schedule/1/cron']", "30 9 * * 1-5"))
        .await;
    let explained = driver
        .until(
            "the cron line explained",
            "return document.querySelector('[data-explain=\"1\"]')?.textContent ?? ''",
            contains("At 09:30, on Monday"),
        )
        .await;
    assert_eq!(
        driver
            .eval("return document.querySelectorAll('[data-explain=\"1\"] li').length")
            .await,
        5,
        "{explained}"
    );
    driver.screenshot("console-form-schedule.png").await;
    driver
        .eval(&click("#form [data-act=del-entry][data-i='1']"))
        .await;

    // A bad value gets its error beside the field (from the server's check, by JSON Pointer).
    driver
        .eval(&set("#form [data-bind='/items/1/seconds']", "0"))
        .await;
    let beside = driver
        .until(
            "the error beside the seconds field",
            "return document.querySelector('.fielderr[data-for=\"/items/1/seconds\"]')?.textContent ?? ''",
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
    assert!(beside.as_str().unwrap().contains("seconds"), "{beside}");
    driver.screenshot("console-form-error.png").await;
    driver
        .eval(&set("#form [data-bind='/items/1/seconds']", "2"))
        .await;

    // Subway too: its screens are portrait; each slogan is drawn by the screen page itself.
    driver
        .eval(&click("#form input[data-target=channels][value=subway]"))
        .await;
    driver
        .eval("document.querySelector(\"#form [data-bind='/items/0/text/zh']\").focus();")
        .await;
    let drawn = driver
        .until(
            "the slogan drawn on a lobby and a subway screen",
            "return [...document.querySelectorAll('#item-preview .screen')].map(s => s.dataset.channel + ':' + s.dataset.lang + ':' + (s.querySelector('iframe').contentDocument?.getElementById('text')?.textContent ?? '') + ':' + s.querySelector('iframe').width + 'x' + s.querySelector('iframe').height)",
            |v| {
                v.as_array().is_some_and(|a| {
                    a.iter().any(|x| x == "lobby:zh:第二条:1920x1080")
                        && a.iter().any(|x| x == "subway:zh:第二条:1080x1920")
                })
            },
        )
        .await;
    assert!(drawn.as_array().unwrap().len() >= 2, "{drawn}");
    driver.screenshot("console-form-preview.png").await;

    // The JSON view holds the same playlist, and the form comes back from it.
    driver.eval(&click("#view-json")).await;
    let json: Value = serde_json::from_str(
        driver
            .eval("return document.getElementById('source').value")
            .await
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["id"], "open-day-form");
    assert_eq!(json["tier"], "interrupt");
    assert_eq!(
        json["targets"]["channels"],
        serde_json::json!(["lobby", "subway"])
    );
    assert_eq!(json["items"][0]["text"]["zh"], "第二条");
    assert_eq!(json["items"][1]["text"]["en"], "Open Day, from the form");
    assert_eq!(json["schedule"].as_array().map(Vec::len), Some(1));
    driver.screenshot("console-form-json.png").await;
    driver.eval(&click("#view-form")).await;

    // Check shows the change impact; Save proposes it (the file is not written yet).
    driver.eval(&click("#check")).await;
    driver
        .until(
            "the change impact",
            "return document.getElementById('check-out').textContent",
            contains("channel lobby"),
        )
        .await;
    driver.eval(&click("#save")).await;
    driver
        .until(
            "proposed",
            "return document.getElementById('check-out').textContent",
            contains("Proposed for review"),
        )
        .await;
    assert!(!site.playlist("open-day-form").exists());
    let (_, pending) = d
        .get("/api/v1/proposals?status=pending", Some(APPROVER))
        .await;
    assert_eq!(pending["proposals"][0]["playlist"], "open-day-form");

    // A second person publishes it; the agent plays it.
    driver.log_in(&d.http, APPROVER).await;
    driver.eval(&click("[data-tab=playlists]")).await;
    driver
        .until(
            "the proposal listed",
            "return document.getElementById('proposals').textContent",
            contains("open-day-form"),
        )
        .await;
    // The approver sees what changes (a new file: every line added), and a rejection needs
    // a reason.
    driver.eval(&click("[data-decision=diff]")).await;
    driver
        .until(
            "the proposal's diff",
            "return [...document.querySelectorAll('#proposal-diff .dadd')].map(e => e.textContent).join('\\n')",
            contains("\"zh\": \"开放日表单标语\""),
        )
        .await;
    driver.screenshot("console-review-diff.png").await;
    driver.eval(&click("[data-decision=reject]")).await;
    driver
        .until(
            "the reason asked for",
            "return document.getElementById('check-out').textContent",
            contains("Write why"),
        )
        .await;
    driver.eval(&click("[data-decision=publish]")).await;
    agent
        .frame("the form's slogan on the real agent", |f| {
            text_of(f) == "开放日表单标语" || text_of(f) == "Open Day, from the form"
        })
        .await;

    // The week shows it as an interrupt stretch today; a stretch opens its loop; the frame at a
    // moment is drawn by the screen page.
    driver
        .eval(&format!(
            "{} {}",
            click("[data-tab=channels]"),
            set("#channel", "lobby")
        ))
        .await;
    driver
        .until(
            "the interrupt stretch in the week",
            "document.getElementById('week-show').click(); return document.querySelectorAll('#week .stretch.t-interrupt').length",
            |v| v.as_u64().is_some_and(|n| n >= 1),
        )
        .await;
    // Clicked again on each poll: the week may still be redrawn by the last 'show' above, and a
    // click on the stretch it replaced opens nothing.
    driver
        .until(
            "the stretch's loop",
            &format!(
                "{} return document.getElementById('week-detail').textContent",
                click("#week .stretch.t-interrupt")
            ),
            contains("open-day-form"),
        )
        .await;
    driver.eval(&set("#week-display", "lobby-west-2")).await;
    driver.eval(&click("#frame-show")).await;
    let frame = driver
        .until(
            "the frame at that moment",
            "return [...document.querySelectorAll('#frame-out iframe')].map(f => f.contentDocument?.getElementById('text')?.textContent ?? '')",
            |v| v.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|t| t.as_str().is_some_and(|t| !t.is_empty()))),
        )
        .await;
    let texts = frame.to_string();
    assert!(
        [
            "开放日表单标语",
            "第二条",
            "Open Day, from the form",
            "slogan-1"
        ]
        .iter()
        .any(|t| texts.contains(t)),
        "{texts}"
    );
    driver.screenshot("console-week.png").await;
    let (status, api_frame) = d
        .get("/api/v1/frame?display=lobby-west-2&lang=zh", Some(EDITOR))
        .await;
    assert_eq!(status, 200, "{api_frame}");
    assert_eq!(api_frame["topic"], "marquee/v1/channel/lobby/timeline");
    assert_eq!(api_frame["frame"]["playlist"], "open-day-form");
    assert_eq!(api_frame["frame"]["lang"], "zh");

    // The fleet: counts, and the display's plays per hour from its proof of play.
    driver.eval(&click("[data-tab=fleet]")).await;
    driver
        .until(
            "one display online",
            "return document.querySelector('.card[data-kind=online]')?.dataset.count",
            |v| v == "1",
        )
        .await;
    driver
        .until(
            "plays in the chart",
            "document.querySelector('#fleet tr[data-id=\"lobby-west-2\"]')?.click(); return document.querySelectorAll('#plays-chart rect.datum').length",
            |v| v.as_u64().is_some_and(|n| n >= 1),
        )
        .await;
    driver.screenshot("console-fleet.png").await;

    // An alert on one display, chosen on the map; its acknowledgement seen live.
    driver.eval(&click("[data-tab=alerts]")).await;
    driver
        .until(
            "the map",
            "return document.querySelectorAll('#alert-map circle').length",
            |v| v == 2,
        )
        .await;
    // Chosen with the keyboard: focus the point on the map, press Enter.
    driver.eval(&set("#alert-zh", "控制台演练")).await;
    driver
        .eval("document.querySelector('#alert-map circle[data-v=\"lobby-west-2\"]').focus();")
        .await;
    driver.keys("\u{E007}").await;
    driver
        .until(
            "the display chosen",
            "return document.querySelector('#alert-displays [data-v=\"lobby-west-2\"]').getAttribute('aria-pressed')",
            |v| v == "true",
        )
        .await;
    driver.eval(&click("#raise")).await;
    agent
        .frame("the alert on the agent", |f| text_of(f) == "控制台演练")
        .await;
    driver
        .until(
            "its acknowledgement",
            "return document.getElementById('acked-count')?.textContent",
            |v| v == "1",
        )
        .await;
    let (_, list) = d.get("/api/v1/alerts", Some(APPROVER)).await;
    assert_eq!(
        list["alerts"][0]["scope"],
        serde_json::json!({"displays": ["lobby-west-2"]})
    );
    driver.screenshot("console-alert-acks.png").await;
    // The frame at this moment is the alert on that display, not on the rest of its channel.
    let (_, on) = d
        .get("/api/v1/frame?display=lobby-west-2", Some(EDITOR))
        .await;
    assert_eq!(on["frame"]["kind"], "alert", "{on}");
    assert_eq!(on["frame"]["text"], "控制台演练", "{on}");
    assert_eq!(on["alert"], list["alerts"][0]["id"]);
    let (_, channel) = d.get("/api/v1/frame?channel=lobby", Some(EDITOR)).await;
    assert_eq!(channel["frame"]["kind"], "timeline", "{channel}");
    driver.eval(&click("[data-clear]")).await;

    // The tabs answer the arrow keys (WAI-ARIA tabs): from Alerts, right goes to SMS.
    driver
        .eval("document.querySelector('[data-tab=alerts]').focus();")
        .await;
    driver.keys("\u{E014}").await;
    driver
        .until(
            "the SMS tab by the arrow key",
            "return document.getElementById('tab-campaigns').classList.contains('on') && document.activeElement.dataset.tab",
            |v| v == "campaigns",
        )
        .await;

    // Both languages complete; every tab in Chinese.
    driver.eval(&click("#lang")).await;
    for tab in ["channels", "fleet", "playlists", "alerts", "campaigns"] {
        driver.eval(&click(&format!("[data-tab={tab}]"))).await;
        driver
            .until(
                "the tab shown",
                &format!("return document.getElementById('tab-{tab}').classList.contains('on')"),
                |v| v == true,
            )
            .await;
    }
    driver.eval(&click("[data-tab=playlists]")).await;
    driver
        .until(
            "the form in Chinese",
            "return document.getElementById('form').textContent",
            contains("播放位置"),
        )
        .await;
    driver.screenshot("console-form-zh.png").await;
    let missing = driver
        .eval("return [...window.marqueeMissing, ...window.marqueeKeysDiffer()]")
        .await;
    assert_eq!(
        missing,
        serde_json::json!([]),
        "words missing in a language"
    );

    // Nothing but the daemon's own loopback origin was requested.
    let urls = driver.eval(REQUESTED).await;
    only_loopback(&urls, &d.http);

    // At a phone's width the form is one column and still usable.
    driver.resize(390, 844).await;
    let width = driver
        .eval("return document.documentElement.scrollWidth")
        .await;
    assert!(
        width.as_u64().is_some_and(|w| w <= 400),
        "the page scrolls sideways at phone width: {width}"
    );
    driver.screenshot("console-phone.png").await;
}

/// The week in a zone with daylight saving: the lanes of the change days are 23 and 25 hours
/// long and marked, and a stretch keeps its wall-clock place on them (Europe/Berlin changes on
/// the last Sundays of March and October, EU Directive 2000/84/EC).
#[tokio::test]
async fn console_week_draws_daylight_saving_days() {
    let port = free_port();
    let site = Site::new(
        &format!("listen = \"127.0.0.1:{port}\""),
        "timezone = \"Europe/Berlin\"",
    );
    let d = Daemon::start(&site).await;
    let driver = Driver::start().await;
    driver.log_in(&d.http, &site.admin_token()).await;
    let lanes = |from: &str| {
        format!(
            "{} {} return [...document.querySelectorAll('#week .day')].map(d => d.dataset.day + '=' + d.dataset.hours)",
            set("#week-from", from),
            click("#week-show")
        )
    };
    let spring = driver
        .until("the spring week", &lanes("2026-03-26"), |v| {
            v.as_array()
                .is_some_and(|a| a.len() == 7 && a[0] == "2026-03-26=24")
        })
        .await;
    assert_eq!(spring[3], "2026-03-29=23", "{spring}");
    assert_eq!(
        spring
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d.as_str().unwrap().ends_with("=24"))
            .count(),
        6
    );
    // The lanes are wall-clock time: the hotline's 06:00 lines up on the short day too, and
    // the skipped hour 02:00-03:00 is a band.
    let left = "return [...document.querySelectorAll('#week .day')].map(d => { const s = [...d.querySelectorAll('.stretch')].find(b => b.title.includes('hotline-12345')); return s ? parseFloat(s.style.left).toFixed(2) : null; })";
    let lefts = driver.eval(left).await;
    assert_eq!(lefts[3], "25.00", "{lefts}");
    assert_eq!(lefts[2], "25.00", "{lefts}");
    let band = driver
        .eval("const b = document.querySelector('#week .day[data-day=\"2026-03-29\"] .dstband'); return b && [parseFloat(b.style.left).toFixed(2), parseFloat(b.style.width).toFixed(2), b.title]")
        .await;
    assert_eq!(band[0], "8.33", "{band}");
    assert_eq!(band[1], "4.17", "{band}");
    assert!(band[2].as_str().unwrap().contains("skipped"), "{band}");
    let mark = driver
        .eval("return document.querySelector('#week .day[data-day=\"2026-03-29\"] .dst')?.textContent")
        .await;
    assert_eq!(mark, "23 h");
    driver.screenshot("console-week-dst.png").await;
    let autumn = driver
        .until("the autumn week", &lanes("2026-10-22"), |v| {
            v.as_array()
                .is_some_and(|a| a.len() == 7 && a[0] == "2026-10-22=24")
        })
        .await;
    assert_eq!(autumn[3], "2026-10-25=25", "{autumn}");
    let band = driver
        .eval("const b = document.querySelector('#week .day[data-day=\"2026-10-25\"] .dstband'); return b && [parseFloat(b.style.left).toFixed(2), b.title]")
        .await;
    assert_eq!(band[0], "8.33", "{band}");
    assert!(band[1].as_str().unwrap().contains("twice"), "{band}");
}
