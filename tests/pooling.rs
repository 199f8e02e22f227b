//! Pooling: clean connections only, exact results under contention, session mode, checkout
//! timeout, and pgbench in every query mode.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

/// Sends a simple query on a raw logged-in socket and reads up to ReadyForQuery.
async fn raw_query(s: &mut tokio::net::TcpStream, sql: &str) -> Vec<pgsplit_protocol::BackendMessage> {
    let mut out = bytes::BytesMut::new();
    pgsplit_protocol::frontend::encode_query(&mut out, sql);
    s.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut msgs = Vec::new();
    loop {
        let m = read_backend(s, &mut buf).await.expect("answer");
        let done = matches!(m, pgsplit_protocol::BackendMessage::ReadyForQuery(_));
        msgs.push(m);
        if done {
            return msgs;
        }
    }
}

/// 50 clients leave session state behind and vanish mid-transaction without a goodbye; the
/// clients after them see none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_leave_nothing_behind() {
    let mut cfg = config();
    cfg.pool.size = 5;
    let p = Proxy::start(cfg).await;
    let t = unique("hygiene");
    let setup = pg(&p.app_url()).await;
    setup
        .batch_execute(&format!("CREATE TABLE {t} (id int primary key, n int); INSERT INTO {t} VALUES (1, 0)"))
        .await
        .unwrap();
    for i in 0..50 {
        let (mut s, _) = raw_login(p.addr, "app", "app", "app").await;
        let state = match i % 5 {
            0 => "SET statement_timeout = '3s'; SET search_path = nowhere".to_string(),
            1 => format!("PREPARE leftover_{i} AS SELECT 1"),
            2 => format!("CREATE TEMP TABLE leftover_{i} (a int)"),
            3 => format!("LISTEN leftover_{i}"),
            _ => format!("SELECT pg_advisory_lock({i})"),
        };
        let r = raw_query(&mut s, &state).await;
        assert!(!r.iter().any(|m| matches!(m, pgsplit_protocol::BackendMessage::ErrorResponse(_))), "{state}: {r:?}");
        raw_query(&mut s, &format!("BEGIN; UPDATE {t} SET n = n + 1 WHERE id = 1; SET LOCAL work_mem = '64kB'")).await;
        drop(s); // vanish: no ROLLBACK, no Terminate
    }
    // New clients: no settings, prepared statements, temp tables, listeners, locks or
    // uncommitted rows from before; the row is not locked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clients = pgs(&p.app_url(), 8).await;
    for c in &clients {
        let row = c
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('search_path'), current_setting('work_mem'),
                        (SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'leftover%'),
                        (SELECT count(*) FROM pg_class WHERE relname LIKE 'leftover%' AND relpersistence = 't'),
                        (SELECT count(*) FROM pg_listening_channels()),
                        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), "0");
        assert_eq!(row.get::<_, &str>(1), "\"$user\", public");
        assert_eq!(row.get::<_, &str>(2), "4MB");
        for i in 3..7 {
            assert_eq!(row.get::<_, i64>(i), 0, "column {i}");
        }
    }
    let c = &clients[0];
    c.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    c.batch_execute(&format!("UPDATE {t} SET n = n + 100 WHERE id = 1")).await.expect("row is not locked");
    let n: i32 = c.query_one(&format!("SELECT n FROM {t} WHERE id = 1"), &[]).await.unwrap().get(0);
    assert_eq!(n, 100, "no vanished transaction committed");
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    p.stop().await;
}

/// 200 concurrent clients over 10 backend connections: every increment lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_ten_connections_exact_counts() {
    let mut cfg = config();
    cfg.pool.size = 10;
    cfg.pool.checkout_timeout = Duration::from_secs(30);
    let p = Proxy::start(cfg).await;
    let t = unique("counts");
    let admin = pg(&p.app_url()).await;
    admin
        .batch_execute(&format!("CREATE TABLE {t} (id int primary key, n bigint); INSERT INTO {t} VALUES (1, 0)"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = p.app_url();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = pg(&url).await;
            for _ in 0..10 {
                if i % 2 == 0 {
                    let tx = c.transaction().await.unwrap();
                    tx.execute(&format!("UPDATE {t} SET n = n + 1 WHERE id = 1"), &[]).await.unwrap();
                    tx.commit().await.unwrap();
                } else {
                    c.simple_query(&format!("UPDATE {t} SET n = n + 1 WHERE id = 1")).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let n: i64 = admin.query_one(&format!("SELECT n FROM {t} WHERE id = 1"), &[]).await.unwrap().get(0);
    assert_eq!(n, 2000);
    // never more than the pool size on the backend
    for pool in p.ctx.pools.status() {
        assert!(pool.size <= 10, "{} backend connections in {}", pool.size, pool.pool);
    }
    admin.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_timeout_is_a_clear_error() {
    let mut cfg = config();
    cfg.pool.size = 1;
    cfg.pool.checkout_timeout = Duration::from_millis(300);
    let p = Proxy::start(cfg).await;
    let holder = pg(&p.app_url()).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = pg(&p.app_url()).await;
    let e = waiter.batch_execute("SELECT 1 /* pgsplit:primary */").await.unwrap_err();
    assert_eq!(sqlstate(&e), "08006");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("checkout_timeout"), "{msg}");
    holder.batch_execute("COMMIT").await.unwrap();
    // the waiter's session survives the error
    assert_eq!(waiter.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0), 3);
    p.stop().await;
}

/// A `PQprepare` (named Parse + Sync) needs no backend connection, even when its bytes arrive
/// in pieces while another client holds the only connection in a transaction: pgbench
/// `-M prepared` prepares synchronously while its other clients sit in transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_arriving_in_pieces_needs_no_connection() {
    use pgsplit_protocol::{BackendMessage, FrontendMessage};
    let mut cfg = config();
    cfg.pool.size = 1;
    cfg.pool.checkout_timeout = Duration::from_millis(2000);
    let p = Proxy::start(cfg).await;
    let (mut s, _) = raw_login(p.addr, "app", "app", "app").await;
    let holder = pg(&p.app_url()).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let mut out = bytes::BytesMut::new();
    FrontendMessage::Parse {
        name: "pieces".into(),
        sql: "/* pgsplit:primary */ SELECT $1::int + 1".into(),
        param_types: vec![],
    }
    .encode(&mut out);
    FrontendMessage::Sync.encode(&mut out);
    // the Parse split mid-frame, then the rest with the Sync
    let started = std::time::Instant::now();
    for part in [&out[..7], &out[7..out.len() - 5], &out[out.len() - 5..]] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut buf = bytes::BytesMut::new();
    let first = read_backend(&mut s, &mut buf).await.unwrap();
    assert!(matches!(first, BackendMessage::ParseComplete), "{first:?}");
    assert!(matches!(read_backend(&mut s, &mut buf).await.unwrap(), BackendMessage::ReadyForQuery(_)));
    assert!(started.elapsed() < Duration::from_millis(1500), "waited for a connection: {:?}", started.elapsed());
    holder.batch_execute("COMMIT").await.unwrap();
    // and the statement runs once a connection is free
    out.clear();
    FrontendMessage::Bind(pgsplit_protocol::frontend::Bind {
        portal: String::new(),
        statement: "pieces".into(),
        param_formats: vec![],
        params: vec![Some(bytes::Bytes::from_static(b"41"))],
        result_formats: vec![],
    })
    .encode(&mut out);
    FrontendMessage::Execute { portal: String::new(), max_rows: 0 }.encode(&mut out);
    FrontendMessage::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let mut row = None;
    loop {
        match read_backend(&mut s, &mut buf).await.unwrap() {
            BackendMessage::Raw { tag: b'D', body } => row = Some(body),
            BackendMessage::ErrorResponse(e) => panic!("{}", e.message()),
            BackendMessage::ReadyForQuery(_) => break,
            _ => {}
        }
    }
    let row = row.expect("a row");
    assert!(row.ends_with(b"42"), "{row:?}");
    // a duplicate name fails like on the server, also when its Sync comes later
    out.clear();
    FrontendMessage::Parse { name: "pieces".into(), sql: "SELECT 2".into(), param_types: vec![] }.encode(&mut out);
    s.write_all(&out).await.unwrap();
    match read_backend(&mut s, &mut buf).await.unwrap() {
        BackendMessage::ErrorResponse(e) => assert_eq!(e.code(), "42P05"),
        m => panic!("{m:?}"),
    }
    out.clear();
    FrontendMessage::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    assert!(matches!(read_backend(&mut s, &mut buf).await.unwrap(), BackendMessage::ReadyForQuery(_)));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_keeps_one_connection() {
    let mut cfg = config();
    cfg.pool.mode = "session".into();
    cfg.pool.size = 4;
    let p = Proxy::start(cfg).await;
    let c = pg(&p.app_url()).await;
    c.batch_execute("PREPARE sp AS SELECT 41 + 1; CREATE TEMP TABLE st (a int)").await.unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let others = pgs(&p.app_url(), 3).await;
    for o in &others {
        o.batch_execute("SELECT 1").await.unwrap();
    }
    for _ in 0..5 {
        let again: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        assert_eq!(again, pid);
    }
    let v = c.simple_query("EXECUTE sp").await.unwrap();
    let row = v.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(row.as_deref(), Some("42"));
    drop(c);
    drop(others);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next client of that connection finds it clean.
    for c in pgs(&p.app_url(), 4).await {
        let n: i64 = c
            .query_one("SELECT count(*) FROM pg_prepared_statements WHERE name NOT LIKE 'pgsplit\\_%'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
    p.stop().await;
}

/// Idle connections are handed out most recently used first, as PgBouncer does: one client's
/// transactions keep reusing one warm server process. With `server_round_robin` they take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_most_recently_used_first() {
    for round_robin in [false, true] {
        let mut cfg = config();
        cfg.pool.size = 3;
        cfg.pool.server_round_robin = round_robin;
        let p = Proxy::start(cfg).await;
        // Three clients in a transaction at once: three connections to the primary.
        let clients = pgs(&p.app_url(), 3).await;
        for c in &clients {
            c.batch_execute("BEGIN; SELECT txid_current()").await.unwrap();
        }
        for c in &clients {
            c.batch_execute("COMMIT").await.unwrap();
        }
        let mut pids = std::collections::HashSet::new();
        for _ in 0..6 {
            let row = clients[0].query_one("/* pgsplit:primary */ SELECT pg_backend_pid()", &[]).await.unwrap();
            pids.insert(row.get::<_, i32>(0));
        }
        let expected = if round_robin { 3 } else { 1 };
        assert_eq!(pids.len(), expected, "server_round_robin = {round_robin}: {pids:?}");
        p.stop().await;
    }
}

fn pgbench(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("pgbench").env("PGPASSWORD", "app").args(args).output().expect("pgbench");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// pgbench tpcb-like and select-only in simple, extended and prepared mode: no failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_all_query_modes() {
    cluster();
    let db = "pgbench_it";
    let admin = primary_admin().await;
    let exists: i64 =
        admin.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&db]).await.unwrap().get(0);
    if exists == 0 {
        admin.batch_execute(&format!("CREATE DATABASE {db} OWNER app")).await.unwrap();
    }
    let (ok, out) = tokio::task::spawn_blocking(move || {
        pgbench(&["-h", "127.0.0.1", "-p", &PRIMARY_PORT.to_string(), "-U", "app", "-i", "-s", "1", "-q", db])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    let mut cfg = config();
    cfg.pool.size = 4;
    let p = Proxy::start(cfg).await;
    let port = p.port().to_string();
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &[][..]] {
            let port = port.clone();
            let script: Vec<String> = script.iter().map(|s| s.to_string()).collect();
            let (ok, out) = tokio::task::spawn_blocking(move || {
                let mut args =
                    vec!["-h", "127.0.0.1", "-p", &port, "-U", "app", "-M", mode, "-c", "8", "-j", "2", "-T", "2"];
                args.extend(script.iter().map(|s| s.as_str()));
                args.push(db);
                pgbench(&args)
            })
            .await
            .unwrap();
            assert!(ok, "pgbench -M {mode}: {out}");
            assert!(out.contains("number of failed transactions: 0 (0.000%)"), "pgbench -M {mode}: {out}");
            assert!(!out.contains("error"), "pgbench -M {mode}: {out}");
        }
    }
    p.stop().await;
}

/// Least-outstanding balancing counts a read from the moment it queues for a connection, not
/// only once it has one: with both replicas' only connections busy, reads that all prefer one
/// replica (the one they read from last) spread over both queues instead of piling onto one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_reads_count_toward_replica_load() {
    let mut cfg = config();
    cfg.pool.size = 1;
    cfg.pool.checkout_timeout = Duration::from_secs(20);
    // Only balancing decides here: a lag monitor slowed down by a busy machine must not take a
    // replica out of the candidates for a moment.
    cfg.consistency.max_lag = Duration::from_secs(60);
    cfg.consistency.stale_after = Duration::from_secs(60);
    let p = Proxy::start(cfg).await;
    p.wait_routable().await;
    let holder_b = pg(&p.app_url()).await;
    let holder_a = pg(&p.app_url()).await;
    let waiters = pgs(&p.app_url(), 4).await;
    // B holds one replica; every waiter then reads from the other one, which becomes the
    // replica each of them prefers on a tie.
    let b = tokio::spawn(async move { port_simple(&holder_b, "SELECT inet_server_port(), pg_sleep(3)").await });
    // (not a fixed sleep: on a busy machine B's read may take longer to start)
    let b_on = replica_running("pg_sleep(3)").await;
    let mut first = Vec::new();
    for w in &waiters {
        first.push(port_simple(w, "SELECT inet_server_port()").await);
    }
    assert!(
        first.iter().all(|&port| port == first[0] && port != b_on && REPLICA_PORTS.contains(&port)),
        "warm-up reads all on the idle replica: {first:?}"
    );
    // A holds that replica too; now both are busy (one connection each).
    let a = tokio::spawn(async move { port_simple(&holder_a, "SELECT inet_server_port(), pg_sleep(2)").await });
    let a_on = replica_running("pg_sleep(2)").await;
    assert_ne!(a_on, b_on, "A and B hold different replicas");
    let mut queued = Vec::new();
    for w in waiters {
        queued.push(tokio::spawn(async move { port_simple(&w, "SELECT inet_server_port()").await }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a, first[0], "A ran on the replica the waiters read from");
    assert_ne!(a, b, "A and B on different replicas");
    let mut ports = Vec::new();
    for q in queued {
        ports.push(q.await.unwrap());
    }
    let on_a = ports.iter().filter(|&&port| port == a).count();
    let on_b = ports.iter().filter(|&&port| port == b).count();
    assert_eq!((on_a, on_b), (2, 2), "queued reads spread over both queues: {ports:?}");
    p.stop().await;
}

/// Waits (up to 10 s) until a replica runs a query whose text contains `marker`, and returns
/// that replica's port.
async fn replica_running(marker: &str) -> u16 {
    let mut admins = Vec::new();
    for port in REPLICA_PORTS {
        admins.push((port, pg(&format!("postgres://postgres:postgres@127.0.0.1:{port}/app")).await));
    }
    let pattern = format!("%{marker}%");
    let start = std::time::Instant::now();
    loop {
        for (port, c) in &admins {
            let sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()";
            let n: i64 = c.query_one(sql, &[&pattern]).await.unwrap().get(0);
            if n > 0 {
                return *port;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no replica runs a query with {marker}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
