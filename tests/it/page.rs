//! The agent's page (`GET /`) for a deployment it rolled back, as Debian's
//! headless Chromium shows it: the deployment, every probe with its
//! picture, the rule that rolled it back with its numbers; its headers, its
//! weight, and no secret of the configuration.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backstop_tests::{closed_port, HttpServer, Reply};
use serde_json::json;

use crate::e2e::{config_with, service, until, Agent};

/// The headless browser; the test fails, never skips, without it
/// (`tests/run.sh` installs Debian's `chromium`).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !path.is_empty() {
                return PathBuf::from(path);
            }
        }
    }
    panic!(
        "chromium is not installed: this test reads the page in Debian's headless Chromium \
         (apt-get install chromium, or run the tests through tests/run.sh, which installs it)"
    );
}

/// Runs headless Chromium with `args` then `url`, with a profile of its
/// own, and returns its standard output.
fn browse(profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_rolled_back_deployment_its_probes_and_the_rule_that_acted() {
    let (svc, server) = service().await;
    let switch = svc.clone();
    let platform = HttpServer::start(move |r| {
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        Reply::json(200, json!({ "accepted": true }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    // A second probe, a rule that only alerts, an admin token and a
    // webhook URL carrying a token: secrets the page must not show.
    let extra = format!(
        r#"
[[probe]]
name = "version"
level = 1
type = "http"
url = "{version}"
interval = "300ms"
timeout = "250ms"

[[rule]]
name = "slow health"
probe = "health"
when = "latency_ms > 2x baseline for 2s"
action = "alert"
"#,
        version = server.url("/version"),
    );
    let cfg = config_with(dir.path(), port, &server, &platform, "3s", &extra);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace(
            "[service]",
            "admin_token = \"page-admin-token-s3cret\"\n\n[service]",
        )
        .replace("/rollback\"", "/rollback?token=page-hook-token-s3cret\"");
    assert!(text.contains("page-hook-token-s3cret") && text.contains("page-admin-token-s3cret"));
    std::fs::write(&cfg, text).unwrap();

    let _agent = Agent::start(&cfg, port);
    until(port, "v1 stable", |s| {
        s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "stable"
    })
    .await;
    // The pipeline says what it deploys, then deploys it.
    let registered = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/deployments"))
        .bearer_auth("page-admin-token-s3cret")
        .json(&serde_json::json!({
            "id": "v2", "commit": "4f2a9c1", "triggered_by": "release-bot",
        }))
        .send()
        .await
        .unwrap();
    assert!(
        registered.status().is_success(),
        "{:?}",
        registered.status()
    );
    svc.set("v2", false);
    until(port, "the rollback of v2", |s| {
        s["last_rollback"]["deployment"] == "v2"
            && s["last_rollback"]["status"] == "succeeded"
            && s["deployment"]["id"] == "v1"
    })
    .await;
    // A few more checks of v1 after the rollback, for the pictures.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let url = format!("http://127.0.0.1:{port}/");
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let csp = header("content-security-policy");
    for part in [
        "default-src 'none'",
        "style-src 'sha256-",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("cache-control"), "no-store");
    let html = resp.text().await.unwrap();
    assert!(html.len() < 300 * 1024, "{} bytes", html.len());
    for secret in ["page-hook-token-s3cret", "page-admin-token-s3cret"] {
        assert!(!html.contains(secret), "{secret} is on the page");
    }
    let post = reqwest::Client::new().post(&url).send().await.unwrap();
    assert_eq!(post.status(), 405);

    // What a browser makes of it, without any script (the page has none).
    let profile = tempfile::tempdir().unwrap();
    let dom = browse(profile.path(), &["--dump-dom"], &url);
    for (what, needle) in [
        ("the service", "<h1>shop</h1>"),
        ("the deployment returned to", "v1"),
        ("the deployment rolled back", "v2"),
        ("the deployment's state", "stable"),
        ("the timeline", "<svg class=\"timeline\""),
        ("the rule that acted", "health failing"),
        ("its condition", "consecutive_failures &gt;= 3"),
        ("the target's answer", "target's answer"),
        ("that it took effect", "returned to <b>v1</b>"),
        ("the alerting rule", "slow health"),
        ("the health probe", "<h3>health"),
        ("the version probe", "<h3>version"),
        ("the baseline's band", "class=\"band\""),
        ("the latency line", "<path class=\"line\" d=\"M"),
    ] {
        assert!(
            dom.contains(needle),
            "no {what} ({needle}) in the DOM:\n{dom}"
        );
    }
    assert!(
        dom.matches("<svg class=\"chart\"").count() >= 2,
        "a picture per probe:\n{dom}"
    );
    // The numbers of the rule that rolled back: observed against its threshold.
    let rule = dom
        .split("<section id=\"rules\">")
        .nth(1)
        .expect("the rules")
        .split("<b>health failing</b>")
        .nth(1)
        .expect("the rule's row")
        .split("</tbody>")
        .next()
        .unwrap();
    assert!(
        rule.contains("<td class=\"n\">3</td>"),
        "the threshold 3 in the rule's row:\n{rule}"
    );

    // And in the rollback's evidence: what was observed against what.
    let rollback = dom
        .split("<section id=\"rollback\">")
        .nth(1)
        .expect("the rollback")
        .split("</section>")
        .next()
        .unwrap();
    assert!(
        rollback.contains("<dt>rule</dt><dd>health failing</dd>")
            && rollback.contains("; observed ")
            && rollback.contains(", threshold 3)"),
        "the rule and its numbers in the rollback:\n{rollback}"
    );

    // The ledger: both deployments, who deployed v2, its states, and its
    // rollback's rule.
    let history = dom
        .split("<section id=\"history\">")
        .nth(1)
        .expect("the recent deployments")
        .split("</section>")
        .next()
        .unwrap();
    for (what, needle) in [
        ("v2's row", "<b>v2</b>"),
        ("v1's row", "<b>v1</b>"),
        ("v2's commit", "4f2a9c1"),
        ("who deployed v2", "release-bot"),
        ("v2 rolled back", "class=\"b rolled_back\""),
        ("v1 stable", "class=\"b stable\""),
        ("v2's states", "warming "),
        ("the rule of v2's rollback", "rule <b>health failing</b>"),
        ("that it took effect", "returned to v1"),
    ] {
        assert!(
            history.contains(needle),
            "no {what} ({needle}) among the recent deployments:\n{history}"
        );
    }

    let shot = dir.path().join("page.png");
    browse(
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.len() > 1000, "{} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // `BACKSTOP_PAGE_PNG=docs/page.png` keeps it (the picture in README.md).
    if let Ok(keep) = std::env::var("BACKSTOP_PAGE_PNG") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
