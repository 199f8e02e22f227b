//! Everything clients do passes through: simple and extended protocol, pipelining, named
//! statements across backend connections, errors and failed transactions, COPY, LISTEN/NOTIFY,
//! cancel, through psql, tokio-postgres and sqlx.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use sqlx::{Connection, Row};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_simple_and_multi_statement() {
    let p = Proxy::default().await;
    let port = p.port();
    let t = unique("psql");
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        psql(
            port,
            "app",
            "app",
            "app",
            &[
                "-At",
                "-c",
                &format!("CREATE TABLE {t} (id int primary key, v text); INSERT INTO {t} VALUES (1, 'a'), (2, 'b');"),
                "-c",
                &format!("SELECT count(*) FROM {t}; SELECT v FROM {t} ORDER BY id"),
                "-c",
                &format!("DROP TABLE {t}"),
            ],
        )
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2\na\nb");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_extended_and_pipelined() {
    let p = Proxy::default().await;
    let c = pg(&p.app_url()).await;
    // extended protocol with parameters and types
    let row = c.query_one("SELECT $1::int + 1 AS n, $2::text AS s", &[&41i32, &"hi"]).await.unwrap();
    assert_eq!(row.get::<_, i32>("n"), 42);
    assert_eq!(row.get::<_, &str>("s"), "hi");
    // named statements, used many times
    let stmt = c.prepare("SELECT $1::bigint * 2").await.unwrap();
    for i in 0..50i64 {
        let v: i64 = c.query_one(&stmt, &[&i]).await.unwrap().get(0);
        assert_eq!(v, i * 2);
    }
    // pipelining: many queries in flight at once on one connection
    let futs = (0..100i32).map(|i| {
        let c = &c;
        let stmt = &stmt;
        async move { c.query_one(stmt, &[&(i as i64)]).await.map(|r| r.get::<_, i64>(0)) }
    });
    let results = futures_util::future::join_all(futs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i64 * 2);
    }
    // simple protocol, multiple statements
    let msgs = c.simple_query("SELECT 1; SELECT 'two'").await.unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["1", "two"]);
    p.stop().await;
}

/// Named statements keep working in transaction mode when the session lands on other
/// backend connections: pgsplit prepares them where needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_follow_the_session_across_backends() {
    let mut cfg = config();
    cfg.pool.size = 4;
    // the session's reads alternate between the replicas, so they land on other connections
    cfg.routing.load_balance = "round_robin".into();
    let p = Proxy::start(cfg).await;
    let a = pg(&p.app_url()).await;
    let stmt = a.prepare("SELECT pg_backend_pid(), $1::int").await.unwrap();
    let mut pids = std::collections::HashSet::new();
    // Other clients hold connections in transactions so that `a` is moved around.
    for round in 0..12 {
        let holders: Vec<_> = pgs(&p.app_url(), round as usize % 4).await;
        for h in &holders {
            h.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        let row = a.query_one(&stmt, &[&round]).await.unwrap();
        pids.insert(row.get::<_, i32>(0));
        assert_eq!(row.get::<_, i32>(1), round);
        for h in &holders {
            h.batch_execute("COMMIT").await.unwrap();
        }
    }
    assert!(pids.len() > 1, "the statement ran on {} backend(s) only", pids.len());
    // Closing the statement and preparing the same name again works.
    drop(stmt);
    let s2 = a.prepare("SELECT 7").await.unwrap();
    assert_eq!(a.query_one(&s2, &[]).await.unwrap().get::<_, i32>(0), 7);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_failed_transactions() {
    let p = Proxy::default().await;
    let c = pg(&p.app_url()).await;
    let e = c.simple_query("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    // the session is still usable
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.batch_execute("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02", "failed transaction until ROLLBACK");
    let e = c.query("SELECT $1::int", &[&1i32]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    // notices pass through
    let msgs = c.simple_query("DO $$ BEGIN RAISE NOTICE 'hello'; END $$").await;
    assert!(msgs.is_ok());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_client_works() {
    let p = Proxy::default().await;
    let mut conn = sqlx::PgConnection::connect(&p.app_url()).await.unwrap();
    let row = sqlx::query("SELECT $1::int4 + 1 AS n").bind(1i32).fetch_one(&mut conn).await.unwrap();
    assert_eq!(row.get::<i32, _>("n"), 2);
    // sqlx caches named statements: run the same one many times
    for i in 0..20i32 {
        let n: i32 = sqlx::query_scalar("SELECT $1::int4 * 3").bind(i).fetch_one(&mut conn).await.unwrap();
        assert_eq!(n, i * 3);
    }
    let mut tx = conn.begin().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT txid_current()").fetch_one(&mut *tx).await.unwrap();
    assert!(n > 0);
    tx.rollback().await.unwrap();
    conn.close().await.unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_both_ways_100k_rows() {
    let p = Proxy::default().await;
    let c = pg(&p.app_url()).await;
    let t = unique("copy");
    c.batch_execute(&format!("CREATE TABLE {t} (id int, v text)")).await.unwrap();
    let sink = c.copy_in(&format!("COPY {t} FROM STDIN")).await.unwrap();
    pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..100_000 {
        chunk.push_str(&format!("{i}\trow {i}\n"));
        if chunk.len() > 64 * 1024 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk))).await.unwrap();
        }
    }
    sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 100_000);
    let stream = c.copy_out(&format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT")).await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let all: Vec<u8> = chunks.concat();
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.lines().count(), 100_000);
    assert_eq!(text.lines().nth(99_999), Some("99999\trow 99999"));
    // a COPY that fails midway leaves the session usable
    let sink = c.copy_in::<_, bytes::Bytes>(&format!("COPY {t} FROM STDIN")).await.unwrap();
    pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n")).await.unwrap();
    assert!(sink.finish().await.is_err());
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await.unwrap().get(0);
    assert_eq!(n, 100_000);
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_across_clients() {
    let p = Proxy::default().await;
    let (listener, mut conn) = tokio_postgres::connect(&p.app_url(), tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    let channel = unique("chan");
    listener.batch_execute(&format!("LISTEN {channel}")).await.unwrap();
    // The listener keeps its connection while other clients churn through the pool.
    let sender = pg(&p.app_url()).await;
    for i in 0..5 {
        let others: Vec<_> = pgs(&p.app_url(), 3).await;
        for o in &others {
            o.batch_execute("SELECT 1").await.unwrap();
        }
        sender.batch_execute(&format!("NOTIFY {channel}, 'msg {i}'")).await.unwrap();
        let (ch, payload) =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("notification").unwrap();
        assert_eq!(ch, channel);
        assert_eq!(payload, format!("msg {i}"));
    }
    listener.batch_execute("SELECT 1").await.unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_query() {
    let p = Proxy::default().await;
    let a = pg(&p.app_url()).await;
    let b = pg(&p.app_url()).await;
    let token = a.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let r = a.batch_execute("SELECT pg_sleep(30)").await;
        (r, a)
    });
    // b runs a query of its own meanwhile: it must not be cancelled.
    let b_sleep = b.batch_execute("SELECT pg_sleep(1.5)");
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, a) = sleeper.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(2), "cancel took {:?}", started.elapsed());
    b_sleep.await.expect("the other client's query is not cancelled");
    // the cancelled session goes on
    assert_eq!(a.query_one("SELECT 5", &[]).await.unwrap().get::<_, i32>(0), 5);
    // a cancel with a wrong key does nothing
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_and_sets_hold_on_every_backend() {
    let mut cfg = config();
    cfg.pool.size = 3;
    let p = Proxy::start(cfg).await;
    let url = format!("{}?application_name=myapp&options=-c%20statement_timeout%3D1234", p.app_url());
    let c = pg(&url).await;
    c.batch_execute("SET search_path TO app_schema, public; SET TIME ZONE 'Asia/Tokyo'").await.unwrap();
    for _ in 0..10 {
        // Hold other connections so the next statement lands elsewhere.
        let others: Vec<_> = pgs(&p.app_url(), 2).await;
        for o in &others {
            o.batch_execute("BEGIN; SET LOCAL work_mem = '1MB'").await.unwrap();
        }
        let row = c
            .query_one(
                "SELECT current_setting('application_name'), current_setting('statement_timeout'), current_setting('search_path'), current_setting('TimeZone')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), "myapp");
        assert_eq!(row.get::<_, &str>(1), "1234ms");
        assert_eq!(row.get::<_, &str>(2), "app_schema, public");
        assert_eq!(row.get::<_, &str>(3), "Asia/Tokyo");
        for o in &others {
            o.batch_execute("COMMIT").await.unwrap();
        }
    }
    // RESET returns to the startup value, RESET ALL to all of them.
    c.batch_execute("SET application_name = 'other'; RESET application_name").await.unwrap();
    let v: String = c.query_one("SHOW application_name", &[]).await.unwrap().get(0);
    assert_eq!(v, "myapp");
    p.stop().await;
}

async fn show(c: &tokio_postgres::Client, var: &str) -> String {
    c.query_one(&format!("SHOW pgsplit.{var}"), &[]).await.unwrap().get(0)
}

/// pgsplit's own commands work in the extended protocol as drivers send them (tokio-postgres
/// and sqlx: named statements, cached or not; the unnamed statement), in both pool modes; a
/// batch that mixes them with statements for the server is refused with a clear error, and the
/// session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgsplit_commands_in_the_extended_protocol() {
    use pgsplit_protocol::{BackendMessage, FrontendMessage};
    use tokio::io::AsyncWriteExt;
    for mode in ["transaction", "session"] {
        let mut cfg = config();
        cfg.pool.mode = mode.into();
        let p = Proxy::start(cfg).await;
        let c = pg(&p.app_url()).await;
        assert_eq!(show(&c, "consistency").await, "session", "{mode}");
        assert_eq!(c.execute("SET pgsplit.consistency = 'global'", &[]).await.unwrap(), 0);
        assert_eq!(show(&c, "consistency").await, "global", "{mode}");
        let two: i32 = c.query_one("SELECT 1 + 1", &[]).await.unwrap().get(0);
        assert_eq!(two, 2);
        // a prepared SHOW, run twice, sees the change made between
        let st = c.prepare("SHOW pgsplit.min_lsn").await.unwrap();
        assert_eq!(c.query_one(&st, &[]).await.unwrap().get::<_, String>(0), "0/0");
        c.execute("SET pgsplit.min_lsn = '0/10'", &[]).await.unwrap();
        assert_eq!(c.query_one(&st, &[]).await.unwrap().get::<_, String>(0), "0/10");
        c.execute("RESET pgsplit.min_lsn", &[]).await.unwrap();
        // a write's position, read in the extended protocol
        let t = unique("ext_cmd");
        c.execute(&format!("CREATE TABLE {t} (a int)"), &[]).await.unwrap();
        c.execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&1i32]).await.unwrap();
        assert_ne!(show(&c, "last_write_lsn").await, "0/0", "{mode}");
        // errors are the command's own, and the session goes on
        let e = c.execute("SET pgsplit.min_lsn = 'nonsense'", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "22P02", "{e}");
        let e = c.execute("SET pgsplit.consistency = 'sometimes'", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{e}");
        let e = c.query("SHOW pgsplit.no_such_thing", &[]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42704", "{e}");
        assert_eq!(c.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0), 3);

        // sqlx: cached named statements and the unnamed one
        let mut conn = sqlx::PgConnection::connect(&p.app_url()).await.unwrap();
        for _ in 0..2 {
            let v: String = sqlx::query_scalar("SHOW pgsplit.consistency").fetch_one(&mut conn).await.unwrap();
            assert_eq!(v, "session");
        }
        sqlx::query("SET pgsplit.consistency = 'time'").execute(&mut conn).await.unwrap();
        let v: String =
            sqlx::query_scalar("SHOW pgsplit.consistency").persistent(false).fetch_one(&mut conn).await.unwrap();
        assert_eq!(v, "time");
        let n: i32 = sqlx::query_scalar("SELECT $1::int4").bind(5i32).fetch_one(&mut conn).await.unwrap();
        assert_eq!(n, 5);

        // a batch mixing a pgsplit command with a server statement
        let (mut s, _) = raw_login(p.addr, "app", "app", "app").await;
        let mut out = bytes::BytesMut::new();
        for sql in ["SELECT 1", "SHOW pgsplit.consistency"] {
            encode_unnamed(&mut out, sql);
        }
        FrontendMessage::Sync.encode(&mut out);
        FrontendMessage::Query { sql: "SELECT 'after'".into() }.encode(&mut out);
        s.write_all(&out).await.unwrap();
        let mut buf = bytes::BytesMut::new();
        match read_backend(&mut s, &mut buf).await.unwrap() {
            BackendMessage::ErrorResponse(e) => assert_eq!(e.code(), "0A000", "{}", e.message()),
            m => panic!("{m:?}"),
        }
        assert!(matches!(read_backend(&mut s, &mut buf).await.unwrap(), BackendMessage::ReadyForQuery(_)));
        let mut row = None;
        loop {
            match read_backend(&mut s, &mut buf).await.unwrap() {
                BackendMessage::Raw { tag: b'D', body } => row = Some(body),
                BackendMessage::ReadyForQuery(_) => break,
                BackendMessage::ErrorResponse(e) => panic!("{}", e.message()),
                _ => {}
            }
        }
        assert!(row.expect("a row").ends_with(b"after"));
        p.stop().await;
    }
}
