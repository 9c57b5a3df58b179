//! The real `backstop run` as a child process whose output is kept: what
//! the secrets, faults and reload tests start, poke, signal and read back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backstop_tests::backstop_bin;

/// A running agent, killed on drop. Its stdout and stderr go to files in
/// its directory, so the test can read everything it said.
pub struct Daemon {
    child: Child,
    pub port: u16,
    out: PathBuf,
    err: PathBuf,
}

impl Daemon {
    /// Writes `text` to `dir/backstop.toml` (mode 0600) and returns its path.
    pub fn write_config(dir: &Path, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("backstop.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// Starts `backstop run` on `config` with `--log-format log_format` and
    /// extra environment, and waits until it listens on `port`.
    pub fn start(config: &Path, port: u16, log_format: &str, env: &[(&str, &str)]) -> Self {
        let mut d = Self::spawn(config, port, log_format, env, "");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!(
                    "the agent exited with {status} before listening:\n{}",
                    d.output()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the agent did not listen on {port} within 30s:\n{}",
                d.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// Like [`Daemon::start`] but without waiting; `tag` keeps the output
    /// files of several runs in one directory apart.
    pub fn spawn(
        config: &Path,
        port: u16,
        log_format: &str,
        env: &[(&str, &str)],
        tag: &str,
    ) -> Self {
        let dir = config.parent().unwrap();
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let out = dir.join(format!("stdout{tag}-{n}.log"));
        let err = dir.join(format!("stderr{tag}-{n}.log"));
        let mut cmd = Command::new(backstop_bin());
        cmd.args(["run", "--log-format", log_format, "--config"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&err).unwrap()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start backstop");
        Self {
            child,
            port,
            out,
            err,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.out), read(&self.err))
    }

    /// Its resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {}", self.pid());
    }

    /// Whether the process has exited: `Some(code)` (`None` inside when a
    /// signal ended it), or `None` while it runs.
    pub fn try_exit(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().unwrap().map(|s| s.code())
    }

    /// Waits up to `within` for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = std::time::Instant::now();
        while start.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(self.url(path)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn status(&self) -> serde_json::Value {
        let (_, text) = self.get("/status").await;
        serde_json::from_str(&text).unwrap()
    }

    /// Polls `/status` until `f` holds (up to 30 s).
    pub async fn until(
        &self,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(self.url("/status")).await {
                if let Ok(s) = r.json::<serde_json::Value>().await {
                    if f(&s) {
                        return s;
                    }
                    last = s;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}; last /status:\n{last:#}\nlog:\n{}",
            self.output()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last observation of the probe named `name` in a `/status` document.
pub fn probe<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["probes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// Runs the binary with `args` to its end; (exit code, stdout + stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(backstop_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
