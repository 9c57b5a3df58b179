//! The email notifier against a real SMTP server on loopback
//! (tests/smtp_server.py, aiosmtpd): the message that arrives, a refused
//! recipient that is final, a server that is down and retried within the
//! deadline; never the password or the URL in a message, error or log line.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::config::Config;
use backstop::evidence::{Event, EventKind};
use backstop::notify::Notifiers;

const USER: &str = "mailer";
const PASSWORD: &str = "sm7p-pa55w0rd-s3cret";

/// tests/smtp_server.py on a free port, killed on drop.
struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    fn start(refuse: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_server.py");
        // Debian's python3-aiosmtpd belongs to Debian's Python.
        let python = ["/usr/bin/python3", "python3"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("python3");
        let mut cmd = Command::new(python);
        cmd.arg(&script).arg(dir.path()).args([USER, PASSWORD]);
        for r in refuse {
            cmd.args(["--refuse", r]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 tests/smtp_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("smtp_server.py printed {line:?}: is python3-aiosmtpd installed?")
        });
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("smtp://{USER}:{PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// The messages received, in order.
    fn messages(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// Every RCPT the server was sent.
    fn recipients(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("rcpt.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn notifiers(notify: &str) -> Notifiers {
    let text = format!("[service]\nname = \"shop\"\n\n{notify}");
    let config = Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Notifiers::build(&config.notify).unwrap()
}

fn email(url: &str, to: &str, extra: &str) -> String {
    format!(
        "[[notify]]\ntype = \"email\"\nurl = \"{url}\"\nfrom = \"backstop@shop.example\"\nto = [{to}]\n{extra}"
    )
}

fn event() -> Event {
    Event {
        service: "shop".into(),
        deployment: "v2".into(),
        return_to: Some("v1".into()),
        ..crate::notify::event(EventKind::RollbackPerformed)
    }
}

/// A log sink for one test: every line logged on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> (Logs, impl Drop) {
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = Logs::default();
    let sink = logs.clone();
    let guard = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .finish()
        .set_default();
    (logs, guard)
}

fn logs_text(logs: &Logs) -> String {
    String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn the_message_names_service_event_and_deployment_and_carries_no_secret() {
    let (logs, _guard) = capture_logs();
    let server = SmtpServer::start(&[]);
    let n = notifiers(&email(
        &server.url(),
        "\"ops@shop.example\", \"Oncall <oncall@shop.example>\"",
        "",
    ));

    let results = n.send_and_wait(event()).await;

    assert_eq!(results, vec![Ok(())]);
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    // Quoted-printable: soft line breaks joined again.
    let m = &messages[0].replace("=\r\n", "").replace("=\n", "");
    for want in [
        "Subject: [backstop] shop: rollback performed for v2",
        "From: backstop@shop.example",
        "ops@shop.example",
        "oncall@shop.example",
        "Rule: latency regression",
        "p95 latency doubled against the last good deployment",
        "Returned to: v1",
        "p95_ms 480 vs threshold 400",
    ] {
        assert!(m.contains(want), "{want:?} missing:\n{m}");
    }
    let logs = logs_text(&logs);
    assert!(logs.contains("notification sent"), "{logs}");
    for (what, text) in [
        ("message", m.as_str()),
        ("logs", logs.as_str()),
        ("notifiers", &format!("{n:?}")),
    ] {
        assert!(!text.contains(PASSWORD), "password in the {what}:\n{text}");
        assert!(!text.contains("smtp://"), "URL in the {what}:\n{text}");
    }
    let mut rcpts = server.recipients();
    rcpts.sort();
    assert_eq!(rcpts, ["oncall@shop.example", "ops@shop.example"]);
}

#[tokio::test]
async fn a_refused_recipient_is_final_counted_as_failed_and_names_the_reply() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let (logs, _guard) = capture_logs();
    let server = SmtpServer::start(&["nobody@shop.example"]);
    let n = notifiers(&email(
        &server.url(),
        "\"nobody@shop.example\"",
        "deadline = \"30s\"\n",
    ));
    let start = Instant::now();

    let results = n.send_and_wait(event()).await;

    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a refusal is not retried: {:?}",
        start.elapsed()
    );
    let err = results[0].as_ref().unwrap_err();
    assert!(err.contains("550"), "{err}");
    assert!(err.contains("recipient address rejected"), "{err}");
    assert!(err.contains("not retried"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
    assert_eq!(server.recipients(), ["nobody@shop.example"], "one attempt");
    assert!(server.messages().is_empty());
    let logs = logs_text(&logs);
    assert!(logs.contains("notification failed"), "{logs}");
    assert!(!logs.contains(PASSWORD), "{logs}");
    let mut counts = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let DebugValue::Counter(v) = value {
            counts.push((labels.join(","), v));
        }
    }
    counts.sort();
    assert_eq!(
        counts,
        [
            ("notifier=email,outcome=failed".to_string(), 1),
            ("notifier=email,outcome=sent".to_string(), 0),
        ]
    );
    // The notifier keeps working after a failure.
    let server_ok = SmtpServer::start(&[]);
    let n = notifiers(&email(&server_ok.url(), "\"ops@shop.example\"", ""));
    assert_eq!(n.send_and_wait(event()).await, vec![Ok(())]);
}

#[tokio::test]
async fn a_server_that_is_down_is_retried_then_fails_within_the_deadline() {
    let (logs, _guard) = capture_logs();
    let port = backstop_tests::closed_port();
    let url = format!("smtp://{USER}:{PASSWORD}@127.0.0.1:{port}");
    let n = notifiers(&email(
        &url,
        "\"ops@shop.example\"",
        "timeout = \"500ms\"\ndeadline = \"3s\"\n",
    ));
    let start = Instant::now();

    let deliveries = n.send(event());

    assert!(
        start.elapsed() < Duration::from_millis(500),
        "send returned after {:?}",
        start.elapsed()
    );
    let results = deliveries.wait().await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "gave up after {took:?}, past its 3s deadline"
    );
    let err = results[0].as_ref().unwrap_err();
    assert!(err.contains("gave up after"), "retried: {err}");
    assert!(!err.contains("gave up after 1 attempts"), "retried: {err}");
    assert!(!err.contains(PASSWORD) && !err.contains("smtp://"), "{err}");
    let logs = logs_text(&logs);
    assert!(!logs.contains(PASSWORD), "{logs}");
}

#[test]
fn bad_email_settings_are_refused_with_their_keys() {
    let text = format!(
        "[service]\nname = \"shop\"\n\n{}",
        email(
            &format!("https://{USER}:{PASSWORD}@mail.example"),
            "\"ops@shop.example\", \"not an address\"",
            ""
        )
        .replace("backstop@shop.example", "nobody")
    );
    let err = Config::parse(&text, |_| None).unwrap_err().to_string();
    for key in ["notify[0].url", "notify[0].from", "notify[0].to[1]"] {
        assert!(err.contains(key), "{key} in {err}");
    }
    assert!(!err.contains(PASSWORD), "{err}");
    let empty = format!(
        "[service]\nname = \"shop\"\n\n{}",
        email("smtps://mail.example", "", "")
    );
    let err = Config::parse(&empty, |_| None).unwrap_err().to_string();
    assert!(err.contains("notify[0].to"), "{err}");
}
