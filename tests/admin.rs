//! The SQL admin console and the admin HTTP endpoint.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_postgres::SimpleQueryMessage;

/// Runs a console command; returns its rows as strings.
async fn console(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect()),
            _ => None,
        })
        .collect()
}

fn proxy_config() -> pgsplit::config::Config {
    let mut cfg = config();
    cfg.admin.users = vec!["app".into()];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands() {
    let p = Proxy::start(proxy_config()).await;
    p.wait_routable().await;
    let busy = pg(&format!("{}?application_name=busy-app", p.app_url())).await;
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let listen = pg(&p.app_url()).await;
    listen.batch_execute("LISTEN admin_test").await.unwrap();
    let admin = pg(&p.url("app", "app", "pgsplit")).await;

    let replicas = console(&admin, "SHOW REPLICAS").await;
    assert_eq!(replicas.len(), 3);
    assert_eq!(replicas[0][1], format!("127.0.0.1:{PRIMARY_PORT}"));
    assert_eq!(replicas[0][2], "primary");
    assert_eq!(replicas[1][2], "replica");
    assert_eq!(replicas[1][3], "true", "healthy");

    let clients = console(&admin, "SHOW CLIENTS").await;
    let b = clients.iter().find(|r| r[4] == "busy-app").expect("the busy client is listed");
    assert_eq!(b[5], "in_transaction");
    assert_eq!(b[6], format!("127.0.0.1:{PRIMARY_PORT}"));
    assert!(clients.iter().any(|r| r[9] == "listen"), "the listener shows its pin: {clients:?}");

    let pools = console(&admin, "SHOW POOLS").await;
    let primary_pool = pools.iter().find(|r| r[0] == format!("127.0.0.1:{PRIMARY_PORT}") && r[2] == "app").unwrap();
    assert!(primary_pool[5].parse::<u32>().unwrap() >= 2, "two connections in use: {primary_pool:?}");

    let servers = console(&admin, "SHOW SERVERS").await;
    assert!(servers.iter().filter(|r| r[5] == "active").count() >= 2, "{servers:?}");

    let stats = console(&admin, "SHOW STATS").await;
    assert!(stats.iter().any(|r| r[0] == "routed_primary" && r[1] == "in_transaction" || r[1] == "tx_control"));

    let cfg = console(&admin, "SHOW CONFIG").await;
    assert!(cfg.iter().any(|r| r[0] == "pool.mode" && r[1] == "\"transaction\""));
    let pw = cfg.iter().find(|r| r[0] == "users[0].password").unwrap();
    assert_eq!(pw[1], "********", "passwords are hidden");

    let e = admin.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    busy.batch_execute("COMMIT").await.unwrap();

    // Only admin users get in.
    let mut cfg = config();
    cfg.admin.users = vec!["someone_else".into()];
    let p2 = Proxy::start(cfg).await;
    let e = try_pg(&p2.url("app", "app", "pgsplit")).await.expect_err("not an admin");
    assert_eq!(sqlstate(&e), "28000");
    p2.stop().await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_pause_and_reload() {
    let file = std::env::temp_dir().join(unique("pgsplit-reload")).with_extension("toml");
    let write_config = |reads: &str| {
        std::fs::write(
            &file,
            format!(
                "[cluster]\nprimary = \"127.0.0.1:{PRIMARY_PORT}\"\nreplicas = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\
                 [server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nusers = [\"app\"]\n\
                 [routing]\nreads = \"{reads}\"\n[[users]]\nname = \"app\"\npassword = \"app\"\n",
                PRIMARY_PORT + 1,
                PRIMARY_PORT + 2
            ),
        )
        .unwrap();
    };
    write_config("replicas");
    let load = {
        let file = file.clone();
        move || pgsplit::config::Config::load(Some(&file), Vec::new()).and_then(pgsplit::config::Settings::validate)
    };
    let first = load().unwrap().raw;
    let p = Proxy::start_with_reload(first, Some(Box::new(load))).await;
    p.wait_routable().await;
    let admin = pg(&p.url("app", "app", "pgsplit")).await;
    let c = pg(&p.app_url()).await;

    // BAN keeps reads off a replica; UNBAN lets them back.
    let banned = PRIMARY_PORT + 1;
    console(&admin, &format!("BAN '127.0.0.1:{banned}'")).await;
    for _ in 0..40 {
        assert_ne!(port_extended(&c, "SELECT inet_server_port()").await, banned);
    }
    console(&admin, "UNBAN 1").await;
    let mut back = false;
    for _ in 0..40 {
        back |= port_extended(&c, "SELECT inet_server_port()").await == banned;
    }
    assert!(back, "reads reach the unbanned replica");
    let e = admin.simple_query("BAN '10.9.9.9:1'").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");

    // RELOAD applies new routing to existing sessions, without dropping them.
    write_config("primary");
    console(&admin, "RELOAD").await;
    assert_eq!(port_extended(&c, "SELECT inet_server_port()").await, PRIMARY_PORT, "reads = primary after RELOAD");
    write_config("replicas");
    console(&admin, "RELOAD").await;
    assert_ne!(port_extended(&c, "SELECT inet_server_port()").await, PRIMARY_PORT);
    // a bad file is refused and changes nothing
    std::fs::write(&file, "[pool]\nmode = \"statement\"\n").unwrap();
    let e = admin.simple_query("RELOAD").await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("pool.mode"), "{e:?}");
    assert_ne!(port_extended(&c, "SELECT inet_server_port()").await, PRIMARY_PORT);

    // PAUSE holds new work until RESUME; the session survives.
    let t = Instant::now();
    console(&admin, "PAUSE").await;
    assert!(t.elapsed() < Duration::from_secs(2), "PAUSE waited {:?} with nothing running", t.elapsed());
    let started = Instant::now();
    let waiting = tokio::spawn(async move { port_extended(&c, "SELECT inet_server_port()").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a query ran while paused");
    console(&admin, "RESUME").await;
    waiting.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    p.stop().await;
    let _ = std::fs::remove_file(file);
}

/// Every metric pgsplit exports is documented, and /metrics, /api/status and the probes answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoint() {
    let p = Proxy::start(proxy_config()).await;
    p.wait_routable().await;
    let c = pg(&p.app_url()).await;
    c.batch_execute("SELECT 1; BEGIN; SELECT 1; COMMIT").await.unwrap();
    let _ = c.batch_execute("SELECT * FROM no_such_table").await;
    let admin = p.admin.unwrap();
    assert_eq!(http_get(admin, "/healthz").await.trim(), "ok");
    assert_eq!(http_get(admin, "/readyz").await.trim(), "ready");
    let status: serde_json::Value = serde_json::from_str(&http_get(admin, "/api/status?history=1").await).unwrap();
    assert_eq!(status["primary"], format!("127.0.0.1:{PRIMARY_PORT}"));
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    assert!(status["history"].as_array().is_some());
    let page = http_get(admin, "/dashboard").await;
    assert!(page.contains("<title>pgsplit") && !page.contains("http://cdn") && !page.contains("https://"));
    let text = scrape(&p).await;
    let docs = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let mut exported: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    exported.dedup();
    assert!(exported.len() >= 15, "{text}");
    for name in exported {
        assert!(docs.contains(&format!("`{name}`")), "{name} is exported but not documented in docs/operations.md");
    }
    for name in ["pgsplit_replica_lag_seconds", "pgsplit_queries_routed_total", "pgsplit_pool_connections"] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    p.stop().await;
}
