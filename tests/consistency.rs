//! Freshness against a cluster of its own where replica 2 lags on purpose
//! (`recovery_min_apply_delay` above `max_lag`): it gets no reads, a session always reads its
//! own writes, positions carry across connections, the lag metrics follow the delay, and the
//! dashboard shows it — in headless Chromium.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn lagging_cluster(name: &str, port: u16) -> (PrivateCluster, Proxy) {
    let cluster = PrivateCluster::up(name, port, 2, &["--lag-replica", "2", "--lag-delay", "3s"]).await;
    let mut cfg = cluster.config();
    cfg.consistency.max_lag = Duration::from_secs(1);
    cfg.admin.users = vec!["app".into()];
    let p = Proxy::start(cfg).await;
    // keep WAL moving so that the delay shows
    let c = pg(&p.app_url()).await;
    c.batch_execute("CREATE TABLE IF NOT EXISTS ticks (t timestamptz DEFAULT now())").await.unwrap();
    let start = Instant::now();
    loop {
        c.batch_execute("INSERT INTO ticks DEFAULT VALUES").await.unwrap();
        let s = p.ctx.topology.snapshot();
        if s.readable(1) && s.nodes[2].lagging && p.ctx.topology.catalogs.get("app").is_some() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the lag never showed: {:?}", s.nodes);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cluster, p)
}

/// Keeps writing so that replica 2 stays behind while a test runs.
fn keep_writing(url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let c = pg(&url).await;
        loop {
            if c.batch_execute("INSERT INTO ticks DEFAULT VALUES").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_and_read_your_writes() {
    const PORT: u16 = 16632;
    let (cluster, p) = lagging_cluster("lag", PORT).await;
    let writer = keep_writing(p.app_url());

    // The lagging replica receives no reads.
    let clients = pgs(&p.app_url(), 4).await;
    for i in 0..200 {
        let port = port_extended(&clients[i % 4], "SELECT inet_server_port()").await;
        assert_ne!(port, PORT + 2, "a read went to the lagging replica");
    }

    // 1,000 INSERT-then-SELECT in one session never miss, in every mode but eventual.
    let t = unique("ryw");
    clients[0].batch_execute(&format!("CREATE TABLE {t} (id int primary key, mode text)")).await.unwrap();
    for mode in ["session", "global", "time"] {
        let c = pg(&p.app_url()).await;
        c.batch_execute(&format!("SET pgsplit.consistency = '{mode}'")).await.unwrap();
        let insert = c.prepare(&format!("INSERT INTO {t} VALUES ($1, $2)")).await.unwrap();
        let select = c.prepare(&format!("SELECT mode FROM {t} WHERE id = $1")).await.unwrap();
        let base = match mode {
            "session" => 0,
            "global" => 10_000,
            _ => 20_000,
        };
        for i in 0..1000 {
            let id: i32 = base + i;
            c.execute(&insert, &[&id, &mode]).await.unwrap();
            let rows = c.query(&select, &[&id]).await.unwrap();
            assert_eq!(rows.len(), 1, "{mode}: row {id} not visible right after its insert");
        }
        // the simple protocol too
        for i in 1000..1100 {
            let id: i32 = base + i;
            c.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, '{mode}')")).await.unwrap();
            let msgs = c.simple_query(&format!("SELECT mode FROM {t} WHERE id = {id}")).await.unwrap();
            let found = msgs.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)));
            assert!(found, "{mode}: row {id} not visible right after its insert (simple)");
        }
    }

    // A position carried from one connection to another.
    let a = pg(&p.app_url()).await;
    let b = pg(&p.app_url()).await;
    b.batch_execute("SET pgsplit.consistency = 'eventual'").await.unwrap();
    for i in 0..50 {
        let id = 30_000 + i;
        a.batch_execute(&format!("INSERT INTO {t} VALUES ({id}, 'carried')")).await.unwrap();
        let lsn = a
            .simple_query("SHOW pgsplit.last_write_lsn")
            .await
            .unwrap()
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .expect("a position");
        assert_ne!(lsn, "0/0");
        b.batch_execute(&format!("SET pgsplit.min_lsn = '{lsn}'")).await.unwrap();
        let rows = b.query(&format!("SELECT 1 FROM {t} WHERE id = $1"), &[&id]).await.unwrap();
        assert_eq!(rows.len(), 1, "row {id} not visible on the second connection at {lsn}");
    }
    writer.abort();
    p.stop().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_metrics_and_dashboard_follow_the_delay() {
    const PORT: u16 = 16732;
    let (cluster, p) = lagging_cluster("lag2", PORT).await;
    let writer = keep_writing(p.app_url());
    let lagging = format!("node=\"127.0.0.1:{}\"", PORT + 2);
    let fine = format!("node=\"127.0.0.1:{}\"", PORT + 1);
    let text = scrape(&p).await;
    assert!(metric(&text, "pgsplit_replica_lag_seconds", &lagging).unwrap() > 1.0, "{text}");
    assert_eq!(metric(&text, "pgsplit_replica_lagging", &lagging), Some(1.0));
    assert!(metric(&text, "pgsplit_replica_lag_bytes", &lagging).unwrap() > 0.0);
    assert!(metric(&text, "pgsplit_replica_lag_seconds", &fine).unwrap() < 1.0);
    assert_eq!(metric(&text, "pgsplit_replica_lagging", &fine), Some(0.0));
    assert_eq!(metric(&text, "pgsplit_max_lag_seconds", ""), Some(1.0));

    // The dashboard, loaded in headless Chromium, shows the lagging replica.
    let admin = p.admin.unwrap();
    let dom = tokio::task::spawn_blocking(move || dump_dom(&format!("http://{admin}/dashboard"))).await.unwrap();
    assert!(dom.contains("data-loaded=\"true\""), "the page never rendered:\n{dom}");
    let card = card_of(&dom, &format!("127.0.0.1:{}", PORT + 2));
    assert!(card.contains("data-status=\"lagging\""), "{card}");
    assert!(card.contains(">lagging<"), "{card}");
    assert!(card.contains("class=\"threshold\""), "the chart has its threshold line: {card}");
    let ok = card_of(&dom, &format!("127.0.0.1:{}", PORT + 1));
    assert!(ok.contains("data-status=\"healthy\""), "{ok}");
    assert!(card_of(&dom, &format!("127.0.0.1:{PORT}")).contains("data-status=\"primary\""));

    // Without the delay the lag falls away and the replica is back; with it, it lags again.
    cluster.ctl.run(|c| c.set_delay(2, "0")).await;
    let start = Instant::now();
    loop {
        let text = scrape(&p).await;
        if metric(&text, "pgsplit_replica_lagging", &lagging) == Some(0.0) {
            assert!(metric(&text, "pgsplit_replica_lag_seconds", &lagging).unwrap() < 1.0);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "lag did not fall: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(p.ctx.topology.snapshot().readable(2));
    cluster.ctl.run(|c| c.set_delay(2, "4s")).await;
    let start = Instant::now();
    loop {
        let text = scrape(&p).await;
        if metric(&text, "pgsplit_replica_lagging", &lagging) == Some(1.0) {
            assert!(metric(&text, "pgsplit_replica_lag_seconds", &lagging).unwrap() > 1.0);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "lag did not rise: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.abort();
    p.stop().await;
    drop(cluster);
}

/// Runs headless Chromium on `url` and returns the DOM after its scripts ran.
fn dump_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(unique("pgsplit-chromium"));
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("chromium is installed (Debian package chromium)");
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The HTML of the dashboard card for `node`.
fn card_of(dom: &str, node: &str) -> String {
    let start = dom.find(&format!("data-node=\"{node}\"")).unwrap_or_else(|| panic!("no card for {node}:\n{dom}"));
    let from = dom[..start].rfind("<div").unwrap_or(start);
    let end = dom[start..].find("class=\"card node\"").map(|e| start + e).unwrap_or(dom.len());
    dom[from..end].to_owned()
}
