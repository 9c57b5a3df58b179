//! What service managers see of the agent: `backstop healthcheck` for
//! container engines, and systemd's readiness and watchdog notifications
//! (`sd_notify`) for `Type=notify` units. Both judge the agent by its own
//! `/healthz`, the endpoint Kubernetes probes too, so every manager sees the
//! same liveness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// What `backstop healthcheck` asks when it is given no `--url`.
pub const DEFAULT_HEALTHZ_URL: &str = "http://127.0.0.1:9469/healthz";

/// The `/healthz` URL of an agent listening on `listen`, reached over
/// loopback when it listens on every address.
pub fn healthz_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, listen.port()))
}

/// Asks `/healthz` once; `Ok` only for a 2xx answer within `timeout`.
pub async fn check_healthz(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::Error::new(e.without_url()).context(url.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{url}: {status} {}", body.trim())
    }
}

/// Sends one `sd_notify` message (`READY=1`, `WATCHDOG=1`, ...) to the
/// socket in `$NOTIFY_SOCKET`. `Ok(false)` when there is no such socket: the
/// agent was not started by systemd with `Type=notify`.
pub fn notify(message: &str) -> std::io::Result<bool> {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: `@` stands for the leading NUL byte.
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), &path)?;
    }
    Ok(true)
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), when it asks it
/// of this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Tells systemd the agent is ready once its `/healthz` first answers 200,
/// then, if a watchdog is set, pings it at half its interval for as long as
/// `/healthz` keeps answering 200. A stalled agent stops the pings and
/// systemd restarts it. Returns at once outside a `Type=notify` unit.
pub async fn systemd(listen: SocketAddr) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let url = healthz_url(listen);
    let timeout = Duration::from_secs(2);
    while check_healthz(&url, timeout).await.is_err() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send("READY=1\nSTATUS=probing");
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let every = interval / 2;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match check_healthz(&url, every.min(timeout)).await {
            Ok(()) => send("WATCHDOG=1"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the agent is not healthy; the systemd watchdog is not pinged");
            }
        }
    }
}

fn send(message: &str) {
    if let Err(e) = notify(message) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_healthz_url_reaches_a_wildcard_listener_over_loopback() {
        let cases = [
            ("0.0.0.0:9469", "http://127.0.0.1:9469/healthz"),
            ("[::]:9469", "http://[::1]:9469/healthz"),
            ("10.0.0.5:80", "http://10.0.0.5:80/healthz"),
            ("[::1]:1", "http://[::1]:1/healthz"),
        ];
        for (listen, want) in cases {
            assert_eq!(healthz_url(listen.parse().unwrap()), want, "{listen}");
        }
    }
}
