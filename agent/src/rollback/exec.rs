//! The `exec` target: runs a command of the user's (an argv, no shell) with
//! the rollback in its environment. Exit 0 is success.
//!
//! The command gets the agent's environment plus `BACKSTOP_SERVICE`,
//! `BACKSTOP_DEPLOYMENT`, `BACKSTOP_RETURN_TO` (empty when unknown),
//! `BACKSTOP_REASON`, `BACKSTOP_RULE`, `BACKSTOP_EVIDENCE` (a JSON array)
//! and `BACKSTOP_FENCING_TOKEN` (with `[fleet]`, the lease's fencing token,
//! which grows with every lease: a command may refuse one lower than the
//! highest it has seen; empty without `[fleet]`) and
//! `BACKSTOP_IDEMPOTENCY_KEY` (the same for every call about one deployment
//! of the service, see `idempotent`). It runs in a process group of its own, so a timeout kills everything it
//! started. A failure reports the exit code and the last line of stderr,
//! never the environment or the arguments.

use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::call::{truncate, with_retries, BuildContext, RollbackError};
use super::problem::Problem;
use crate::duration::Dur;
use crate::evidence::{Reconciled, RollbackDone, RollbackRequest};
use crate::retry::{Attempt, RetryPolicy};

const NAME: &str = "exec";

/// How much of stdout and stderr is kept (the end of each).
const TAIL_BYTES: usize = 8 * 1024;

/// `[rollback.exec]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program and its arguments, run without a shell. Required.
    pub command: Vec<String>,
    /// How long one run may take before its process group is killed. Default `60s`.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Exit codes that mean "try again later"; any other failure is final. Default none.
    #[serde(default)]
    pub retry_exit_codes: Vec<i32>,
    /// The command treats runs with the same `BACKSTOP_IDEMPOTENCY_KEY` as
    /// one. Then a run interrupted by the agent's stop is run again, with
    /// the same key, when the agent starts again; otherwise it is reported
    /// and not run again. Default `false`.
    #[serde(default)]
    pub idempotent: bool,
}

impl std::fmt::Debug for ExecConfig {
    // Arguments may carry secrets: only the program and their number are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecConfig")
            .field("program", &self.command.first())
            .field("args", &self.command.len().saturating_sub(1))
            .field("timeout", &self.timeout)
            .field("retry_exit_codes", &self.retry_exit_codes)
            .field("idempotent", &self.idempotent)
            .finish()
    }
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

impl ExecConfig {
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        match self.command.first() {
            None => p.push(Problem::new(
                "command",
                "must name a program, e.g. [\"/usr/local/bin/rollback\", \"--now\"]",
            )),
            Some(prog) if prog.trim().is_empty() => {
                p.push(Problem::new("command[0]", "must not be empty"))
            }
            Some(_) => {}
        }
        if self.timeout.0.is_zero() {
            p.push(Problem::new("timeout", "must be more than 0s"));
        }
        if self.retry_exit_codes.contains(&0) {
            p.push(Problem::new(
                "retry_exit_codes",
                "0 means success and cannot be retried",
            ));
        }
        p
    }

    pub fn build(&self, cx: &BuildContext) -> Result<Exec, RollbackError> {
        if self.command.is_empty() {
            return Err(RollbackError::Setup {
                target: NAME,
                reason: "no command".into(),
            });
        }
        Ok(Exec {
            secrets: secrets_of(&self.command[1..], std::env::vars()),
            command: self.command.clone(),
            timeout: self.timeout.0,
            retry_exit_codes: self.retry_exit_codes.clone(),
            policy: cx.policy,
            idempotent: self.idempotent,
        })
    }
}

/// The exec target, built.
pub struct Exec {
    command: Vec<String>,
    timeout: Duration,
    retry_exit_codes: Vec<i32>,
    policy: RetryPolicy,
    idempotent: bool,
    /// What the command's output must never show once reported: its
    /// arguments and the secret-looking variables of its environment.
    secrets: Vec<String>,
}

/// Names of environment variables whose values are taken for secrets.
const SECRET_ENV_WORDS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "KEY",
    "CREDENTIAL",
    "AUTH",
];

/// The values a command's output is scrubbed of before it is reported: the
/// words of its arguments (a `--token` value, a URL with a key), the values
/// of environment variables named like secrets, and the password of any
/// URL in the environment (`DATABASE_URL`). A careless tool that prints its
/// invocation or environment on failure leaks nothing through the agent.
fn secrets_of(args: &[String], env: impl Iterator<Item = (String, String)>) -> Vec<String> {
    // A flag (`--service`) names a setting; its value is what may be secret.
    // An inline script (`sh -c "..."`) is mostly words anyone may read: of
    // those, only the long ones, which look like tokens, are kept.
    let mut out: Vec<String> = Vec::new();
    for a in args {
        let script = a.chars().any(char::is_whitespace);
        out.extend(
            backstop_probes::redact::secret_words(a)
                .into_iter()
                .filter(|w| !w.starts_with('-') || w.contains('='))
                .filter(|w| !script || (w.len() >= 16 && !w.chars().any(char::is_whitespace))),
        );
    }
    for (name, value) in env {
        let upper = name.to_ascii_uppercase();
        if SECRET_ENV_WORDS.iter().any(|w| upper.contains(w)) {
            out.extend(backstop_probes::redact::secret_words(&value));
        } else if let Ok(u) = url::Url::parse(&value) {
            if let Some(p) = u.password() {
                out.extend(backstop_probes::redact::secret_words(p));
                if let Some(decoded) = url::form_urlencoded::parse(format!("p={p}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                {
                    out.extend(backstop_probes::redact::secret_words(&decoded));
                }
            }
        }
    }
    out
}

impl std::fmt::Debug for Exec {
    // Arguments may carry secrets: only the program is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("program", &self.command[0])
            .field("timeout", &self.timeout)
            .field("retry_exit_codes", &self.retry_exit_codes)
            .finish_non_exhaustive()
    }
}

impl Exec {
    /// After an interrupted run: a command cannot be asked whether it ran,
    /// so it is run again only when configured `idempotent`.
    pub fn reconcile(&self) -> Reconciled {
        if self.idempotent {
            Reconciled::NotDone(
                "the command is idempotent: it runs again with the same BACKSTOP_IDEMPOTENCY_KEY"
                    .into(),
            )
        } else {
            Reconciled::Unknown(
                "a command cannot be asked whether it ran (set rollback.exec.idempotent = true when it treats a repeated BACKSTOP_IDEMPOTENCY_KEY as one)"
                    .into(),
            )
        }
    }

    pub async fn rollback(&self, req: &RollbackRequest) -> Result<RollbackDone, RollbackError> {
        with_retries(NAME, self.policy, |_| async {
            match self.run_once(req).await {
                Attempt::Done(mut done) => {
                    done.detail = self.scrub(&done.detail);
                    Attempt::Done(done)
                }
                Attempt::Retry { reason, after } => Attempt::Retry {
                    reason: self.scrub(&reason),
                    after,
                },
                Attempt::Fail(reason) => Attempt::Fail(self.scrub(&reason)),
            }
        })
        .await
    }

    fn scrub(&self, text: &str) -> String {
        backstop_probes::redact::scrub(text, &self.secrets)
    }

    async fn run_once(&self, req: &RollbackRequest) -> Attempt<RollbackDone> {
        let program = &self.command[0];
        let evidence = serde_json::to_string(&req.evidence).unwrap_or_else(|_| "[]".into());
        let mut cmd = Command::new(program);
        cmd.args(&self.command[1..])
            .env("BACKSTOP_SERVICE", &req.service)
            .env("BACKSTOP_DEPLOYMENT", &req.deployment)
            .env(
                "BACKSTOP_RETURN_TO",
                req.return_to.as_deref().unwrap_or_default(),
            )
            .env("BACKSTOP_REASON", &req.reason)
            .env("BACKSTOP_RULE", &req.rule)
            .env("BACKSTOP_EVIDENCE", evidence)
            .env(
                "BACKSTOP_FENCING_TOKEN",
                req.fencing_token.map(|t| t.to_string()).unwrap_or_default(),
            )
            .env("BACKSTOP_IDEMPOTENCY_KEY", req.idempotency_key())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        cmd.process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Attempt::Fail(format!("cannot start {program:?}: {e}")),
        };
        let pid = child.id();
        let stdout = tokio::spawn(tail(child.stdout.take()));
        let stderr = tokio::spawn(tail(child.stderr.take()));
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                kill_group(pid);
                return Attempt::Fail(format!("waiting for {program:?} failed: {e}"));
            }
            Err(_) => {
                kill_group(pid);
                let _ = child.kill().await;
                stdout.abort();
                stderr.abort();
                return Attempt::Fail(format!(
                    "{program:?} did not finish within {} and was killed",
                    crate::duration::format(self.timeout)
                ));
            }
        };
        // Whatever the command left running may hold the pipes open: wait
        // for their end only briefly.
        let grace = Duration::from_millis(500);
        let out = tokio::time::timeout(grace, stdout)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let err = tokio::time::timeout(grace, stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        if status.success() {
            let detail = match last_line(&out) {
                Some(l) => format!("{program:?} succeeded: {l}"),
                None => format!("{program:?} succeeded"),
            };
            return Attempt::Done(RollbackDone {
                returned_to: req.return_to.clone(),
                detail,
            });
        }
        let how = match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => {
                #[cfg(unix)]
                {
                    use std::os::unix::process::ExitStatusExt;
                    match status.signal() {
                        Some(sig) => format!("was killed by signal {sig}"),
                        None => "failed".into(),
                    }
                }
                #[cfg(not(unix))]
                {
                    "failed".to_string()
                }
            }
        };
        let reason = match last_line(&err) {
            Some(l) => format!("{program:?} {how}: {l}"),
            None => format!("{program:?} {how}"),
        };
        match status.code() {
            Some(code) if self.retry_exit_codes.contains(&code) => Attempt::Retry {
                reason,
                after: None,
            },
            _ => Attempt::Fail(reason),
        }
    }
}

/// Reads a pipe to its end, keeping the last `TAIL_BYTES`.
async fn tail<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > TAIL_BYTES {
                    kept.drain(..kept.len() - TAIL_BYTES);
                }
            }
        }
    }
}

/// The last non-empty line, on one line and at most 200 characters.
fn last_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).rev().find(|l| !l.is_empty())?;
    let line: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(truncate(&line, 200))
}

/// Kills the process group the child leads (it was started with
/// `process_group(0)`, so its pid is the group id).
fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
        // SAFETY: kill(2) with a negative pid signals that process group;
        // it has no memory effects.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pid;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_scrubbed_of_arguments_and_secret_looking_environment() {
        let args = [
            "--token",
            "arg-secret-123",
            "--key=kv-secret-456",
            "--service",
            "web",
            "deploy --to previous --token inline-secret-0123456789",
        ]
        .map(String::from);
        let env = [
            ("DEPLOY_TOKEN", "env-secret-789"),
            ("DATABASE_URL", "postgres://app:pw-secret-%2Fabc@db/app"),
            ("HOME", "/home/deployer"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let secrets = secrets_of(&args, env.into_iter());
        let line = "usage: --service web --token arg-secret-123 --key=kv-secret-456 \
                    env-secret-789 pw-secret-/abc pw-secret-%2Fabc /home/deployer \
                    deploy to previous: inline-secret-0123456789";
        assert_eq!(
            backstop_probes::redact::scrub(line, &secrets),
            "usage: --service web --token *** *** *** *** *** /home/deployer \
             deploy to previous: ***"
        );
    }

    #[test]
    fn keeps_the_last_non_empty_line_of_output() {
        assert_eq!(last_line(b"one\ntwo\n\n  \n"), Some("two".to_string()));
        assert_eq!(last_line(b""), None);
        let long = "x".repeat(500);
        assert_eq!(last_line(long.as_bytes()).unwrap().chars().count(), 201);
    }

    #[test]
    fn an_empty_command_is_a_configuration_problem() {
        let c = ExecConfig {
            command: vec![],
            timeout: default_timeout(),
            retry_exit_codes: vec![0],
            idempotent: false,
        };
        let keys: Vec<_> = c.validate().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["command", "retry_exit_codes"]);
    }
}
