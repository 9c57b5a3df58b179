//! What a test of an outage between an agent and a server it relies on
//! (the `[store]`, a coordination store) needs: a TCP proxy between the two
//! that can fall silent or refuse, and a check that the agent answers all
//! the same.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A fault of the network between the agent and the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Nothing is forwarded in either direction and nothing is closed: a
    /// partition that drops packets, as far as either side can tell.
    /// Everything held back is forwarded, in order, once it heals.
    Silent,
    /// Every open connection is closed and new ones are refused: a server
    /// that went away, or a firewall that rejects.
    Refused,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Silent => "silent",
            Fault::Refused => "refusing connections",
        })
    }
}

/// A TCP proxy on loopback to `127.0.0.1:upstream` with a [`Fault`] that can
/// be turned on and healed. It stops, with every connection it holds, when
/// dropped.
pub(crate) struct Proxy {
    pub(crate) port: u16,
    fault: watch::Sender<Option<Fault>>,
    /// The fault the proxy has put in place: refusing takes closing the
    /// listener and every connection first.
    applied: watch::Receiver<Option<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (fault, rx) = watch::channel(None);
        let (applied_tx, applied) = watch::channel(None);
        let task = tokio::spawn(serve(listener, port, upstream, rx, applied_tx));
        Self {
            port,
            fault,
            applied,
            task,
        }
    }

    /// Turns `fault` on; returns once it is in place.
    pub(crate) async fn fail(&self, fault: Fault) {
        self.set(Some(fault)).await;
    }

    /// Forwards again: a silent proxy sends on what it held back; a refusing
    /// one accepts connections again, on the same port.
    pub(crate) async fn heal(&self) {
        self.set(None).await;
    }

    async fn set(&self, fault: Option<Fault>) {
        self.fault.send_replace(fault);
        let mut applied = self.applied.clone();
        tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|a| *a == fault))
            .await
            .unwrap_or_else(|_| panic!("the proxy did not apply {fault:?} within 10 s"))
            .expect("the proxy's task ended");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts and forwards while the proxy is healthy or silent; while it
/// refuses, nothing listens on its port and no connection is open.
async fn serve(
    mut listener: TcpListener,
    port: u16,
    upstream: u16,
    mut fault: watch::Receiver<Option<Fault>>,
    applied: watch::Sender<Option<Fault>>,
) {
    loop {
        // Dropping the set ends every connection it holds.
        let mut connections = JoinSet::new();
        loop {
            let now = *fault.borrow_and_update();
            if now == Some(Fault::Refused) {
                break;
            }
            applied.send_replace(now);
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((client, _)) = accepted {
                        connections.spawn(forward(client, upstream, fault.clone()));
                    }
                }
                changed = fault.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        connections.shutdown().await;
        applied.send_replace(Some(Fault::Refused));
        if fault
            .wait_for(|f| *f != Some(Fault::Refused))
            .await
            .is_err()
        {
            return;
        }
        listener = bind_again(port).await;
    }
}

/// Listens on `port` again once the proxy heals from refusing (up to 10 s:
/// the port was free a moment ago).
async fn bind_again(port: u16) -> TcpListener {
    for _ in 0..200 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the proxy cannot listen on 127.0.0.1:{port} again");
}

/// One client connection, forwarded to a connection of its own upstream.
async fn forward(client: TcpStream, upstream: u16, fault: watch::Receiver<Option<Fault>>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pump(cr, sw, fault.clone()), pump(sr, cw, fault));
}

/// Copies `from` to `to`, holding each chunk while the proxy is silent.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<Option<Fault>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // The end of the stream is held back too: a partition does not
        // carry a close either.
        let n = from.read(&mut buf).await.unwrap_or(0);
        while *fault.borrow_and_update() == Some(Fault::Silent) {
            if fault.changed().await.is_err() {
                return;
            }
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Asks the agent listening on `port` (`who` in messages) for `/healthz`
/// and `/status`: each must answer, with success, within a second.
pub(crate) async fn answers_within_a_second(port: u16, who: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    for path in ["/healthz", "/status"] {
        let url = format!("http://127.0.0.1:{port}{path}");
        let resp = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{who} {path} did not answer within 1 s: {e}"));
        assert!(
            resp.status().is_success(),
            "{who} {path}: {}",
            resp.status()
        );
    }
}
