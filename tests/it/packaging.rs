//! What ships beside the binary: the systemd unit and the example
//! configuration.

use std::process::Command;

use backstop_tests::backstop_bin;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_systemd_unit_verifies_without_a_word() {
    let unit = std::fs::read_to_string(repo().join("systemd/backstop.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/backstop run"));
    for directive in [
        "StateDirectory=backstop",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    // Point ExecStart at the binary just built, so verify can check it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backstop.service");
    let bin = backstop_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/backstop", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify said:\n{said}"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let out = Command::new(backstop_bin())
        .args(["validate", "--config"])
        .arg(repo().join("config.example.toml"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_systemd_unit_exposes_little_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backstop.service");
    std::fs::copy(repo().join("systemd/backstop.service"), &path).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = said
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for backstop.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{said}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{said}");
}

/// A `NOTIFY_SOCKET` as systemd makes it for a `Type=notify` unit: a path or,
/// with `@`, an abstract name.
fn notify_socket(
    dir: &std::path::Path,
    abstract_name: bool,
) -> (std::os::unix::net::UnixDatagram, String) {
    use std::os::unix::net::UnixDatagram;
    if abstract_name {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("backstop-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
    } else {
        let path = dir.join("notify.sock");
        (
            UnixDatagram::bind(&path).unwrap(),
            path.to_str().unwrap().to_string(),
        )
    }
}

#[test]
fn under_systemd_the_agent_says_ready_when_healthy_and_pings_the_watchdog() {
    use std::time::{Duration, Instant};
    for abstract_name in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (socket, address) = notify_socket(dir.path(), abstract_name);
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let port = backstop_tests::closed_port();
        let config = dir.path().join("backstop.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n\
                 [service]\nname = \"web\"\n\n[deployment]\nid = \"v1\"\n\n\
                 [[probe]]\nname = \"port\"\nlevel = 1\ntype = \"tcp\"\naddress = \"127.0.0.1:{}\"\ninterval = \"200ms\"\n",
                dir.path().join("state").display(),
                backstop_tests::closed_port()
            ),
        )
        .unwrap();
        let mut agent = Command::new(backstop_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &address)
            // Half of it: a ping every 200ms.
            .env("WATCHDOG_USEC", "400000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut messages = Vec::new();
        let mut buf = [0u8; 512];
        let started = Instant::now();
        while messages.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
            match socket.recv(&mut buf) {
                Ok(n) => messages.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) => {
                    let _ = agent.kill();
                    panic!("{address}: after {messages:?}: {e}");
                }
            }
            if messages.len() == 1 {
                // Ready means /healthz answers.
                let ok = Command::new(backstop_bin())
                    .args(["healthcheck", "--url"])
                    .arg(format!("http://127.0.0.1:{port}/healthz"))
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "READY=1 before /healthz answers");
            }
        }
        let _ = agent.kill();
        let _ = agent.wait();
        assert_eq!(messages[0], "READY=1\nSTATUS=probing", "{address}");
        assert!(
            messages[1..].iter().all(|m| m == "WATCHDOG=1"),
            "{address}: {messages:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(15), "{address}");
    }
}

#[test]
fn the_healthcheck_command_answers_for_a_running_agent_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = backstop_tests::closed_port();
    let config = dir.path().join("backstop.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n[service]\nname = \"web\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let check = || {
        Command::new(backstop_bin())
            .args(["healthcheck", "--timeout", "2s"])
            .env("BACKSTOP_HEALTHCHECK_URL", &url)
            .output()
            .unwrap()
    };
    let before = check();
    assert_eq!(before.status.code(), Some(1), "no agent yet");
    assert!(
        String::from_utf8_lossy(&before.stderr).contains("unhealthy"),
        "{before:?}"
    );
    let mut agent = Command::new(backstop_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    backstop_tests::wait_for_port(port);
    let during = check();
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(during.status.code(), Some(0), "{during:?}");
}

/// The instruction's arguments when written in exec form: `["a", "b"]`.
fn exec_form(line: &str) -> Vec<String> {
    let json = &line[line.find('[').expect("exec form")..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn the_container_image_runs_unprivileged_with_its_healthcheck() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    // Continuation lines joined, comments dropped.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let instr = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| l.split_whitespace().next() == Some(name))
            .collect()
    };
    let froms = instr("FROM");
    assert_eq!(froms.len(), 2, "a builder stage and a runtime stage");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    // The runtime stage: after the last FROM.
    let runtime_at = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let runtime = &lines[runtime_at..];
    let user = runtime
        .iter()
        .find(|l| l.starts_with("USER "))
        .expect("USER in the runtime stage");
    let uid = user[5..].split(':').next().unwrap().trim();
    assert!(uid != "0" && uid != "root", "{user}");
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("VOLUME") && l.contains("/var/lib/backstop")),
        "the state directory is a volume"
    );
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY")
            && l.contains(&format!("--chown={uid}"))
            && l.ends_with("/var/lib/backstop")),
        "the state directory belongs to the user"
    );
    let entrypoint = exec_form(instr("ENTRYPOINT")[0]);
    assert_eq!(entrypoint, ["/usr/local/bin/backstop"]);
    assert_eq!(exec_form(instr("CMD").last().unwrap())[0], "run");

    // The HEALTHCHECK is `backstop healthcheck`, in exec form (no shell in
    // the image): run its arguments against a live agent.
    let health = instr("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    let argv = exec_form(health[0]);
    assert_eq!(argv[0], "/usr/local/bin/backstop");
    assert_eq!(argv[1], "healthcheck");
    let dir = tempfile::tempdir().unwrap();
    let port = backstop_tests::closed_port();
    let config = dir.path().join("backstop.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n[service]\nname = \"web\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut agent = Command::new(backstop_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    backstop_tests::wait_for_port(port);
    let out = Command::new(backstop_bin())
        .args(&argv[1..])
        .env(
            "BACKSTOP_HEALTHCHECK_URL",
            format!("http://127.0.0.1:{port}/healthz"),
        )
        .output()
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(out.status.success(), "{out:?}");

    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for entry in [".git", "target"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

#[test]
fn version_completions_and_man_page_come_from_the_command_line() {
    let run = |args: &[&str]| {
        let out = Command::new(backstop_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run(&["--version"]);
    let want = format!("backstop {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&want), "{version}");
    let target = version
        .trim_end()
        .trim_end_matches(')')
        .rsplit(", ")
        .next()
        .unwrap();
    assert!(target.contains("-linux-"), "no target in {version}");

    for (shell, marker) in [
        ("bash", "complete -F _backstop"),
        ("zsh", "#compdef backstop"),
        ("fish", "complete -c backstop"),
    ] {
        let script = run(&["completions", shell]);
        assert!(script.contains(marker), "{shell}:\n{script}");
        for sub in ["run", "check", "validate", "healthcheck"] {
            assert!(script.contains(sub), "{shell} completes no {sub}");
        }
    }
    let bash = run(&["completions", "bash"]);
    let out = Command::new("bash")
        .arg("-n")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bash.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(out.success(), "bash -n rejects the completion script");

    let man = run(&["man"]);
    assert!(man.contains(".TH backstop 1"), "{man}");
    for sub in ["run", "check", "validate", "demo", "healthcheck"] {
        assert!(man.contains(sub), "the man page lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    run(&["man", "--dir", dir.path().to_str().unwrap()]);
    for page in ["backstop.1", "backstop-run.1", "backstop-check.1"] {
        assert!(dir.path().join(page).exists(), "no {page}");
    }
}
