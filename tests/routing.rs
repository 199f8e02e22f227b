//! The routing contract (docs/routing.md), row by row, against the real primary and replicas:
//! where each statement actually ran is read back from `inet_server_port()`.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum On {
    Primary,
    Replica,
}

fn on(port: u16) -> On {
    if port == PRIMARY_PORT {
        On::Primary
    } else {
        assert!(REPLICA_PORTS.contains(&port), "unknown port {port}");
        On::Replica
    }
}

/// Objects the routing rows use, created through the primary and replicated.
struct Fixture {
    t: String,
    seq: String,
    view: String,
    unlogged: String,
    volatile_fn: String,
    stable_fn: String,
    /// An operator backed by a volatile function.
    volatile_op: String,
}

/// A unique operator name (operators are made of symbols, not letters).
fn unique_operator() -> String {
    const SYMBOLS: &[u8] = b"~!@#%^&|`?";
    let id = unique("");
    let symbols: String =
        id.chars().filter(char::is_ascii_digit).map(|d| SYMBOLS[d as usize - '0' as usize] as char).collect();
    format!("@{symbols}")
}

async fn fixture() -> Fixture {
    let f = Fixture {
        t: unique("rt_t"),
        seq: unique("rt_seq"),
        view: unique("rt_view"),
        unlogged: unique("rt_unlogged"),
        volatile_fn: unique("rt_volatile"),
        stable_fn: unique("rt_stable"),
        volatile_op: unique_operator(),
    };
    let admin = primary_admin().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {t} (id int primary key, n int); INSERT INTO {t} VALUES (1, 0);
             CREATE SEQUENCE {seq};
             CREATE VIEW {view} AS SELECT inet_server_port() AS port;
             CREATE UNLOGGED TABLE {unlogged} (a int); INSERT INTO {unlogged} VALUES (1);
             CREATE FUNCTION {vf}() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1';
             CREATE FUNCTION {sf}() RETURNS int STABLE LANGUAGE sql AS 'SELECT 1';
             CREATE FUNCTION {vf}(int, int) RETURNS int VOLATILE LANGUAGE sql AS 'SELECT $1 + $2';
             CREATE OPERATOR {op} (LEFTARG = int, RIGHTARG = int, FUNCTION = {vf});
             GRANT ALL ON {t}, {seq}, {view}, {unlogged} TO app;",
            t = f.t,
            seq = f.seq,
            view = f.view,
            unlogged = f.unlogged,
            vf = f.volatile_fn,
            sf = f.stable_fn,
            op = f.volatile_op
        ))
        .await
        .unwrap();
    replicas_caught_up().await;
    f
}

async fn proxy(mode: &str) -> Proxy {
    let mut cfg = config();
    cfg.pool.mode = mode.into();
    let p = Proxy::start(cfg).await;
    p.wait_routable().await;
    p
}

/// Single statements in autocommit, each in a fresh session, in both protocols and both pool
/// modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_run_where_the_contract_says() {
    let f = fixture().await;
    let rows: Vec<(String, On, bool)> = vec![
        // (statement, where, works in the extended protocol too)
        ("SELECT inet_server_port()".into(), On::Replica, true),
        ("VALUES (inet_server_port())".into(), On::Replica, true),
        (format!("TABLE {}", f.view), On::Replica, true),
        ("WITH a AS (SELECT inet_server_port() AS p) SELECT p FROM a".into(), On::Replica, true),
        ("SHOW port".into(), On::Replica, false),
        (format!("SELECT inet_server_port(), {}()", f.stable_fn), On::Replica, true),
        ("SELECT inet_server_port(), random()".into(), On::Replica, true),
        ("SELECT 1; SELECT inet_server_port()".into(), On::Replica, false),
        ("/* pgsplit:replica */ SELECT inet_server_port() FROM pg_class LIMIT 1".into(), On::Replica, true),
        (format!("SELECT inet_server_port(), nextval('{}')::int", f.seq), On::Primary, true),
        ("SELECT inet_server_port(), txid_current()::int".into(), On::Primary, true),
        (format!("SELECT inet_server_port() FROM {} WHERE id = 1 FOR UPDATE", f.t), On::Primary, true),
        (
            format!("SELECT inet_server_port() FROM {} WHERE id = 1 FOR NO KEY UPDATE SKIP LOCKED", f.t),
            On::Primary,
            true,
        ),
        (format!("SELECT inet_server_port() FROM {} WHERE id = 1 FOR SHARE", f.t), On::Primary, true),
        (
            format!(
                "WITH x AS (UPDATE {} SET n = n + 1 WHERE id = 1 RETURNING inet_server_port() AS p) SELECT p FROM x",
                f.t
            ),
            On::Primary,
            true,
        ),
        (
            format!("INSERT INTO {} VALUES (1000 + (random() * 100000)::int, 1) RETURNING inet_server_port()", f.t),
            On::Primary,
            true,
        ),
        (format!("SELECT inet_server_port(), {}()", f.volatile_fn), On::Primary, true),
        (format!("SELECT inet_server_port() {} 0", f.volatile_op), On::Primary, true),
        ("SELECT inet_server_port() + 0".into(), On::Replica, true),
        (format!("SELECT inet_server_port() FROM {}", f.unlogged), On::Primary, true),
        ("SELECT inet_server_port() FROM pg_class LIMIT 1".into(), On::Primary, true),
        ("/* pgsplit:primary */ SELECT inet_server_port()".into(), On::Primary, true),
        ("SELECT inet_server_port(), pg_advisory_xact_lock(1)::text".into(), On::Primary, true),
        (format!("SELECT nextval('{}'); SELECT inet_server_port()", f.seq), On::Primary, false),
    ];
    for mode in ["transaction", "session"] {
        let p = proxy(mode).await;
        for (sql, want, extended) in &rows {
            let c = pg(&p.app_url()).await;
            let got = on(port_simple(&c, sql).await);
            assert_eq!(got, *want, "{mode} mode, simple protocol: {sql}");
            if *extended {
                let c = pg(&p.app_url()).await;
                let got = on(port_extended(&c, sql).await);
                assert_eq!(got, *want, "{mode} mode, extended protocol: {sql}");
            }
        }
        p.stop().await;
    }
}

/// Statements that a replica would refuse succeed: they reached the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_utilities_reach_the_primary() {
    let f = fixture().await;
    let p = proxy("transaction").await;
    let c = pg(&p.app_url()).await;
    let t2 = unique("rt_ddl");
    for sql in [
        format!("CREATE TABLE {t2} (a int)"),
        format!("ALTER TABLE {t2} ADD COLUMN b int"),
        format!("COMMENT ON TABLE {t2} IS 'routing test'"),
        format!("GRANT SELECT ON {t2} TO PUBLIC"),
        format!("INSERT INTO {t2} VALUES (1, 2)"),
        format!("UPDATE {t2} SET b = 3"),
        format!("DELETE FROM {t2} WHERE a = 0"),
        format!("MERGE INTO {t2} USING (VALUES (1)) v(a) ON {t2}.a = v.a WHEN MATCHED THEN UPDATE SET b = 4"),
        format!("SELECT * INTO {t2}_copy FROM {t2}"),
        format!("CREATE TABLE {t2}_as AS SELECT * FROM {t2}"),
        format!("CREATE MATERIALIZED VIEW {t2}_mv AS SELECT * FROM {t2}"),
        format!("REFRESH MATERIALIZED VIEW {t2}_mv"),
        format!("EXPLAIN ANALYZE INSERT INTO {t2} VALUES (9, 9)"),
        format!("BEGIN; LOCK TABLE {t2}; COMMIT"),
        "DO $$ BEGIN PERFORM 1; END $$".to_string(),
        format!("VACUUM {t2}"),
        format!("ANALYZE {t2}"),
        "NOTIFY rt_channel, 'x'".to_string(),
        format!("SELECT setval('{}', 100)", f.seq),
        format!("TRUNCATE {t2}_copy"),
        format!("DROP MATERIALIZED VIEW {t2}_mv; DROP TABLE {t2}_as, {t2}_copy"),
    ] {
        c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    // EXPLAIN ANALYZE of the insert really inserted (so it ran on the primary).
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {t2} WHERE a = 9"), &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    // COPY FROM STDIN and the writing COPY TO
    let sink = c.copy_in::<_, bytes::Bytes>(&format!("COPY {t2} FROM STDIN")).await.unwrap();
    futures_util::pin_mut!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"5\t5\n")).await.unwrap();
    sink.finish().await.unwrap();
    // plain COPY TO STDOUT of a table and of a query go to a replica
    let p2 = pg(&p.app_url()).await;
    let out: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(
        p2.copy_out(&format!("COPY (SELECT * FROM {}) TO STDOUT", f.view)).await.unwrap(),
    )
    .await
    .unwrap();
    let port: u16 = String::from_utf8(out.concat()).unwrap().trim().parse().unwrap();
    assert_eq!(on(port), On::Replica);
    let out: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(
        p2.copy_out(&format!("COPY (UPDATE {} SET n = n + 1 RETURNING inet_server_port()) TO STDOUT", f.t))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let port: u16 = String::from_utf8(out.concat()).unwrap().trim().parse().unwrap();
    assert_eq!(on(port), On::Primary);
    // a parse error goes to the primary, whose error the client sees
    let e = c.batch_execute("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    c.batch_execute(&format!("DROP TABLE {t2}")).await.unwrap();
    p.stop().await;
}

/// Transactions and session state: where the next read runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_session_state() {
    let f = fixture().await;
    for mode in ["transaction", "session"] {
        // round robin, so that one session's reads visit both replicas (least-outstanding
        // balancing keeps an unloaded session on the replica it read from last)
        let mut cfg = config();
        cfg.pool.mode = mode.into();
        cfg.routing.load_balance = "round_robin".into();
        let p = Proxy::start(cfg).await;
        p.wait_routable().await;
        let read = "SELECT inet_server_port()";
        // (setup, where the next read runs, release, where the read after the release runs)
        let cases: Vec<(String, On, Option<&str>, On)> = vec![
            ("BEGIN READ ONLY".into(), On::Replica, Some("COMMIT"), On::Replica),
            (
                "START TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ".into(),
                On::Replica,
                Some("COMMIT"),
                On::Replica,
            ),
            ("BEGIN".into(), On::Primary, Some("COMMIT"), On::Replica),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY".into(), On::Primary, Some("ROLLBACK"), On::Replica),
            ("LISTEN rt_listen".into(), On::Primary, Some("UNLISTEN *"), On::Replica),
            ("CREATE TEMP TABLE rt_temp (a int)".into(), On::Primary, Some("DISCARD ALL"), On::Replica),
            ("SELECT pg_advisory_lock(42)".into(), On::Primary, Some("SELECT pg_advisory_unlock_all()"), On::Replica),
            ("DECLARE rt_cur CURSOR WITH HOLD FOR SELECT 1".into(), On::Primary, Some("CLOSE ALL"), On::Replica),
            (
                format!("SELECT nextval('{}'), currval('{}')", f.seq, f.seq),
                On::Primary,
                Some("DISCARD SEQUENCES"),
                On::Replica,
            ),
            (
                "SET default_transaction_isolation = serializable".into(),
                On::Primary,
                Some("RESET default_transaction_isolation"),
                On::Replica,
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE".into(),
                On::Primary,
                Some("RESET ALL"),
                On::Replica,
            ),
            ("SET statement_timeout = '42s'".into(), On::Replica, None, On::Replica),
        ];
        for (setup, want, release, after) in cases {
            let c = pg(&p.app_url()).await;
            // Where the read goes must not depend on how fast a write replays here: some setups
            // write (nextval), so this session reads with eventual consistency.
            c.batch_execute("SET pgsplit.consistency = 'eventual'").await.unwrap();
            c.batch_execute(&setup).await.unwrap_or_else(|e| panic!("{setup}: {e:?}"));
            assert_eq!(on(port_simple(&c, read).await), want, "{mode}: after {setup}");
            assert_eq!(on(port_extended(&c, read).await), want, "{mode}: after {setup} (extended)");
            if let Some(r) = release {
                c.batch_execute(r).await.unwrap_or_else(|e| panic!("{r}: {e:?}"));
                // the release statements wrote nothing, so reads go back to replicas
                assert_eq!(on(port_simple(&c, read).await), after, "{mode}: after {setup}; {r}");
            }
        }
        // Session settings are replayed on replicas.
        let c = pg(&p.app_url()).await;
        let mode_shown: String = c
            .simple_query("SHOW pgsplit.consistency")
            .await
            .unwrap()
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap();
        assert_eq!(mode_shown, "session");
        c.batch_execute("SET work_mem = '7MB'; SET application_name = 'rt-app'").await.unwrap();
        for _ in 0..6 {
            let row = c
                .query_one(
                    "SELECT current_setting('work_mem'), current_setting('application_name'), inet_server_port()",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, &str>(0), "7MB");
            assert_eq!(row.get::<_, &str>(1), "rt-app");
            assert_eq!(on(row.get::<_, i32>(2) as u16), On::Replica);
        }
        // A SET inside a rolled-back transaction does not stick.
        c.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK").await.unwrap();
        let v: String = c.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
        assert_eq!(v, "7MB");
        // SQL PREPARE/EXECUTE: routed by the prepared query's class, prepared wherever it runs.
        c.batch_execute("PREPARE rt_read AS SELECT inet_server_port()").await.unwrap();
        // Until it has run on both replicas (a replica may sit out a moment while another
        // test's write load makes it lag), bounded.
        let mut ports = HashSet::new();
        for i in 0..200 {
            let port = port_simple(&c, "EXECUTE rt_read").await;
            assert_eq!(on(port), On::Replica, "{mode}: EXECUTE of a read");
            ports.insert(port);
            if i >= 20 && ports.len() == 2 {
                break;
            }
            if i >= 20 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if mode == "transaction" {
            assert_eq!(ports.len(), 2, "EXECUTE ran on both replicas");
        }
        c.batch_execute(&format!(
            "PREPARE rt_write(int) AS INSERT INTO {} VALUES ($1, 0) RETURNING inet_server_port()",
            f.t
        ))
        .await
        .unwrap();
        let id = 50_000 + if mode == "session" { 1 } else { 0 };
        assert_eq!(on(port_simple(&c, &format!("EXECUTE rt_write({id})")).await), On::Primary);
        let e = c.batch_execute("PREPARE rt_read AS SELECT 1").await.unwrap_err();
        assert_eq!(sqlstate(&e), "42P05");
        // other clients do not see this client's statements
        let other = pg(&p.app_url()).await;
        let e = other.batch_execute("EXECUTE rt_read").await.unwrap_err();
        assert_eq!(sqlstate(&e), "26000");
        c.batch_execute("DEALLOCATE rt_read").await.unwrap();
        let e = c.batch_execute("EXECUTE rt_read").await.unwrap_err();
        assert_eq!(sqlstate(&e), "26000");
        p.stop().await;
    }
}

/// Reads in autocommit spread over both replicas; a session's read right after its own write
/// sees the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_and_follow_writes() {
    let f = fixture().await;
    let p = proxy("transaction").await;
    let clients = pgs(&p.app_url(), 4).await;
    let mut seen = HashSet::new();
    for i in 0..200 {
        let port = port_extended(&clients[i % 4], "SELECT inet_server_port()").await;
        seen.insert(port);
    }
    assert_eq!(seen, REPLICA_PORTS.into_iter().collect(), "reads spread over both replicas only");
    let c = &clients[0];
    for i in 0..50 {
        let id = 10_000 + i;
        c.execute(&format!("INSERT INTO {} VALUES ($1, $2)", f.t), &[&id, &i]).await.unwrap();
        let n: i32 = c
            .query_one(&format!("SELECT n FROM {} WHERE id = $1", f.t), &[&id])
            .await
            .expect("own write visible")
            .get(0);
        assert_eq!(n, i);
    }
    // once the write has replayed (which other tests' write load can slow down), reads go back
    // to replicas
    let mut back = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if on(port_simple(c, "SELECT inet_server_port()").await) == On::Replica {
            back = true;
            break;
        }
    }
    assert!(back, "reads stayed on the primary for 5 s after the last write");
    p.stop().await;
}

/// psql and sqlx route too; read preferences by application name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_clients_and_preferences() {
    use sqlx::Connection;
    let mut cfg = config();
    cfg.routing.rules = vec![pgsplit::config::RuleConfig {
        application_name: "reports-on-primary".into(),
        reads: "primary".into(),
        ..Default::default()
    }];
    let p = Proxy::start(cfg).await;
    p.wait_routable().await;
    let port = p.port();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || psql(port, "app", "app", "app", &["-Atc", "SELECT inet_server_port()"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert_eq!(on(out.trim().parse().unwrap()), On::Replica);
    let mut conn = sqlx::PgConnection::connect(&p.app_url()).await.unwrap();
    let port: i32 = sqlx::query_scalar("SELECT inet_server_port()").fetch_one(&mut conn).await.unwrap();
    assert_eq!(on(port as u16), On::Replica);
    conn.close().await.unwrap();
    let c = pg(&format!("{}?application_name=reports-on-primary", p.app_url())).await;
    assert_eq!(on(port_simple(&c, "SELECT inet_server_port()").await), On::Primary);
    p.stop().await;
}

/// pgbench tpcb-like through pgsplit: no failed transactions, and no write ever reached a
/// replica (the replicas' own logs show no read-only refusals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_writes_never_reach_a_replica() {
    cluster();
    let db = "pgbench_rt";
    let admin = primary_admin().await;
    let exists: i64 =
        admin.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&db]).await.unwrap().get(0);
    if exists == 0 {
        admin.batch_execute(&format!("CREATE DATABASE {db} OWNER app")).await.unwrap();
    }
    let init = std::process::Command::new("pgbench")
        .env("PGPASSWORD", "app")
        .args(["-h", "127.0.0.1", "-p", &PRIMARY_PORT.to_string(), "-U", "app", "-i", "-s", "1", "-q", db])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    replicas_caught_up().await;
    let refusals = || -> usize {
        (1..=2)
            .map(|i| {
                std::fs::read_to_string(repo().join(format!(".cluster/replica{i}.log")))
                    .unwrap_or_default()
                    .matches("read-only transaction")
                    .count()
            })
            .sum()
    };
    let before = refusals();
    let p = proxy("transaction").await;
    let port = p.port().to_string();
    for mode in ["simple", "extended", "prepared"] {
        let port = port.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("pgbench")
                .env("PGPASSWORD", "app")
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "app", "-M", mode, "-c", "6", "-j", "2", "-T", "2", db])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        assert!(text.contains("number of failed transactions: 0 (0.000%)"), "{text}");
    }
    assert_eq!(refusals(), before, "a replica refused a write");
    p.stop().await;
}

/// Runs one unnamed statement the way libpq's `PQexecParams` does (Parse, Bind, Execute, Sync of
/// the unnamed statement): its rows' first values as text, or the SQLSTATE of its error.
async fn exec_unnamed(s: &mut tokio::net::TcpStream, sql: &str) -> Result<Vec<String>, String> {
    use pgsplit_protocol::{BackendMessage, FrontendMessage};
    use tokio::io::AsyncWriteExt;
    let mut out = bytes::BytesMut::new();
    encode_unnamed(&mut out, sql);
    FrontendMessage::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let (rows, error) = read_until(s, |m| matches!(m, BackendMessage::ReadyForQuery(_))).await;
    error.map_or(Ok(rows), |(code, _)| Err(code))
}

/// A proxy, a new table `<prefix>_...` with an `id int` column, and a raw client logged in.
async fn raw_client_with_table(prefix: &str) -> (Proxy, String, tokio::net::TcpStream) {
    let p = proxy("transaction").await;
    let t = unique(prefix);
    pg(&p.app_url()).await.batch_execute(&format!("CREATE TABLE {t} (id int)")).await.unwrap();
    let (s, _) = raw_login(p.addr, "app", "app", "app").await;
    (p, t, s)
}

/// A client that re-parses the unnamed statement for every query reuses its classification
/// only for the very same text: a write parsed after reads of another text still goes to the
/// primary, and the reads before it to replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reparsed_unnamed_statements_route_by_their_own_text() {
    let (p, t, mut s) = raw_client_with_table("rt_unnamed").await;
    for _ in 0..3 {
        let on = exec_unnamed(&mut s, "SELECT pg_is_in_recovery()::text").await.unwrap();
        assert_eq!(on, ["true"], "a read goes to a replica");
    }
    for i in 0..3 {
        exec_unnamed(&mut s, &format!("INSERT INTO {t} VALUES ({i})")).await.unwrap();
        exec_unnamed(&mut s, &format!("INSERT INTO {t} VALUES ({i})")).await.unwrap();
        exec_unnamed(&mut s, "SELECT pg_is_in_recovery()::text").await.unwrap();
    }
    let n = exec_unnamed(&mut s, &format!("/* pgsplit:primary */ SELECT count(*) FROM {t}")).await.unwrap();
    assert_eq!(n, ["6"]);
    p.stop().await;
}

/// Reads answers up to the first message `until` accepts: the first column of each row as text,
/// and the SQLSTATE and message of the last error.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    until: impl Fn(&pgsplit_protocol::BackendMessage) -> bool,
) -> (Vec<String>, Option<(String, String)>) {
    use pgsplit_protocol::BackendMessage;
    let mut buf = bytes::BytesMut::new();
    let (mut rows, mut error) = (Vec::new(), None);
    loop {
        let m = read_backend(s, &mut buf).await.expect("answer");
        match &m {
            // one column: count (2 bytes), length (4 bytes), the text
            BackendMessage::Raw { tag: b'D', body } => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
            BackendMessage::ErrorResponse(e) => error = Some((e.code().to_owned(), e.message().to_owned())),
            _ => {}
        }
        if until(&m) {
            return (rows, error);
        }
    }
}

/// A batch routed before its Sync arrived (the client flushed and waits for the first answers,
/// as pipelining drivers do) runs its read on a replica. A write that comes later in the same
/// batch is refused by pgsplit itself and never sent there; the same statements sent as one
/// whole batch run together on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_flushed_read_in_one_batch() {
    use pgsplit_protocol::{BackendMessage, FrontendMessage};
    use tokio::io::AsyncWriteExt;
    let (p, t, mut s) = raw_client_with_table("rt_flushed").await;
    let ready = |m: &BackendMessage| matches!(m, BackendMessage::ReadyForQuery(_));

    let mut out = bytes::BytesMut::new();
    encode_unnamed(&mut out, "SELECT pg_is_in_recovery()::text");
    FrontendMessage::Flush.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let (rows, error) = read_until(&mut s, |m| matches!(m, BackendMessage::CommandComplete { .. })).await;
    assert_eq!((rows, error), (vec!["true".to_owned()], None), "the flushed read ran on a replica");
    out.clear();
    encode_unnamed(&mut out, &format!("INSERT INTO {t} VALUES (1)"));
    FrontendMessage::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let (_, error) = read_until(&mut s, ready).await;
    let (code, message) = error.expect("the write is refused");
    assert_eq!(code, "25006");
    assert!(message.starts_with("pgsplit:"), "refused by pgsplit, not by the replica: {message}");

    out.clear();
    encode_unnamed(&mut out, "SELECT pg_is_in_recovery()::text");
    encode_unnamed(&mut out, &format!("INSERT INTO {t} VALUES (2)"));
    FrontendMessage::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let (rows, error) = read_until(&mut s, ready).await;
    assert_eq!((rows, error), (vec!["false".to_owned()], None), "a whole batch with a write runs on the primary");

    // In a read-only transaction on a replica, a write in a whole batch gets the server's own
    // refusal, as in the simple protocol. (The session's own write above keeps its reads on the
    // primary until a replica has it: try again until the transaction starts on one.)
    let start = std::time::Instant::now();
    loop {
        exec_unnamed(&mut s, "BEGIN READ ONLY").await.unwrap();
        if exec_unnamed(&mut s, "SELECT pg_is_in_recovery()::text").await.unwrap() == ["true"] {
            break;
        }
        exec_unnamed(&mut s, "ROLLBACK").await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "no read-only transaction on a replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.clear();
    encode_unnamed(&mut out, &format!("INSERT INTO {t} VALUES (3)"));
    FrontendMessage::Sync.encode(&mut out);
    s.write_all(&out).await.unwrap();
    let (code, message) = read_until(&mut s, ready).await.1.expect("the write is refused");
    assert_eq!(code, "25006");
    assert!(message.contains("read-only transaction"), "the server's own refusal: {message}");
    exec_unnamed(&mut s, "ROLLBACK").await.unwrap();

    let n = exec_unnamed(&mut s, &format!("/* pgsplit:primary */ SELECT count(*) FROM {t}")).await.unwrap();
    assert_eq!(n, ["1"], "only the write of the whole batch ran");
    p.stop().await;
}
