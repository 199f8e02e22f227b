//! Shared test harness: a real primary + replicas from `scripts/cluster.sh`, and pgsplit started
//! in-process on free ports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use pgsplit::config::{Config, Settings, UserConfig};
use pgsplit::server::Server;
use tokio_util::sync::CancellationToken;

pub const PRIMARY_PORT: u16 = 15432;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the shared test cluster once per test process (idempotent; serialized by a lock
/// file across the processes nextest runs in parallel).
pub fn cluster() {
    static UP: OnceLock<()> = OnceLock::new();
    UP.get_or_init(|| {
        // -o: the servers cluster.sh starts must not inherit the lock, or every later test
        // process would wait on it for as long as the cluster runs
        let out = Command::new("flock")
            .arg("-o")
            .arg("/tmp/pgsplit-test-cluster.lock")
            .arg(repo().join("scripts/cluster.sh"))
            .arg("up")
            .output()
            .expect("run scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A configuration for the shared cluster: user `app` (password `app`), any database.
pub fn config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.admin.listen = "127.0.0.1:0".into();
    c.server.shutdown_timeout = Duration::from_secs(5);
    c.cluster.primary = format!("127.0.0.1:{PRIMARY_PORT}");
    c.cluster.replicas = vec![format!("127.0.0.1:{}", PRIMARY_PORT + 1), format!("127.0.0.1:{}", PRIMARY_PORT + 2)];
    c.users.push(UserConfig { name: "app".into(), password: "app".into(), ..Default::default() });
    c
}

/// pgsplit running in this test's runtime.
pub struct Proxy {
    pub ctx: std::sync::Arc<pgsplit::context::Context>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(config: Config) -> Proxy {
        Self::start_with_reload(config, None).await
    }

    /// Starts pgsplit with a way to reload its configuration (RELOAD, SIGHUP).
    pub async fn start_with_reload(config: Config, reloader: Option<pgsplit::context::Reloader>) -> Proxy {
        cluster();
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let settings = Settings::validate(config).expect("valid test config");
        let server = Server::bind_with_reload(settings, reloader).await.expect("bind");
        let addr = server.local_addr();
        let admin = server.admin_addr();
        let shutdown = server.shutdown_token();
        let ctx = server.context();
        let handle = tokio::spawn(server.serve());
        Proxy { ctx, addr, admin, shutdown, handle }
    }

    pub async fn default() -> Proxy {
        Proxy::start(config()).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq-style connection string for `user`/`password` to `db` through pgsplit.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port())
    }

    pub fn app_url(&self) -> String {
        self.url("app", "app", "app")
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

/// A tokio-postgres client through pgsplit (its connection task runs in the background).
pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect through pgsplit");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

pub async fn try_pg(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A direct connection to the primary as the superuser.
pub async fn primary_admin() -> tokio_postgres::Client {
    cluster();
    pg(&format!("postgres://postgres:postgres@127.0.0.1:{PRIMARY_PORT}/app")).await
}

/// Runs psql against pgsplit and returns (success, stdout, stderr).
pub fn psql(port: u16, user: &str, password: &str, db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", db])
        .args(args)
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A unique name for a test's table.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The SQLSTATE of a tokio-postgres error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// `n` tokio-postgres clients through pgsplit.
pub async fn pgs(url: &str, n: usize) -> Vec<tokio_postgres::Client> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(pg(url).await);
    }
    v
}

/// Logs in over a raw socket with SCRAM and returns the socket and every message up to the
/// first ReadyForQuery (panics on failure).
pub async fn raw_login(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> (tokio::net::TcpStream, Vec<pgsplit_protocol::BackendMessage>) {
    use pgsplit_protocol::auth::{random_nonce, ScramClient, ScramCredential};
    use pgsplit_protocol::backend::Authentication;
    use pgsplit_protocol::{BackendMessage, FrontendMessage, StartupPacket};
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    StartupPacket::Startup { params: vec![("user".into(), user.into()), ("database".into(), db.into())] }
        .encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut msgs = Vec::new();
    let mut scram = ScramClient::new(ScramCredential::Password(password.into()), random_nonce());
    loop {
        let m = read_backend(&mut s, &mut buf).await.expect("message");
        out.clear();
        match &m {
            BackendMessage::Authentication(Authentication::Sasl { .. }) => FrontendMessage::SaslInitialResponse {
                mechanism: "SCRAM-SHA-256".into(),
                data: Some(scram.client_first().into_bytes().into()),
            }
            .encode(&mut out),
            BackendMessage::Authentication(Authentication::SaslContinue { data }) => {
                let r = scram.server_first(data).unwrap();
                FrontendMessage::SaslResponse { data: r.into_bytes().into() }.encode(&mut out)
            }
            BackendMessage::ErrorResponse(e) => panic!("login failed: {}", e.message()),
            BackendMessage::ReadyForQuery(_) => {
                msgs.push(m);
                return (s, msgs);
            }
            _ => {}
        }
        if !out.is_empty() {
            s.write_all(&out).await.unwrap();
        }
        msgs.push(m);
    }
}

/// Appends Parse, Bind and Execute of the unnamed statement for `sql`, without parameters (what
/// libpq's `PQexecParams` sends, less the Sync).
pub fn encode_unnamed(out: &mut bytes::BytesMut, sql: &str) {
    use pgsplit_protocol::frontend::Bind;
    use pgsplit_protocol::FrontendMessage;
    FrontendMessage::Parse { name: String::new(), sql: sql.into(), param_types: vec![] }.encode(out);
    FrontendMessage::Bind(Bind {
        portal: String::new(),
        statement: String::new(),
        param_formats: vec![],
        params: vec![],
        result_formats: vec![],
    })
    .encode(out);
    FrontendMessage::Execute { portal: String::new(), max_rows: 0 }.encode(out);
}

/// Reads one backend message from a raw socket; `None` when the server closed it.
pub async fn read_backend(
    s: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> Option<pgsplit_protocol::BackendMessage> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(f) = pgsplit_protocol::framing::decode_frame(buf, |_| 1 << 30).unwrap() {
            return Some(pgsplit_protocol::BackendMessage::decode(f.tag, &f.body).unwrap());
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => panic!("no answer from pgsplit within 10 s"),
        }
    }
}

impl Proxy {
    /// Waits until the monitor has seen both replicas healthy and the `app` database's catalog
    /// facts are loaded, so reads can be routed to replicas.
    pub async fn wait_routable(&self) {
        let c = pg(&self.app_url()).await;
        c.batch_execute("SELECT 1").await.unwrap();
        let start = std::time::Instant::now();
        loop {
            let s = self.ctx.topology.snapshot();
            let ready = (1..s.nodes.len()).all(|i| s.readable(i)) && self.ctx.topology.catalogs.get("app").is_some();
            if ready {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "replicas never became routable: {:?}", s.nodes);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Where a statement ran: the first column of its (last) result, an `inet_server_port()`,
/// through the simple protocol.
pub async fn port_simple(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let msgs = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let v = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .last()
        .unwrap_or_else(|| panic!("{sql}: no row"));
    v.parse().unwrap_or_else(|_| panic!("{sql}: {v} is not a port"))
}

/// The same through the extended protocol (the port is the first column, an int4).
pub async fn port_extended(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let row = c.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    row.get::<_, i32>(0) as u16
}

/// Blocks until every replica has replayed what the primary has now.
pub async fn replicas_caught_up() {
    let primary = primary_admin().await;
    let lsn: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    for port in [PRIMARY_PORT + 1, PRIMARY_PORT + 2] {
        let r = pg(&format!("postgres://postgres:postgres@127.0.0.1:{port}/app")).await;
        let start = std::time::Instant::now();
        loop {
            let ok: bool =
                r.query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn]).await.unwrap().get(0);
            if ok {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "replica {port} did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub const REPLICA_PORTS: [u16; 2] = [PRIMARY_PORT + 1, PRIMARY_PORT + 2];

/// Commands for a private cluster (cheap to clone into blocking tasks).
#[derive(Clone)]
pub struct ClusterCtl {
    pub dir: PathBuf,
    pub port: u16,
    pub replicas: usize,
}

impl ClusterCtl {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(repo().join("scripts/cluster.sh"))
            .env("PGCLUSTER_DIR", &self.dir)
            .env("PGCLUSTER_PORT", self.port.to_string())
            .env("PGCLUSTER_REPLICAS", self.replicas.to_string())
            .args(args)
            .output()
            .expect("run cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn stop(&self, node: &str) {
        self.cmd(&["stop-node", node]);
    }

    pub fn start(&self, node: &str) {
        self.cmd(&["start-node", node]);
    }

    pub fn promote(&self, replica: usize) {
        self.cmd(&["promote", &replica.to_string()]);
    }

    pub fn set_delay(&self, replica: usize, delay: &str) {
        self.cmd(&["set-delay", &replica.to_string(), delay]);
    }

    /// Runs a cluster command off the async runtime.
    pub async fn run(&self, f: impl FnOnce(&ClusterCtl) + Send + 'static) {
        let c = self.clone();
        tokio::task::spawn_blocking(move || f(&c)).await.unwrap();
    }
}

/// A cluster of this test's own (for tests that stop, promote or slow down nodes), torn down
/// when dropped.
pub struct PrivateCluster {
    pub ctl: ClusterCtl,
}

impl PrivateCluster {
    /// A fresh cluster in `.cluster-<name>` with a primary on `port` and replicas after it.
    pub async fn up(name: &str, port: u16, replicas: usize, extra: &[&str]) -> PrivateCluster {
        let ctl = ClusterCtl { dir: repo().join(format!(".cluster-{name}")), port, replicas };
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        ctl.run(move |c| {
            let _ = Command::new(repo().join("scripts/cluster.sh"))
                .env("PGCLUSTER_DIR", &c.dir)
                .env("PGCLUSTER_PORT", c.port.to_string())
                .arg("down")
                .output();
            let mut args = vec!["up"];
            args.extend(extra.iter().map(|s| s.as_str()));
            c.cmd(&args);
        })
        .await;
        PrivateCluster { ctl }
    }

    /// A pgsplit configuration for this cluster.
    pub fn config(&self) -> Config {
        let mut c = config();
        c.cluster.primary = format!("127.0.0.1:{}", self.ctl.port);
        c.cluster.replicas =
            (1..=self.ctl.replicas).map(|i| format!("127.0.0.1:{}", self.ctl.port + i as u16)).collect();
        c
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/cluster.sh"))
            .env("PGCLUSTER_DIR", &self.ctl.dir)
            .env("PGCLUSTER_PORT", self.ctl.port.to_string())
            .arg("down")
            .output();
    }
}

/// Scrapes pgsplit's /metrics.
pub async fn scrape(p: &Proxy) -> String {
    let addr = p.admin.expect("admin endpoint");
    http_get(addr, "/metrics").await
}

/// A minimal HTTP/1.1 GET (the admin endpoint speaks plain HTTP on loopback).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // de-chunk
        let mut rest = body;
        let mut out = String::new();
        while let Some((len, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n.min(after.len())]);
            rest = after.get(n + 2..).unwrap_or("");
        }
        return out;
    }
    body.to_owned()
}

/// The value of a metric line `name{labels}` (labels as they appear, e.g. `node="127.0.0.1:1"`).
pub fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name) && (label.is_empty() || l.contains(label)) && l[name.len()..].starts_with(['{', ' '])
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
