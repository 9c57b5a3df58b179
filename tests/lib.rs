//! Shared helpers of the integration tests: the servers `tests/run.sh`
//! started, throwaway servers a test may stop or break, a programmable HTTP
//! server for targets and platform stand-ins, and the `backstop` binary.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite through tests/run.sh, which starts the servers")
    })
}

/// URL of the PostgreSQL server `tests/run.sh` started (role `backstop`).
pub fn postgres_url() -> String {
    env("BACKSTOP_TEST_POSTGRES_URL")
}

/// URL of the Redis server `tests/run.sh` started (with a password).
pub fn redis_url() -> String {
    env("BACKSTOP_TEST_REDIS_URL")
}

/// A port nothing listens on (bound once, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The `backstop` binary of this workspace, built once if missing.
pub fn backstop_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/debug/deps/it-xxxx -> target/debug/backstop
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = dir.join("backstop");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "backstop", "--bin", "backstop"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the backstop binary failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A Redis server of the test's own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    pub password: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(closed_port())
    }

    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let password = "throwaway-redis-pw".to_string();
        let child = Command::new(env("BACKSTOP_TEST_REDIS_SERVER"))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--requirepass", &password])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        wait_for_port(port);
        Self {
            port,
            password,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL cluster of the test's own, stopped on drop. Runs as the
/// `postgres` user when the tests run as root.
pub struct PostgresServer {
    pub port: u16,
    dir: PathBuf,
}

impl PostgresServer {
    pub fn start() -> Self {
        let base = PathBuf::from(env("BACKSTOP_TEST_WORKDIR"));
        let port = closed_port();
        let dir = base.join(format!("pg-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let pwfile = base.join(format!("pg-{port}.pw"));
        std::fs::write(&pwfile, "throwaway-pg-pw\n").unwrap();
        chown_postgres(&dir);
        run_pg(
            "initdb",
            &[
                "-D",
                dir.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
            ],
        );
        let s = Self { port, dir };
        s.start_again();
        s
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:throwaway-pg-pw@127.0.0.1:{}/postgres",
            self.port
        )
    }

    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        run_pg(
            "pg_ctl",
            &[
                "-D",
                self.dir.to_str().unwrap(),
                "-l",
                self.dir.join("log").to_str().unwrap(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        );
    }

    pub fn stop(&self) {
        run_pg(
            "pg_ctl",
            &["-D", self.dir.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        );
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = pg_command(
            "pg_ctl",
            &["-D", self.dir.to_str().unwrap(), "-m", "immediate", "stop"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_postgres(dir: &std::path::Path) {
    if is_root() {
        let ok = Command::new("chown")
            .arg("postgres")
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "chown postgres {}", dir.display());
    }
}

fn pg_command(tool: &str, args: &[&str]) -> Command {
    let bin = PathBuf::from(env("BACKSTOP_TEST_PG_BIN")).join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

fn run_pg(tool: &str, args: &[&str]) {
    let out = pg_command(tool, args).output().expect(tool);
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until something accepts connections on the port (up to 10 s).
pub fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

/// One request a [`HttpServer`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// A response a handler returns.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(value.to_string()),
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from(body.to_string()),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A programmable HTTP/1 server on loopback that records every request.
/// It stops when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
    https: bool,
}

/// Serves one connection of a [`HttpServer`]: records every request and
/// answers it with `handler`'s reply.
async fn serve_recorded<I>(io: I, handler: Arc<Handler>, recs: Arc<Mutex<Vec<Recorded>>>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let recs = recs.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let rec = Recorded {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().map(str::to_string),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                body,
            };
            let reply = handler(&rec);
            recs.lock().unwrap().push(rec);
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let mut resp = hyper::Response::builder().status(reply.status);
            for (k, v) in &reply.headers {
                resp = resp.header(k, v);
            }
            Ok::<_, Infallible>(resp.body(Full::new(reply.body)).unwrap())
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

impl HttpServer {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with(None, handler).await
    }

    /// Like [`HttpServer::start`], but HTTPS with `tls`, which may require
    /// and verify a client certificate: a connection whose handshake fails
    /// is dropped and records nothing. Its [`HttpServer::url`] is `https`.
    pub async fn start_tls(
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(tls)), handler).await
    }

    async fn start_with(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let recs = requests.clone();
        let https = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let recs = recs.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_recorded(TokioIo::new(stream), handler, recs).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_recorded(TokioIo::new(stream), handler, recs).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            task,
            https,
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server on loopback that hands every connection to `serve` as it is:
/// for answers no well-behaved HTTP server gives (malformed, endless, silent).
/// It stops, with every connection it holds, when dropped.
pub struct RawServer {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            // Dropping the set when the task is aborted ends every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        if let Ok((stream, _)) = conn {
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            connections.spawn(serve(stream));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head (up to the blank line) from a raw connection;
/// `false` when the peer closed it first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// An HTTPS server on loopback with a self-signed certificate for
/// `localhost` and `127.0.0.1`, made when it starts. Every request gets
/// `200 secure`. It stops when dropped.
pub struct TlsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    pub async fn start() -> Self {
        use tokio_rustls::rustls;
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("generate a certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()),
        );
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // A client that rejects the certificate ends the handshake.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("secure"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Base URL of the Prometheus server `tests/run.sh` started; it scrapes
/// itself every second, so `up{job="prometheus"}` has data.
pub fn prometheus_url() -> String {
    env("BACKSTOP_TEST_PROMETHEUS_URL")
}
