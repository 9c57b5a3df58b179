//! Notifiers against loopback stand-ins for Slack, PagerDuty and a webhook:
//! the exact requests, retries and final failures, never blocking the
//! caller, never showing a secret; and the `[[notify]]` configuration.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::config::Config;
use backstop::evidence::{Event, EventKind};
use backstop::notify::Notifiers;
use backstop_judge::evidence::Evidence;
use backstop_tests::{HttpServer, Recorded, Reply};
use serde_json::json;

const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdef012345";

fn config(notify: &str) -> Config {
    let text = format!("[service]\nname = \"web\"\n\n{notify}");
    Config::parse(&text, |_| None).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn notifiers(notify: &str) -> Notifiers {
    Notifiers::build(&config(notify).notify).unwrap()
}

pub(crate) fn event(kind: EventKind) -> Event {
    Event {
        kind,
        service: "web".into(),
        deployment: "d2".into(),
        rule: Some("latency regression".into()),
        summary: "p95 latency doubled against the last good deployment".into(),
        evidence: vec![Evidence {
            rule: "latency regression".into(),
            probe: "app".into(),
            expression: "p95_ms > 2x baseline for 5m".into(),
            signal: Some("p95_ms".into()),
            observed: Some(480.0),
            threshold: Some(400.0),
            window: Some("5m".into()),
            baseline: Some(200.0),
            ratio: None,
            p_value: None,
            judged_by: None,
            summary: "p95 480ms against 200ms".into(),
        }],
        return_to: Some("d1".into()),
    }
}

fn pagerduty_ok() -> Reply {
    Reply::json(
        202,
        json!({"status": "success", "message": "Event processed", "dedup_key": "k"}),
    )
}

fn only(server: &HttpServer) -> Recorded {
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    requests.into_iter().next().unwrap()
}

fn assert_json_post(r: &Recorded, path: &str) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, path);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn slack_gets_a_text_fallback_and_block_kit_blocks() {
    let slack = HttpServer::start(|_| Reply::text(200, "ok")).await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"slack\"\nurl = \"{}\"\n",
        slack.url("/services/T000/B000/XXXX")
    ));

    let results = n.send_and_wait(event(EventKind::RollbackPerformed)).await;

    assert_eq!(results, vec![Ok(())]);
    let r = only(&slack);
    assert_json_post(&r, "/services/T000/B000/XXXX");
    let body = r.json();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("p95 latency doubled"), "{text}");
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(blocks[0]["text"]["text"]
        .as_str()
        .unwrap()
        .contains("p95 latency doubled against the last good deployment"));
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "*Service*\nweb",
            "*Deployment*\n`d2`",
            "*Rule*\nlatency regression",
            "*Returned to*\n`d1`"
        ]
    );
    assert_eq!(blocks[2]["text"]["type"], "mrkdwn");
    let evidence = blocks[2]["text"]["text"].as_str().unwrap();
    assert!(
        evidence.contains(
            "• latency regression (app) `p95_ms &gt; 2x baseline for 5m`: \
             p95_ms 480 vs threshold 400, over 5m, baseline 200"
        ),
        "{evidence}"
    );
}

#[tokio::test]
async fn slack_may_answer_something_other_than_ok() {
    let slack = HttpServer::start(|_| Reply::text(200, "queued")).await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"slack\"\nurl = \"{}\"\n",
        slack.url("/hook")
    ));
    assert_eq!(n.send_and_wait(event(EventKind::Alert)).await, vec![Ok(())]);
}

#[tokio::test]
async fn pagerduty_triggers_and_resolves_one_alert_with_one_dedup_key() {
    let pd = HttpServer::start(|_| pagerduty_ok()).await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}\"\n",
        pd.url("")
    ));
    let mut alert = event(EventKind::Alert);
    alert.summary = "s".repeat(2000);

    assert_eq!(n.send_and_wait(alert).await, vec![Ok(())]);
    assert_eq!(
        n.send_and_wait(event(EventKind::Resolved)).await,
        vec![Ok(())]
    );

    let requests = pd.requests();
    assert_eq!(requests.len(), 2);
    let (trigger, resolve) = (requests[0].json(), requests[1].json());
    for r in &requests {
        assert_json_post(r, "/v2/enqueue");
    }
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["event_action"], "trigger");
    let payload = &trigger["payload"];
    assert_eq!(payload["summary"].as_str().unwrap().chars().count(), 1024);
    assert_eq!(payload["source"], "web");
    assert_eq!(payload["severity"], "error");
    assert_eq!(payload["component"], "app");
    assert_eq!(payload["group"], "d2");
    assert_eq!(payload["class"], "alert");
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(payload["custom_details"]["deployment"], "d2");
    assert_eq!(payload["custom_details"]["evidence"][0]["observed"], 480.0);
    assert_eq!(payload["custom_details"]["evidence"][0]["baseline"], 200.0);

    assert_eq!(
        trigger["dedup_key"], "backstop/web/d2/latency regression",
        "one alert per service, deployment and rule"
    );
    assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
}

#[tokio::test]
async fn pagerduty_severity_follows_what_went_wrong() {
    let pd = HttpServer::start(|_| pagerduty_ok()).await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}\"\n",
        pd.url("")
    ));
    let cases = [
        (EventKind::Alert, "error"),
        (EventKind::RollbackHeld, "warning"),
        (EventKind::RollbackFailed, "critical"),
        (EventKind::RollbackNotEffective, "critical"),
    ];
    for (kind, _) in cases {
        assert_eq!(n.send_and_wait(event(kind)).await, vec![Ok(())]);
    }
    let requests = pd.requests();
    for ((kind, severity), r) in cases.iter().zip(&requests) {
        let body = r.json();
        assert_eq!(body["event_action"], "trigger", "{kind:?}");
        assert_eq!(body["payload"]["severity"], *severity, "{kind:?}");
        assert_eq!(body["payload"]["class"], kind.as_str(), "{kind:?}");
    }
}

#[tokio::test]
async fn pagerduty_records_a_performed_rollback_as_a_change_event() {
    let pd = HttpServer::start(|_| pagerduty_ok()).await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}/\"\n",
        pd.url("")
    ));

    let results = n.send_and_wait(event(EventKind::RollbackPerformed)).await;

    assert_eq!(results, vec![Ok(())]);
    let r = only(&pd);
    assert_json_post(&r, "/v2/change/enqueue");
    let body = r.json();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["payload", "routing_key"],
        "a change event pages no one"
    );
    assert_eq!(body["routing_key"], ROUTING_KEY);
    let payload = &body["payload"];
    assert_eq!(
        payload["summary"],
        "p95 latency doubled against the last good deployment"
    );
    assert_eq!(payload["source"], "web");
    assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(payload["custom_details"]["return_to"], "d1");
    assert_eq!(
        payload["custom_details"]["evidence"][0]["rule"],
        "latency regression"
    );
}

#[tokio::test]
async fn a_webhook_gets_the_event_as_json_with_its_headers() {
    let hook = HttpServer::start(|_| Reply::status(204)).await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"webhook\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer t0k3n\" }}\n",
        hook.url("/events")
    ));

    let results = n.send_and_wait(event(EventKind::RollbackPerformed)).await;

    assert_eq!(results, vec![Ok(())]);
    let r = only(&hook);
    assert_json_post(&r, "/events");
    assert_eq!(r.header("authorization"), Some("Bearer t0k3n"));
    let body = r.json();
    assert_eq!(body["event"], "rollback");
    assert_eq!(body["service"], "web");
    assert_eq!(body["deployment"], "d2");
    assert_eq!(body["rule"], "latency regression");
    assert_eq!(
        body["summary"],
        "p95 latency doubled against the last good deployment"
    );
    assert_eq!(body["return_to"], "d1");
    assert_eq!(body["evidence"][0]["threshold"], 400.0);
    assert_eq!(body["evidence"][0]["window"], "5m");
}

#[tokio::test]
async fn a_notifier_is_told_only_the_events_it_asks_for() {
    let hook = HttpServer::start(|_| Reply::status(200)).await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"webhook\"\nurl = \"{}\"\nevents = [\"rollback\", \"rollback_failed\"]\n",
        hook.url("/events")
    ));

    assert!(n.send_and_wait(event(EventKind::Alert)).await.is_empty());
    assert_eq!(
        n.send_and_wait(event(EventKind::RollbackFailed)).await,
        vec![Ok(())]
    );
    assert_eq!(only(&hook).json()["event"], "rollback_failed");
}

#[tokio::test]
async fn a_client_error_is_final_and_says_what_the_service_answered() {
    let cases = [
        ("slack", Reply::text(400, "invalid_payload"), "400 Bad Request: invalid_payload"),
        ("slack", Reply::text(403, "invalid_token"), "403 Forbidden: invalid_token"),
        ("slack", Reply::text(404, "no_service"), "404 Not Found: no_service"),
        (
            "pagerduty",
            Reply::json(
                400,
                json!({"status": "invalid event", "message": "Event object is invalid", "errors": ["'payload.severity' is missing"]}),
            ),
            "400 Bad Request: invalid event; Event object is invalid; 'payload.severity' is missing",
        ),
    ];
    for (kind, reply, said) in cases {
        let reply = Arc::new(Mutex::new(Some(reply)));
        let server = HttpServer::start(move |_| {
            reply
                .lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| Reply::status(200))
        })
        .await;
        let n = match kind {
            "slack" => notifiers(&format!(
                "[[notify]]\ntype = \"slack\"\nurl = \"{}\"\n",
                server.url("/hook")
            )),
            _ => notifiers(&format!(
                "[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}\"\n",
                server.url("")
            )),
        };

        let results = n.send_and_wait(event(EventKind::Alert)).await;

        assert_eq!(server.requests().len(), 1, "{kind} {said}: not retried");
        assert_eq!(
            results,
            vec![Err(format!("{kind} answered {said} (not retried)"))]
        );
    }
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let pd = HttpServer::start(move |_| {
        let mut n = seen.lock().unwrap();
        *n += 1;
        if *n == 1 {
            Reply::json(429, json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly"}))
                .header("retry-after", "1")
        } else {
            pagerduty_ok()
        }
    })
    .await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}\"\ndeadline = \"10s\"\n",
        pd.url("")
    ));
    let start = Instant::now();

    let results = n.send_and_wait(event(EventKind::Alert)).await;

    assert_eq!(results, vec![Ok(())]);
    assert_eq!(pd.requests().len(), 2);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(pd.requests()[0].json(), pd.requests()[1].json());
}

#[tokio::test]
async fn server_errors_are_retried_until_one_succeeds() {
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let slack = HttpServer::start(move |_| {
        let mut n = seen.lock().unwrap();
        *n += 1;
        match *n {
            1 => Reply::text(500, "rollup_error"),
            2 => Reply::status(503),
            _ => Reply::text(200, "ok"),
        }
    })
    .await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"slack\"\nurl = \"{}\"\ndeadline = \"10s\"\n",
        slack.url("/hook")
    ));

    assert_eq!(n.send_and_wait(event(EventKind::Alert)).await, vec![Ok(())]);
    assert_eq!(slack.requests().len(), 3);
}

#[tokio::test]
async fn a_notifier_that_never_answers_neither_blocks_send_nor_outlives_its_deadline() {
    let silent = HttpServer::start(|_| Reply::status(200).after(Duration::from_secs(3600))).await;
    let hook = HttpServer::start(|_| Reply::status(200)).await;
    let n = notifiers(&format!(
        "[[notify]]\nname = \"silent\"\ntype = \"slack\"\nurl = \"{}\"\ntimeout = \"200ms\"\ndeadline = \"1s\"\n\n\
         [[notify]]\ntype = \"webhook\"\nurl = \"{}\"\n",
        silent.url("/hook"),
        hook.url("/events")
    ));
    let start = Instant::now();

    let deliveries = n.send(event(EventKind::RollbackPerformed));

    assert!(
        start.elapsed() < Duration::from_millis(500),
        "send returned after {:?}",
        start.elapsed()
    );
    assert_eq!(deliveries.len(), 2);
    let results = deliveries.wait().await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the silent notifier gave up after {:?}, past its 1s deadline",
        start.elapsed()
    );
    let err = results[0].as_ref().unwrap_err();
    assert!(err.contains("silent"), "{err}");
    assert!(
        err.contains("timed out") || err.contains("deadline"),
        "{err}"
    );
    assert_eq!(results[1], Ok(()));
    assert!(!silent.requests().is_empty());
}

#[tokio::test]
async fn a_resolve_never_overtakes_its_trigger() {
    // PagerDuty takes 300ms to accept the trigger; the resolve must not be
    // sent before that answer, or it could arrive first and leave the alert
    // open for good.
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let pd = HttpServer::start(move |r| {
        let action = r.json()["event_action"].as_str().unwrap().to_string();
        let reply = if action == "trigger" {
            pagerduty_ok().after(Duration::from_millis(300))
        } else {
            pagerduty_ok()
        };
        seen.lock().unwrap().push((action, Instant::now()));
        reply
    })
    .await;
    let n = notifiers(&format!(
        "[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}\"\n",
        pd.url("")
    ));

    let trigger = n.send(event(EventKind::Alert));
    let resolve = n.send(event(EventKind::Resolved));

    assert_eq!(resolve.wait().await, vec![Ok(())]);
    assert_eq!(trigger.wait().await, vec![Ok(())]);
    let arrivals = arrivals.lock().unwrap();
    let actions: Vec<&str> = arrivals.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions, ["trigger", "resolve"]);
    let gap = arrivals[1].1 - arrivals[0].1;
    assert!(
        gap >= Duration::from_millis(300),
        "the resolve was sent {gap:?} after the trigger, before its answer"
    );
}

/// A log sink for one test: every line the agent logs on this thread.
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

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn secrets_appear_in_no_error_debug_output_or_log_line() {
    use tracing_subscriber::util::SubscriberInitExt;
    let logs = Logs::default();
    let sink = logs.clone();
    let _logging = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .finish()
        .set_default();

    // Stand-ins that echo what they were sent, as a careless proxy might.
    let slack_token = "slackpathtoken123456";
    let header_token = "headertoken7890";
    let slack = HttpServer::start(|r| Reply::text(403, &format!("invalid_token {}", r.path))).await;
    let pd = HttpServer::start(|r| {
        Reply::json(
            400,
            json!({"status": "invalid event", "message": format!("bad key {}", r.json()["routing_key"])}),
        )
    })
    .await;
    let hook = HttpServer::start(|r| {
        Reply::text(
            503,
            &format!("{} {}", r.path, r.header("authorization").unwrap_or("")),
        )
    })
    .await;
    let config = config(&format!(
        "[[notify]]\ntype = \"slack\"\nurl = \"{}\"\n\n\
         [[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}\"\n\n\
         [[notify]]\ntype = \"webhook\"\nurl = \"{}\"\nheaders = {{ Authorization = \"Bearer {header_token}\" }}\ntimeout = \"200ms\"\ndeadline = \"1s\"\n",
        slack.url(&format!("/services/T1/B1/{slack_token}")),
        pd.url(""),
        hook.url("/hooks/webhookpathtoken42"),
    ));
    let n = Notifiers::build(&config.notify).unwrap();

    let results = n.send_and_wait(event(EventKind::Alert)).await;

    assert!(results.iter().all(Result::is_err), "{results:?}");
    let logs = logs.text();
    assert_eq!(
        logs.matches("notification failed").count(),
        3,
        "each failure is logged:\n{logs}"
    );
    let shown = [
        ("errors", format!("{results:?}")),
        ("config", format!("{config:?}")),
        ("notifiers", format!("{n:?}")),
        ("logs", logs),
    ];
    for (what, text) in &shown {
        for secret in [slack_token, ROUTING_KEY, header_token, "webhookpathtoken42"] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
    }
    assert!(shown[0].1.contains("invalid_token ***"), "{}", shown[0].1);
}

#[tokio::test]
async fn deliveries_are_counted_by_notifier_and_outcome() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let ok = HttpServer::start(|_| Reply::status(200)).await;
    let refused = HttpServer::start(|_| Reply::status(401)).await;
    let n = notifiers(&format!(
        "[[notify]]\nname = \"ops-hook\"\ntype = \"webhook\"\nurl = \"{}\"\n\n\
         [[notify]]\ntype = \"slack\"\nurl = \"{}\"\n",
        ok.url("/events"),
        refused.url("/hook")
    ));

    n.send_and_wait(event(EventKind::Alert)).await;
    n.send_and_wait(event(EventKind::Resolved)).await;

    let mut counts = Vec::new();
    for (key, _, help, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        assert_eq!(key.name(), "backstop_notifications_total");
        assert!(help.is_some_and(|h| !h.is_empty()), "HELP text");
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let DebugValue::Counter(v) = value else {
            panic!("a counter")
        };
        counts.push((labels.join(","), v));
    }
    counts.sort();
    assert_eq!(
        counts,
        [
            ("notifier=ops-hook,outcome=failed".to_string(), 0),
            ("notifier=ops-hook,outcome=sent".to_string(), 2),
            ("notifier=slack,outcome=failed".to_string(), 2),
            ("notifier=slack,outcome=sent".to_string(), 0),
        ]
    );
}

#[test]
fn notify_settings_default_to_every_event_a_10s_timeout_and_a_60s_deadline() {
    let c =
        config("[[notify]]\ntype = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/X\"\n");
    let n = &c.notify[0];
    assert_eq!(n.name, "slack");
    assert_eq!(n.type_name(), "slack");
    assert_eq!(n.events.len(), 7);
    assert_eq!(n.timeout, Duration::from_secs(10));
    assert_eq!(n.deadline, Duration::from_secs(60));
    let Some(backstop::notify::NotifySpec::Slack(_)) = c.notify.first().map(|n| &n.spec) else {
        panic!("a slack notifier")
    };
}

#[test]
fn notify_configuration_problems_name_their_key_and_line() {
    // The [[notify]] header is on line 4; its first key on line 5.
    let cases = [
        (
            "type = \"teams\"",
            "notify[0].type: unknown notifier type \"teams\", expected one of slack, pagerduty, webhook, email (line 5)",
        ),
        (
            "url = \"https://hooks.slack.com/x\"",
            "notify[0].type: required key is missing (line 4)",
        ),
        ("type = \"slack\"", "notify[0].url: required key is missing (line 4)"),
        (
            "type = \"slack\"\nurl = \"ftp://hooks.example/T/B/sekrit\"",
            "notify[0].url: expected an https URL (or http, for a local stand-in) (line 6)",
        ),
        (
            "type = \"slack\"\nurl = \"${SLACK_WEBHOOK_URL}\"",
            "notify[0].url: environment variable SLACK_WEBHOOK_URL is not set (write ${SLACK_WEBHOOK_URL:-default} to allow that) (line 6)\n\
             notify[0].url: must not be empty (line 6)",
        ),
        (
            "type = \"slack\"\nurl = \"https://h.example/x\"\nchannel = \"#ops\"",
            "notify[0].channel: unknown key, expected url (line 7)",
        ),
        (
            "type = \"pagerduty\"\nrouting_key = \"\"",
            "notify[0].routing_key: must not be empty (line 6)",
        ),
        (
            "type = \"pagerduty\"\nrouting_key = \"k\"\napi_url = \"events.pagerduty.com\"",
            "notify[0].api_url: expected an https URL (or http, for a local stand-in) (line 7)",
        ),
        (
            "type = \"webhook\"\nurl = \"https://h.example/x\"\nheaders = { \"X Token\" = \"t\" }",
            "notify[0].headers.X Token: is not a valid header name (line 7)",
        ),
        (
            "type = \"webhook\"\nurl = \"https://h.example/x\"\nevents = [\"alert\", \"rolback\"]",
            "notify[0].events[1]: unknown event \"rolback\", expected one of alert, rollback_held, rollback, rollback_failed, rollback_not_effective, unhealthy, resolved (line 7)",
        ),
        (
            "type = \"webhook\"\nurl = \"https://h.example/x\"\nevents = []",
            "notify[0].events: must name at least one event (leave it out for all) (line 7)",
        ),
        (
            "type = \"webhook\"\nurl = \"https://h.example/x\"\ntimeout = \"10x\"",
            "notify[0].timeout: invalid duration \"10x\" (use a number and a unit: 250ms, 5s, 15m, 1h) (line 7)",
        ),
        (
            "type = \"webhook\"\nurl = \"https://h.example/x\"\ndeadline = \"5s\"",
            "notify[0].deadline: 5s is shorter than timeout 10s (line 7)",
        ),
        (
            "type = \"webhook\"\nurl = \"https://h.example/x\"\nname = \"ops hook\"",
            "notify[0].name: \"ops hook\" must be 1-64 characters of letters, digits, '_', '-' or '.' (line 7)",
        ),
        (
            "type = \"slack\"\nurl = \"https://h.example/a\"\n\n[[notify]]\ntype = \"slack\"\nurl = \"https://h.example/b\"",
            "notify[1].name: duplicate notifier name \"slack\": give each a name (line 8)",
        ),
    ];
    for (notify, want) in cases {
        let text = format!("[service]\nname = \"web\"\n\n[[notify]]\n{notify}\n");
        let errors = Config::parse(&text, |_| None).expect_err(notify);
        let got: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(got.join("\n"), want, "{text}");
        assert!(!errors.to_string().contains("sekrit"));
    }
}

/// PagerDuty's Events API v2 on loopback, as the agent meets it end to end:
/// it keeps the alerts open by `dedup_key`. Shapes from PagerDuty's own Go
/// client, github.com/PagerDuty/go-pagerduty, `event_v2.go`: a `V2Event`
/// has `routing_key`, `event_action` (`trigger`, `acknowledge`,
/// `resolve`), `dedup_key` and a `payload` left out when empty (a resolve
/// needs none; a trigger's has `summary`, `source` and `severity`:
/// `critical`, `error`, `warning` or `info`); the answer, `V2EventResponse`,
/// is `{"status","message","dedup_key"}`, 202 `success` / `Event processed`
/// when accepted, 400 for an invalid event (`BadRequest`), 429 when
/// throttled (`RateLimited`). `change_events.go`: a change event
/// (`/v2/change/enqueue`) is `routing_key` and a `payload` with `summary`.
/// A resolve of a `dedup_key` with no open alert is accepted and changes
/// nothing, as PagerDuty does.
struct PagerDuty {
    server: HttpServer,
    /// Every event accepted at `/v2/enqueue`, as (action, dedup_key).
    events: Arc<Mutex<Vec<(String, String)>>>,
    /// The alerts open now, by dedup_key.
    open: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Answers refused with 400, as said.
    refused: Arc<Mutex<Vec<String>>>,
}

impl PagerDuty {
    /// `throttle_first_resolve`: the first resolve is answered 429 with a
    /// `Retry-After`, as when events arrive too fast.
    async fn start(throttle_first_resolve: bool) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let throttle = Arc::new(Mutex::new(throttle_first_resolve));
        let (e, o, x) = (events.clone(), open.clone(), refused.clone());
        let server = HttpServer::start(move |r| {
            let body = r.json();
            let invalid = |why: &str| {
                x.lock().unwrap().push(why.to_string());
                Reply::json(
                    400,
                    json!({"status": "invalid event", "message": "Event object is invalid", "errors": [why]}),
                )
            };
            if r.method != "POST" || r.header("content-type") != Some("application/json") {
                return invalid("not a JSON POST");
            }
            if body["routing_key"].as_str().is_none_or(|k| k.len() != 32) {
                return invalid("'routing_key' is invalid");
            }
            if r.path == "/v2/change/enqueue" {
                if body["payload"]["summary"].as_str().is_none_or(str::is_empty) {
                    return invalid("'payload.summary' is missing");
                }
                return Reply::json(
                    202,
                    json!({"status": "success", "message": "Change event processed"}),
                );
            }
            if r.path != "/v2/enqueue" {
                return Reply::status(404);
            }
            let action = body["event_action"].as_str().unwrap_or("").to_string();
            let key = body["dedup_key"].as_str().unwrap_or("").to_string();
            if key.is_empty() || key.chars().count() > 255 {
                return invalid("'dedup_key' is invalid");
            }
            match action.as_str() {
                "trigger" => {
                    let p = &body["payload"];
                    for field in ["summary", "source"] {
                        if p[field].as_str().is_none_or(str::is_empty) {
                            return invalid(&format!("'payload.{field}' is missing"));
                        }
                    }
                    let severities = ["critical", "error", "warning", "info"];
                    if !p["severity"].as_str().is_some_and(|s| severities.contains(&s)) {
                        return invalid("'payload.severity' is invalid");
                    }
                    o.lock().unwrap().insert(key.clone());
                }
                "resolve" => {
                    if std::mem::take(&mut *throttle.lock().unwrap()) {
                        return Reply::json(
                            429,
                            json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly.  Please retry later."}),
                        )
                        .header("retry-after", "1");
                    }
                    o.lock().unwrap().remove(&key);
                }
                "acknowledge" => {}
                _ => return invalid("'event_action' is invalid"),
            }
            e.lock().unwrap().push((action, key.clone()));
            Reply::json(
                202,
                json!({"status": "success", "message": "Event processed", "dedup_key": key}),
            )
        })
        .await;
        Self {
            server,
            events,
            open,
            refused,
        }
    }

    fn notify_section(&self) -> String {
        format!(
            "[[notify]]\ntype = \"pagerduty\"\nrouting_key = \"{ROUTING_KEY}\"\napi_url = \"{}\"\n",
            self.server.url("")
        )
    }

    fn events(&self) -> Vec<(String, String)> {
        self.events.lock().unwrap().clone()
    }

    fn open(&self) -> Vec<String> {
        self.open.lock().unwrap().iter().cloned().collect()
    }

    /// Waits (up to 30 s) until `f` holds of the events accepted.
    async fn until(&self, what: &str, f: impl Fn(&[(String, String)]) -> bool) {
        for _ in 0..300 {
            if f(&self.events()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}; PagerDuty got {:#?}",
            self.events()
        );
    }
}

fn has(events: &[(String, String)], action: &str, key: &str) -> bool {
    events.iter().any(|(a, k)| a == action && k == key)
}

/// The agent's `backstop_notifications_total` for `outcome`.
async fn notifications(port: u16, outcome: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("backstop_notifications_total")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An alert rule on the health probe: it fires at the first failure.
const HEALTH_ALERT: &str = r#"
[[rule]]
name = "health alert"
probe = "health"
when = "consecutive_failures >= 1"
action = "alert"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_an_incident_opened_for_a_bad_deployment_is_resolved_once_it_is_rolled_back() {
    use crate::e2e::{config_with, service, until, Agent};
    let pd = PagerDuty::start(true).await;
    let (svc, server) = service().await;
    let switch = svc.clone();
    let platform = HttpServer::start(move |r| {
        let to = r.json()["return_to"].as_str().unwrap_or("v1").to_string();
        switch.set(&to, true);
        Reply::json(200, json!({ "ok": true }))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let port = backstop_tests::closed_port();
    let extra = format!("{HEALTH_ALERT}\n{}", pd.notify_section());
    let cfg = config_with(dir.path(), port, &server, &platform, "2s", &extra);
    let _agent = Agent::start(&cfg, port);
    until(port, "v1 stable", |s| {
        s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "stable"
    })
    .await;

    svc.set("v2", false);
    let key = "backstop/shop/v2/health alert";
    pd.until("the alert on v2 resolved", |e| has(e, "resolve", key))
        .await;
    let s = crate::e2e::status(port).await;
    assert_eq!(s["last_rollback"]["deployment"], "v2", "{s:#}");
    let events = pd.events();
    let trigger = events.iter().position(|(a, k)| a == "trigger" && k == key);
    let resolve = events.iter().position(|(a, k)| a == "resolve" && k == key);
    assert!(trigger < resolve, "triggered, then resolved: {events:#?}");
    assert!(trigger.is_some(), "{events:#?}");
    // Back on v1 nothing is open, the throttled resolve was sent again,
    // and no notification failed.
    until(port, "back on v1", |s| s["deployment"]["id"] == "v1").await;
    assert_eq!(pd.open(), Vec::<String>::new(), "{:#?}", pd.events());
    assert_eq!(*pd.refused.lock().unwrap(), Vec::<String>::new());
    assert_eq!(notifications(port, "failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_a_held_rollback_is_resolved_once_its_rule_clears_or_its_deployment_is_replaced()
{
    use crate::e2e::{config_with, service, Agent};
    let pd = PagerDuty::start(false).await;
    let (svc, server) = service().await;
    let platform = HttpServer::start(|_| Reply::json(200, json!({ "ok": true }))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = backstop_tests::closed_port();
    // A long watch: v1 is never stable, so there is nothing to return to
    // and a rollback of v1 is held back.
    let cfg = config_with(
        dir.path(),
        port,
        &server,
        &platform,
        "10m",
        &pd.notify_section(),
    );
    let _agent = Agent::start(&cfg, port);
    crate::e2e::until(port, "v1 watched", |s| {
        s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "watching"
    })
    .await;

    // The rule holds: held back and paged; it clears: resolved.
    let v1 = "backstop/shop/v1/health failing";
    svc.set("v1", false);
    pd.until("the held rollback of v1", |e| has(e, "trigger", v1))
        .await;
    assert_eq!(pd.open(), [v1]);
    svc.set("v1", true);
    pd.until("v1's rule clears", |e| has(e, "resolve", v1))
        .await;
    assert_eq!(pd.open(), Vec::<String>::new());

    // It holds again; then v2 replaces v1 while it does: resolved.
    svc.set("v1", false);
    pd.until("v1 held again", |e| {
        e.iter().filter(|(a, k)| a == "trigger" && k == v1).count() == 2
    })
    .await;
    assert_eq!(pd.open(), [v1]);
    svc.set("v2", true);
    pd.until("v1 replaced", |e| {
        e.iter().filter(|(a, k)| a == "resolve" && k == v1).count() == 2
    })
    .await;
    assert_eq!(pd.open(), Vec::<String>::new(), "{:#?}", pd.events());
    assert_eq!(platform.requests().len(), 0, "never rolled back");
    assert_eq!(notifications(port, "failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_an_incident_opened_before_a_restart_is_resolved_by_the_restarted_agent() {
    use crate::e2e::{config_with, service, Agent};
    let pd = PagerDuty::start(false).await;
    let (svc, server) = service().await;
    let platform = HttpServer::start(|_| Reply::json(200, json!({ "ok": true }))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = backstop_tests::closed_port();
    let cfg = config_with(
        dir.path(),
        port,
        &server,
        &platform,
        "10m",
        &pd.notify_section(),
    );
    let v1 = "backstop/shop/v1/health failing";
    {
        let _agent = Agent::start(&cfg, port);
        crate::e2e::until(port, "v1 watched", |s| {
            s["deployment"]["id"] == "v1" && s["deployment"]["state"] == "watching"
        })
        .await;
        svc.set("v1", false);
        pd.until("the held rollback of v1", |e| has(e, "trigger", v1))
            .await;
    }
    // The agent is killed; v2 replaces v1 meanwhile.
    svc.set("v2", true);
    let _agent = Agent::start(&cfg, port);
    pd.until("v1's incident resolved after the restart", |e| {
        has(e, "resolve", v1)
    })
    .await;
    assert_eq!(pd.open(), Vec::<String>::new(), "{:#?}", pd.events());
    // What v1 may have opened is closed too, `manual` among it, which was
    // never opened: accepted, and no notification failed.
    pd.until("v1's manual key closed", |e| {
        has(e, "resolve", "backstop/shop/v1/manual")
    })
    .await;
    assert_eq!(notifications(port, "failed").await, 0.0);
    assert_eq!(*pd.refused.lock().unwrap(), Vec::<String>::new());
}
