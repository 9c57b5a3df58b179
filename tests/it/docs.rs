//! `docs/configuration.md` is generated from the doc comments of the
//! configuration types, so it cannot drift from them: this test generates it
//! again and fails when the file differs, when a key's doc comment does not
//! state its default (or that it is required), when a probe type, rollback
//! target, notifier type or nested table has no section, and when a probe
//! type has no table of the signals it yields.
//!
//! To regenerate: `BACKSTOP_BLESS=1 cargo test -p backstop-tests --test it docs::`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One table of the document: a heading, and the struct its keys come from.
struct Section {
    heading: &'static str,
    file: &'static str,
    ty: &'static str,
}

const fn s(heading: &'static str, file: &'static str, ty: &'static str) -> Section {
    Section { heading, file, ty }
}

/// The document's sections, in its order.
const SECTIONS: &[Section] = &[
    s("[agent]", "agent/src/config/agent.rs", "AgentSection"),
    s("[service]", "agent/src/config/agent.rs", "ServiceSection"),
    s(
        "[deployment]",
        "agent/src/deployment/config.rs",
        "DeploymentSection",
    ),
    s(
        "[[probe]]: every type",
        "agent/src/probe_config.rs",
        "ProbeCommon",
    ),
    s(
        "[[probe]] type = \"http\"",
        "probes/src/http.rs",
        "HttpConfig",
    ),
    s(
        "[[probe]] expect_body = [...]",
        "probes/src/request.rs",
        "BodyAssertion",
    ),
    s("[[probe]] type = \"tcp\"", "probes/src/tcp.rs", "TcpConfig"),
    s(
        "[[probe]] type = \"postgres\"",
        "probes/src/postgres.rs",
        "PostgresConfig",
    ),
    s(
        "[[probe]] type = \"redis\"",
        "probes/src/redis.rs",
        "RedisConfig",
    ),
    s(
        "[[probe]] type = \"resources\"",
        "probes/src/resources.rs",
        "ResourcesConfig",
    ),
    s(
        "[[probe]] type = \"scenario\"",
        "probes/src/scenario.rs",
        "ScenarioConfig",
    ),
    s("[[probe.step]]", "probes/src/scenario.rs", "StepConfig"),
    s(
        "[[probe]] type = \"scrape\"",
        "probes/src/scrape.rs",
        "ScrapeConfig",
    ),
    s(
        "[[probe]] type = \"promql\"",
        "probes/src/promql.rs",
        "PromqlConfig",
    ),
    s("[[rule]]", "agent/src/rule_config.rs", "RuleConfig"),
    s("[store]", "agent/src/store/config.rs", "StoreSection"),
    s("[fleet]", "agent/src/fleet/config.rs", "FleetSection"),
    s(
        "[rollback]",
        "agent/src/rollback/config.rs",
        "CommonSection",
    ),
    s(
        "[rollback.railway]",
        "agent/src/rollback/railway.rs",
        "RailwayConfig",
    ),
    s(
        "[rollback.kubernetes]",
        "agent/src/rollback/kubernetes.rs",
        "KubernetesConfig",
    ),
    s(
        "[rollback.argo_rollouts]",
        "agent/src/rollback/argo_rollouts.rs",
        "ArgoRolloutsConfig",
    ),
    s(
        "[rollback.render]",
        "agent/src/rollback/render.rs",
        "RenderConfig",
    ),
    s(
        "[rollback.vercel]",
        "agent/src/rollback/vercel.rs",
        "VercelConfig",
    ),
    s(
        "[rollback.heroku]",
        "agent/src/rollback/heroku.rs",
        "HerokuConfig",
    ),
    s(
        "[rollback.aws_lambda]",
        "agent/src/rollback/aws_lambda.rs",
        "AwsLambdaConfig",
    ),
    s(
        "[rollback.aws_ecs]",
        "agent/src/rollback/aws_ecs.rs",
        "AwsEcsConfig",
    ),
    s(
        "[rollback.aws_codedeploy]",
        "agent/src/rollback/aws_codedeploy.rs",
        "AwsCodeDeployConfig",
    ),
    s(
        "[rollback.webhook]",
        "agent/src/rollback/webhook.rs",
        "WebhookTargetConfig",
    ),
    s(
        "[rollback.exec]",
        "agent/src/rollback/exec.rs",
        "ExecConfig",
    ),
    s(
        "[[notify]]: every type",
        "agent/src/notify/config.rs",
        "NotifyCommon",
    ),
    s(
        "[[notify]] type = \"slack\"",
        "agent/src/notify/slack.rs",
        "SlackConfig",
    ),
    s(
        "[[notify]] type = \"pagerduty\"",
        "agent/src/notify/pagerduty.rs",
        "PagerDutyConfig",
    ),
    s(
        "[[notify]] type = \"webhook\"",
        "agent/src/notify/webhook.rs",
        "WebhookNotifyConfig",
    ),
    s(
        "[[notify]] type = \"email\"",
        "agent/src/notify/email.rs",
        "EmailConfig",
    ),
];

const INTRO: &str = "# Configuration reference

<!-- Generated from the doc comments of the configuration types by
tests/it/docs.rs: do not edit by hand. After changing a type, regenerate with
BACKSTOP_BLESS=1 cargo test -p backstop-tests --test it docs:: -->

Every key backstop reads, section by section, with its default. The file is
TOML; durations are strings such as `\"250ms\"`, `\"5s\"` or `\"15m\"`; any string
may use `${VAR}` or `${VAR:-default}`; unknown keys are errors.
[config.example.toml](../config.example.toml) shows them in use, and
`backstop validate --config FILE` checks a file without touching the network.
";

/// One documented key.
struct Key {
    name: String,
    doc: String,
}

/// Joins `///` lines into one paragraph, with intra-doc links as code.
fn doc_of(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs {
        if let syn::Meta::NameValue(nv) = &a.meta {
            if nv.path.is_ident("doc") {
                if let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) = &nv.value
                {
                    lines.push(s.value().trim().to_string());
                }
            }
        }
    }
    lines.join(" ").replace("[`", "`").replace("`]", "`")
}

/// `rename = "..."` and `skip` of a field's `#[serde(...)]`.
fn serde_of(attrs: &[syn::Attribute]) -> (Option<String>, bool) {
    let (mut rename, mut skip) = (None, false);
    for a in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        a.parse_nested_meta(|m| {
            if m.path.is_ident("rename") {
                let lit: syn::LitStr = m.value()?.parse()?;
                rename = Some(lit.value());
            } else if m.path.is_ident("skip") || m.path.is_ident("skip_deserializing") {
                skip = true;
            } else if m.input.peek(syn::Token![=]) {
                let _: syn::Expr = m.value()?.parse()?;
            }
            Ok(())
        })
        .unwrap();
    }
    (rename, skip)
}

fn derives_deserialize(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("derive"))
        .any(|a| {
            let mut found = false;
            a.parse_nested_meta(|m| {
                found |= m
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "Deserialize");
                Ok(())
            })
            .unwrap();
            found
        })
}

/// Every identifier in a type, generic arguments included.
fn type_idents(ty: &syn::Type, out: &mut BTreeSet<String>) {
    if let syn::Type::Path(p) = ty {
        for seg in &p.path.segments {
            out.insert(seg.ident.to_string());
            if let syn::PathArguments::AngleBracketed(args) = &seg.arguments {
                for arg in &args.args {
                    if let syn::GenericArgument::Type(t) = arg {
                        type_idents(t, out);
                    }
                }
            }
        }
    }
}

/// The structs of a file that derive `Deserialize`, by name.
fn structs(file: &str) -> BTreeMap<String, syn::ItemStruct> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    parsed
        .items
        .into_iter()
        .filter_map(|item| match item {
            syn::Item::Struct(s) if derives_deserialize(&s.attrs) => Some((s.ident.to_string(), s)),
            _ => None,
        })
        .collect()
}

/// The default a doc comment states: `required`, or what follows `Default`
/// up to the end of its clause.
fn default_of(doc: &str) -> Option<String> {
    if doc.contains("Required") {
        return Some("required".into());
    }
    let at = doc.find("Default")?;
    let rest = doc[at + "Default".len()..]
        .trim_start_matches(':')
        .trim_start();
    let end = [". ", "; ", ": "]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
        .unwrap_or(rest.len());
    let d = rest[..end].trim_end_matches('.').trim();
    (!d.is_empty()).then(|| d.to_string())
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The probe type a section documents, from its heading.
fn probe_kind(heading: &str) -> Option<&str> {
    heading
        .strip_prefix("[[probe]] type = \"")?
        .strip_suffix('"')
}

/// The heading of a probe type's table of signals.
fn signals_heading(kind: &str) -> String {
    format!("### Signals of `{kind}`")
}

/// The percentiles every probe that yields `latency_ms` has in rules.
const PERCENTILES: [&str; 4] = ["p50_ms", "p90_ms", "p95_ms", "p99_ms"];

/// Where a probe type's configuration declares signals of its own.
enum Declares {
    Nothing,
    /// In its own `signals` key.
    Itself,
    /// In the `signals` keys of its nested tables (a scenario's steps).
    Nested,
}

/// The table of the signals a probe type yields (from
/// `backstop_probes::type_signals`), and what rules have besides.
fn signals_table(kind: &str, declares: Declares, problems: &mut Vec<String>) -> String {
    let mut out = format!("\n{}\n\n", signals_heading(kind));
    let signals = match backstop_probes::type_signals(kind) {
        Some(s) if !s.is_empty() => s,
        _ => {
            problems.push(format!("probe type {kind}: type_signals lists no signal"));
            return out;
        }
    };
    out.push_str("| signal | what it is |\n|---|---|\n");
    for s in &signals {
        let _ = writeln!(out, "| `{}` | {} |", s.name, cell(&s.about));
    }
    let whose = match declares {
        Declares::Nothing => None,
        Declares::Itself => Some("its `signals` setting declares"),
        Declares::Nested => Some("the `signals` settings of its steps declare"),
    };
    if let Some(whose) = whose {
        let _ = writeln!(
            out,
            "\nPlus the signals {whose}, numbers read from JSON response bodies."
        );
    }
    let has = |name: &str| signals.iter().any(|s| s.name == name);
    let listed = format!(
        "`{}`, `{}`, `{}` and `{}`",
        PERCENTILES[0], PERCENTILES[1], PERCENTILES[2], PERCENTILES[3]
    );
    let over = "percentiles of its `latency_ms` over a rule's `for` window \
                (and of the baseline's, for `Nx baseline`)";
    if has("latency_ms") {
        if PERCENTILES.iter().any(|p| has(p)) {
            let _ = write!(
                out,
                "\nIt yields {listed} itself, as the table says; where it does not, \
                 they are {over}, as for every probe that yields `latency_ms`.\n"
            );
        } else {
            let _ = write!(
                out,
                "\nLike every probe that yields `latency_ms`, it also has {listed} in rules: {over}.\n"
            );
        }
    }
    out
}

/// Generates the document; problems that make it incomplete are collected.
fn generate(problems: &mut Vec<String>) -> String {
    let mut files: BTreeMap<&str, BTreeMap<String, syn::ItemStruct>> = BTreeMap::new();
    let mut out = String::from(INTRO);
    let documented: BTreeSet<&str> = SECTIONS.iter().map(|s| s.ty).collect();
    for section in SECTIONS {
        let all = files
            .entry(section.file)
            .or_insert_with(|| structs(section.file));
        let Some(item) = all.get(section.ty) else {
            problems.push(format!(
                "{}: no struct {} deriving Deserialize",
                section.file, section.ty
            ));
            continue;
        };
        let _ = write!(out, "\n## `{}`\n\n", section.heading);
        let about = doc_of(&item.attrs);
        // A doc that only names the table, like "`[rollback.exec]`.", says nothing more.
        let bare = about.trim_end_matches('.');
        let only_names =
            bare.starts_with('`') && bare.ends_with('`') && bare.matches('`').count() == 2;
        if !about.is_empty() && !only_names {
            let _ = write!(out, "{about}\n\n");
        }
        out.push_str("| key | default | what it does |\n|---|---|---|\n");
        let mut keys = Vec::new();
        for field in &item.fields {
            let (rename, skip) = serde_of(&field.attrs);
            if skip {
                continue;
            }
            let name = rename.unwrap_or_else(|| field.ident.as_ref().unwrap().to_string());
            let doc = doc_of(&field.attrs);
            // A table nested in this one must have a section of its own.
            let mut idents = BTreeSet::new();
            type_idents(&field.ty, &mut idents);
            for ident in idents {
                if all.contains_key(&ident) && !documented.contains(ident.as_str()) {
                    problems.push(format!(
                        "{}.{name}: the nested table {ident} has no section in SECTIONS",
                        section.ty
                    ));
                }
            }
            keys.push(Key { name, doc });
        }
        for key in keys {
            let default = default_of(&key.doc).unwrap_or_else(|| {
                problems.push(format!(
                    "{} ({}): the doc comment of `{}` states no default: say `Default ...` or `Required`",
                    section.ty, section.file, key.name
                ));
                String::new()
            });
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                key.name,
                cell(&default),
                cell(&key.doc)
            );
        }
        if let Some(kind) = probe_kind(section.heading) {
            // A type whose file has a table with a `signals` key (the
            // probe's own, or its steps') declares signals of its own.
            let has_signals = |s: &syn::ItemStruct| {
                s.fields
                    .iter()
                    .any(|f| f.ident.as_ref().is_some_and(|i| i == "signals"))
            };
            let declares = if has_signals(item) {
                Declares::Itself
            } else if all.values().any(has_signals) {
                Declares::Nested
            } else {
                Declares::Nothing
            };
            out.push_str(&signals_table(kind, declares, problems));
        }
    }
    out
}

#[test]
fn every_probe_type_rollback_target_and_notifier_has_a_section() {
    let headings: BTreeSet<&str> = SECTIONS.iter().map(|s| s.heading).collect();
    for section in backstop::config::SECTIONS {
        if backstop::config::UNSUPPORTED_SECTIONS.contains(section) {
            continue;
        }
        let documented = headings.iter().any(|h| {
            h.starts_with(&format!("[{section}]")) || h.starts_with(&format!("[[{section}]]"))
        });
        assert!(documented, "no section for the top-level [{section}]");
    }
    let mut problems = Vec::new();
    let document = generate(&mut problems);
    for kind in backstop_probes::PROBE_TYPES {
        let h = format!("[[probe]] type = \"{kind}\"");
        assert!(headings.contains(h.as_str()), "no section for {h}");
        assert!(
            document.contains(&format!("{}\n\n| signal |", signals_heading(kind))),
            "no table of the signals of {kind}: {problems:?}"
        );
    }
    for target in backstop::rollback::TARGETS {
        let h = format!("[rollback.{target}]");
        assert!(headings.contains(h.as_str()), "no section for {h}");
    }
    for kind in backstop::notify::NOTIFY_TYPES {
        let h = format!("[[notify]] type = \"{kind}\"");
        assert!(headings.contains(h.as_str()), "no section for {h}");
    }
}

#[test]
fn defaults_are_read_from_doc_comments() {
    let cases = [
        (
            "Address of it. Default `0.0.0.0:9469`.",
            Some("`0.0.0.0:9469`"),
        ),
        (
            "JSON pointer. Default: the whole body, trimmed.",
            Some("the whole body, trimmed"),
        ),
        (
            "Time. Default `5s`, and never more than `interval`.",
            Some("`5s`, and never more than `interval`"),
        ),
        ("A body. Default none; exclusive with `json`.", Some("none")),
        (
            "Follow. Default `false`: a redirect is reported.",
            Some("`false`"),
        ),
        ("At most this many. Default 3.", Some("3")),
        ("The URL. Required.", Some("required")),
        ("The steps. Required, at least one.", Some("required")),
        ("Something undocumented.", None),
    ];
    for (doc, want) in cases {
        assert_eq!(default_of(doc).as_deref(), want, "{doc}");
    }
}

#[test]
fn the_configuration_reference_is_generated_from_the_types() {
    let mut problems = Vec::new();
    let generated = generate(&mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let path = repo().join("docs/configuration.md");
    if std::env::var_os("BACKSTOP_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    if written != generated {
        let line = written
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(written.lines().count().min(generated.lines().count()));
        panic!(
            "docs/configuration.md is out of date (first difference at line {}:\n  written:   {:?}\n  generated: {:?}); \
             regenerate with BACKSTOP_BLESS=1 cargo test -p backstop-tests --test it docs::",
            line + 1,
            written.lines().nth(line).unwrap_or(""),
            generated.lines().nth(line).unwrap_or("")
        );
    }
}
