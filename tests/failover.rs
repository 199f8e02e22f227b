//! Faults on clusters of the tests' own: a failover moves writes to the promoted replica (and
//! never to a replica), a stopped replica is avoided within a second or two and its in-flight
//! read is retried elsewhere, and it is probed back in once it returns.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what} did not happen within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_writes_to_the_promoted_replica() {
    let cluster = PrivateCluster::up("failover", 16432, 2, &[]).await;
    let p = Proxy::start(cluster.config()).await;
    let t = unique("fo");
    let c = pg(&p.app_url()).await;
    c.batch_execute(&format!("CREATE TABLE {t} (id serial primary key, port int)")).await.unwrap();
    let insert = format!("INSERT INTO {t} (port) VALUES (inet_server_port()) RETURNING port");
    let port: i32 = c.query_one(&insert, &[]).await.unwrap().get(0);
    assert_eq!(port, 16432);

    // The primary goes away: writes fail with a clear connection error, never a replica's 25006.
    cluster.ctl.run(|c| c.stop("primary")).await;
    let mut saw_connection_error = false;
    for _ in 0..5 {
        let c = pg(&p.app_url()).await;
        match c.query_one(&insert, &[]).await {
            Ok(_) => panic!("a write succeeded with no primary"),
            Err(e) => {
                let code = sqlstate(&e);
                assert_ne!(code, "25006", "a write reached a replica: {e:?}");
                assert!(code.starts_with("08"), "{e:?}");
                saw_connection_error = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_connection_error);

    // A replica is promoted: writes reach it within a few seconds.
    let promoted = Instant::now();
    cluster.ctl.run(|c| c.promote(1)).await;
    let port = loop {
        let attempt = async {
            let c = try_pg(&p.app_url()).await.map_err(|e| sqlstate(&e))?;
            c.query_one(&insert, &[]).await.map(|r| r.get::<_, i32>(0)).map_err(|e| sqlstate(&e))
        };
        match attempt.await {
            Ok(port) => break port,
            Err(code) => {
                assert_ne!(code, "25006", "a write reached a replica");
                assert!(promoted.elapsed() < Duration::from_secs(10), "writes did not move to the new primary");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(port, 16433, "writes go to the promoted replica");
    assert!(promoted.elapsed() < Duration::from_secs(5), "took {:?}", promoted.elapsed());
    assert_eq!(p.ctx.topology.snapshot().primary, Some(1));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_is_avoided_and_its_read_retried() {
    let cluster = PrivateCluster::up("replicadown", 16532, 2, &[]).await;
    let mut cfg = cluster.config();
    cfg.monitor.unban_after = 3;
    let p = Proxy::start(cfg).await;
    // both replicas serving
    wait_for("replicas routable", Duration::from_secs(15), || {
        let s = p.ctx.topology.snapshot();
        s.readable(1) && s.readable(2)
    })
    .await;

    // A read in flight on a replica when that replica shuts down is retried elsewhere.
    let reader = pg(&p.app_url()).await;
    let read = tokio::spawn(async move {
        let row = reader.query_one("SELECT inet_server_port(), pg_sleep(1.5)::text", &[]).await;
        row.map(|r| r.get::<_, i32>(0))
    });
    // find the replica running it
    let mut victim = None;
    let start = Instant::now();
    while victim.is_none() && start.elapsed() < Duration::from_secs(5) {
        for (i, port) in [(1usize, 16533u16), (2, 16534)] {
            let c = pg(&format!("postgres://postgres:postgres@127.0.0.1:{port}/app")).await;
            let n: i64 = c
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            if n > 0 {
                victim = Some((i, port));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (victim, victim_port) = victim.expect("the read ran on a replica");
    let stopped = Instant::now();
    cluster.ctl.run(move |c| c.stop(&format!("replica{victim}"))).await;
    let port = read.await.unwrap().expect("the read was retried, not failed");
    assert_ne!(port as u16, victim_port, "the retry ran elsewhere");

    // The stopped replica is marked unhealthy within 2 s, and no read goes to it or fails.
    wait_for("replica marked unhealthy", Duration::from_secs(2), || {
        let s = p.ctx.topology.snapshot();
        !s.nodes[victim].healthy && !s.readable(victim)
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(4));
    let clients = pgs(&p.app_url(), 4).await;
    for i in 0..40 {
        let port = port_extended(&clients[i % 4], "SELECT inet_server_port()").await;
        assert_ne!(port, victim_port);
    }

    // Back up: probed back in after good samples, and reads reach it again.
    cluster.ctl.run(move |c| c.start(&format!("replica{victim}"))).await;
    wait_for("replica back in rotation", Duration::from_secs(10), || p.ctx.topology.snapshot().readable(victim)).await;
    let mut back = false;
    for i in 0..60 {
        if port_extended(&clients[i % 4], "SELECT inet_server_port()").await == victim_port {
            back = true;
            break;
        }
    }
    assert!(back, "reads reach the returned replica");
    p.stop().await;
    drop(cluster);
}
