//! Client authentication and backend login: SCRAM, md5, trust, stored verifiers, auth_query
//! pass-through, and the SQLSTATEs of every refusal.

mod common;

use common::*;
use pgsplit::config::UserConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_database_unknown_user() {
    let p = Proxy::default().await;
    let e = try_pg(&p.url("app", "wrong", "app")).await.expect_err("wrong password refused");
    assert_eq!(sqlstate(&e), "28P01");
    let e = try_pg(&p.url("nobody", "x", "app")).await.expect_err("unknown user refused");
    assert_eq!(sqlstate(&e), "28P01");
    let e = try_pg(&p.url("app", "app", "no_such_db")).await.expect_err("unknown database refused");
    assert_eq!(sqlstate(&e), "3D000");
    // The proxy keeps serving others.
    let c = pg(&p.app_url()).await;
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_databases_are_enforced() {
    let mut cfg = config();
    cfg.cluster.databases = vec!["app".into()];
    let p = Proxy::start(cfg).await;
    let e = try_pg(&p.url("app", "app", "postgres")).await.expect_err("database not listed");
    assert_eq!(sqlstate(&e), "3D000");
    pg(&p.app_url()).await.batch_execute("SELECT 1").await.unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_clients() {
    let mut cfg = config();
    cfg.server.max_clients = 2;
    let p = Proxy::start(cfg).await;
    let a = pg(&p.app_url()).await;
    let b = pg(&p.app_url()).await;
    let e = try_pg(&p.app_url()).await.expect_err("third client refused");
    assert_eq!(sqlstate(&e), "53300");
    drop(a);
    // the slot frees once the client is gone
    let mut ok = false;
    for _ in 0..50 {
        if try_pg(&p.app_url()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot came free");
    drop(b);
    p.stop().await;
}

/// md5 and trust client methods, a stored SCRAM verifier, and backend logins by md5,
/// cleartext and trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_stored_secrets() {
    let mut cfg = config();
    // The verifier the primary stores for app, as an operator would copy it from pg_authid.
    let verifier: String = primary_admin()
        .await
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    cfg.users = vec![
        // SCRAM verifier only: the backend login reuses the client's proof (pass-through).
        UserConfig { name: "app".into(), password: verifier, ..Default::default() },
        // md5 from the client; md5 to a backend that stores md5.
        UserConfig { name: "md5user".into(), password: "md5user".into(), method: "md5".into(), ..Default::default() },
        // cleartext ("password") on the backend side.
        UserConfig { name: "pwuser".into(), password: "pwuser".into(), ..Default::default() },
        // trust on both sides.
        UserConfig { name: "trustuser".into(), method: "trust".into(), ..Default::default() },
    ];
    let p = Proxy::start(cfg).await;
    for (user, pw) in [("app", "app"), ("md5user", "md5user"), ("pwuser", "pwuser"), ("trustuser", "whatever")] {
        let c = try_pg(&p.url(user, pw, "app")).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
    }
    let e = try_pg(&p.url("md5user", "nope", "app")).await.err().unwrap();
    assert_eq!(sqlstate(&e), "28P01");
    // psql with md5 as well (libpq's md5 path)
    let port = p.port();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || psql(port, "md5user", "md5user", "app", &["-Atc", "SELECT current_user"]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "md5user");
    p.stop().await;
}

/// Users not in the config log in against the secret the primary holds (auth_query through
/// pgsplit_auth's SECURITY DEFINER function) and their backend connections log in as them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_for_unlisted_users() {
    let mut cfg = config();
    cfg.users.clear();
    cfg.monitor.user = "postgres".into();
    cfg.monitor.password = "postgres".into();
    cfg.auth.unlisted_users = "auth_query".into();
    cfg.auth.auth_user = "pgsplit_auth".into();
    cfg.auth.auth_password = "pgsplit_auth".into();
    cfg.auth.auth_database = "postgres".into();
    cfg.auth.auth_query = "SELECT usename, passwd FROM public.pgsplit_get_auth($1)".into();
    let p = Proxy::start(cfg).await;
    for (user, pw) in [("alice", "alice"), ("app", "app"), ("md5user", "md5user")] {
        let c = try_pg(&p.url(user, pw, "app")).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let who: String = c.query_one("SELECT session_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
    }
    let e = try_pg(&p.url("alice", "wrong", "app")).await.err().unwrap();
    assert_eq!(sqlstate(&e), "28P01");
    let e = try_pg(&p.url("no_such_role", "x", "app")).await.err().unwrap();
    assert_eq!(sqlstate(&e), "28P01");
    p.stop().await;
}

/// With trust on both sides, any role connects as itself with no user list at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_passes_roles_through() {
    let mut cfg = config();
    cfg.users.clear();
    cfg.monitor.user = "postgres".into();
    cfg.monitor.password = "postgres".into();
    cfg.auth.unlisted_users = "trust".into();
    let p = Proxy::start(cfg).await;
    let c = pg(&p.url("trustuser", "", "app")).await;
    let who: String = c.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, "trustuser");
    // A role whose backend login needs a password it does not have is refused clearly.
    let e = try_pg(&p.url("alice", "", "app")).await.err().unwrap();
    assert_eq!(sqlstate(&e), "28P01");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_its_own_backend_key() {
    let p = Proxy::default().await;
    let mut keys = std::collections::HashSet::new();
    for _ in 0..5 {
        let (_s, msgs) = raw_login(p.addr, "app", "app", "app").await;
        let key = msgs
            .iter()
            .find_map(|m| match m {
                pgsplit_protocol::BackendMessage::BackendKeyData { pid, secret } => Some((*pid, *secret)),
                _ => None,
            })
            .expect("BackendKeyData");
        assert!(keys.insert(key), "duplicate key");
    }
    p.stop().await;
}
