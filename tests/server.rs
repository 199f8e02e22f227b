//! The server around sessions: hostile input, Unix socket, graceful shutdown, the CLI (TLS: tls.rs).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the server closes; returns what it sent.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("server closes");
    out
}

fn error_code(bytes: &[u8]) -> Option<String> {
    let mut b = bytes::BytesMut::from(bytes);
    while let Ok(Some(f)) = pgsplit_protocol::framing::decode_frame(&mut b, |_| 1 << 20) {
        if let Ok(pgsplit_protocol::BackendMessage::ErrorResponse(e)) =
            pgsplit_protocol::BackendMessage::decode(f.tag, &f.body)
        {
            return Some(e.code().to_owned());
        }
    }
    None
}

/// Garbage, HTTP, oversized and truncated input get a clear error or a clean close, and other
/// sessions carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_never_harms_other_sessions() {
    let mut cfg = config();
    cfg.server.startup_timeout = Duration::from_secs(1);
    cfg.server.max_message_size = 1 << 20;
    let p = Proxy::start(cfg).await;
    let bystander = pg(&p.app_url()).await;
    bystander.batch_execute("BEGIN").await.unwrap();

    // An HTTP request instead of a startup packet.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let got = read_to_close(&mut s).await;
    assert_eq!(error_code(&got).as_deref(), Some("08P01"));

    // Protocol 2.0.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).await.unwrap();
    assert_eq!(error_code(&read_to_close(&mut s).await).as_deref(), Some("0A000"));

    // A client that never finishes its startup packet is dropped after startup_timeout.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
    let t = Instant::now();
    read_to_close(&mut s).await;
    assert!(t.elapsed() < Duration::from_secs(5));

    // After login: an unknown message type, an oversized message, a negative length.
    for bad in [&b"Y\x00\x00\x00\x04"[..], &b"Q\x7f\x00\x00\x00"[..], &b"Q\xff\xff\xff\xf0"[..]] {
        let (mut s, _) = raw_login(p.addr, "app", "app", "app").await;
        s.write_all(bad).await.unwrap();
        let got = read_to_close(&mut s).await;
        assert_eq!(error_code(&got).as_deref(), Some("08P01"), "{bad:?}");
    }

    // Random bytes after login.
    for seed in 0..20u8 {
        let (mut s, _) = raw_login(p.addr, "app", "app", "app").await;
        let junk: Vec<u8> =
            (0..200u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed.wrapping_mul(17))).collect();
        let _ = s.write_all(&junk).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
    }

    // A client that disconnects in the middle of a message.
    let (mut s, _) = raw_login(p.addr, "app", "app", "app").await;
    s.write_all(b"Q\x00\x00\x01\x00SELECT").await.unwrap();
    drop(s);

    // The bystander's transaction is intact and the proxy still serves new clients.
    bystander.batch_execute("SELECT 1; COMMIT").await.unwrap();
    let c = pg(&p.app_url()).await;
    assert_eq!(c.query_one("SELECT 9", &[]).await.unwrap().get::<_, i32>(0), 9);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket() {
    let dir = std::env::temp_dir().join(unique("pgsplit-sock"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = config();
    cfg.server.unix_socket_dir = dir.display().to_string();
    let p = Proxy::start(cfg).await;
    let port = p.port();
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .env("PGPASSWORD", "app")
            .args(["-X", "-Atc", "SELECT 'over unix'", "-h"])
            .arg(&d)
            .args(["-p", &port.to_string(), "-U", "app", "app"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over unix");
    p.stop().await;
    assert!(!dir.join(format!(".s.PGSQL.{port}")).exists(), "socket removed at shutdown");
    let _ = std::fs::remove_dir_all(dir);
}

/// Backends given as a socket directory (libpq's `/dir` host) are reached over their Unix
/// sockets: the monitor samples them, reads go to the replicas, writes to the primary, and a
/// cancel reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_backends() {
    let dir = std::env::var("PGCLUSTER_DIR").unwrap_or_else(|_| repo().join(".cluster").display().to_string());
    let mut cfg = config();
    cfg.cluster.primary = format!("{dir}:{PRIMARY_PORT}");
    cfg.cluster.replicas = vec![format!("postgres://app:app@/app?host={dir}&port={}", PRIMARY_PORT + 1)];
    cfg.cluster.replicas.push(format!("{dir}:{}", PRIMARY_PORT + 2));
    let p = Proxy::start(cfg).await;
    p.wait_routable().await;
    let c = pg(&p.app_url()).await;
    // inet_server_port() is NULL over a Unix socket; the server's port setting says which
    let port = "SELECT current_setting('port')::int4, inet_server_port()";
    for _ in 0..4 {
        let row = c.query_one(port, &[]).await.unwrap();
        let on = row.get::<_, i32>(0) as u16;
        assert!(on == PRIMARY_PORT + 1 || on == PRIMARY_PORT + 2, "a read ran on {on}");
        assert_eq!(row.get::<_, Option<i32>>(1), None, "the backend connection is not TCP");
    }
    let t = unique("unix_backend");
    c.batch_execute(&format!("CREATE TABLE {t} (a int); INSERT INTO {t} VALUES (1)")).await.unwrap();
    // read-your-writes over the sockets too
    assert_eq!(c.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get::<_, i64>(0), 1);
    let insert = format!("INSERT INTO {t} VALUES (2) RETURNING current_setting('port')::int4");
    assert_eq!(c.query_one(&insert, &[]).await.unwrap().get::<_, i32>(0) as u16, PRIMARY_PORT);

    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = sleeper.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(5), "cancel took {:?}", started.elapsed());
    primary_admin().await.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    p.stop().await;
}

/// Shutdown stops accepting, lets an open transaction finish, closes idle clients with 57P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_transactions_finish() {
    let p = Proxy::default().await;
    let t = unique("shutdown");
    let busy = pg(&p.app_url()).await;
    busy.batch_execute(&format!("CREATE TABLE {t} (a int); BEGIN; INSERT INTO {t} VALUES (1)")).await.unwrap();
    let idle = pg(&p.app_url()).await;
    p.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // no new clients
    assert!(try_pg(&p.app_url()).await.is_err());
    // the idle client is told and closed
    let e = idle.batch_execute("SELECT 1").await.unwrap_err();
    assert!(e.is_closed() || sqlstate(&e) == "57P01", "{e:?}");
    // the open transaction finishes
    busy.batch_execute(&format!("INSERT INTO {t} VALUES (2); COMMIT")).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), p.handle).await.expect("server stops");
    let n: i64 = primary_admin().await.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    primary_admin().await.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

fn pgsplit_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgsplit"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSPLIT_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn check_config_exit_codes() {
    let dir = std::env::temp_dir().join(unique("pgsplit-cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "[cluster]\nprimary = \"127.0.0.1:5432\"\n").unwrap();
    let out = pgsplit_bin().arg("check-config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[cluster]\nprimary = \"127.0.0.1:5432\"\n[pool]\nmode = \"statement\"\n").unwrap();
    let out = pgsplit_bin().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("pool.mode") && msg.lines().count() == 1, "{msg}");
    // bad values from the environment and unknown keys are rejected the same way
    let out = pgsplit_bin().env("PGSPLIT_POOL__SIZE", "many").arg("check-config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = pgsplit_bin().env("PGSPLIT_POOL__SIZEE", "1").arg("check-config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    // running without a primary is a configuration error too
    let out = pgsplit_bin().output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(dir);
}

/// The quick start: no file, just flags; SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_flags_and_sigterm() {
    cluster();
    let port = 21000 + (std::process::id() % 4000) as u16;
    let admin = port + 4000;
    let mut child = pgsplit_bin()
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--primary", &format!("postgres://app:app@127.0.0.1:{PRIMARY_PORT}/app")])
        .args(["--replica", &format!("postgres://app:app@127.0.0.1:{}/app", PRIMARY_PORT + 1)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("postgres://app:app@127.0.0.1:{port}/app");
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = try_pg(&url).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client.expect("pgsplit came up");
    assert_eq!(c.query_one("SELECT 1 + 1", &[]).await.unwrap().get::<_, i32>(0), 2);
    let health = tokio::task::spawn_blocking(move || {
        Command::new("curl").args(["-s", &format!("http://127.0.0.1:{admin}/healthz")]).output()
    })
    .await
    .unwrap();
    if let Ok(h) = health {
        assert_eq!(String::from_utf8_lossy(&h.stdout).trim(), "ok");
    }
    let wrong = try_pg(&format!("postgres://app:nope@127.0.0.1:{port}/app")).await.err().unwrap();
    assert_eq!(sqlstate(&wrong), "28P01");
    drop(c);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "pgsplit did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
