//! `tcp`: the target accepts a TCP connection within the timeout.

use std::time::Instant;

use serde::Deserialize;
use tokio::net::TcpStream;

use crate::{ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The signals a `tcp` probe yields.
const SIGNALS: [SignalInfo; 1] = [SignalInfo::fixed(
    "latency_ms",
    "milliseconds until the connection was accepted",
)];

pub(crate) fn type_signals() -> Vec<SignalInfo> {
    SIGNALS.to_vec()
}

/// Settings of a `tcp` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// `host:port` to connect to. Required.
    pub address: String,
}

impl crate::ProbeType for TcpConfig {
    fn levels() -> &'static [u8] {
        &[1, 2]
    }
}

impl TcpConfig {
    /// What a check can yield.
    pub fn signals(&self) -> Vec<SignalInfo> {
        type_signals()
    }
}

#[derive(Debug)]
pub struct TcpProbe {
    address: String,
}

impl TcpProbe {
    pub fn new(cfg: &TcpConfig, _ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        let ok = cfg
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(vec![ConfigProblem::new(
                "address",
                format!("expected host:port, got {:?}", cfg.address),
            )]);
        }
        Ok(Self {
            address: cfg.address.clone(),
        })
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        let start = Instant::now();
        match TcpStream::connect(&self.address).await {
            Ok(_) => Ok(Report::new().with("latency_ms", start.elapsed().as_secs_f64() * 1e3)),
            Err(e) => Err(ProbeError::unhealthy(format!(
                "connect to {}: {e}",
                self.address
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn connects_to_a_listening_port_and_fails_on_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let cfg = TcpConfig { address: open };
        let probe = TcpProbe::new(&cfg, ctx()).unwrap();
        let report = probe.check().await.unwrap();
        assert!(report.get("latency_ms").unwrap() >= 0.0);
        assert_eq!(crate::testing::assert_declared(&report, &cfg.signals()), 1);

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let probe = TcpProbe::new(&TcpConfig { address: closed }, ctx()).unwrap();
        assert!(matches!(
            probe.check().await,
            Err(ProbeError::Unhealthy { .. })
        ));
    }

    #[test]
    fn rejects_an_address_without_a_port() {
        let err = TcpProbe::new(
            &TcpConfig {
                address: "localhost".into(),
            },
            ctx(),
        )
        .unwrap_err();
        assert_eq!(err[0].key, "address");
    }
}
