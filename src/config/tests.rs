use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A temporary file, removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn file(contents: &str) -> TempPath {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "pgsplit-config-test-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&p, contents).unwrap();
    TempPath(p)
}

fn load(contents: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let f = file(contents);
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Settings::validate(Config::load(Some(&f.0), env)?)
}

#[test]
fn minimal_file_gets_defaults() {
    let s = load("[cluster]\nprimary = \"127.0.0.1:5432\"\n", &[]).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:6432");
    assert_eq!(s.pool.mode, PoolMode::Transaction);
    assert_eq!(s.pool.size, 20);
    assert_eq!(s.primary, NodeAddr { host: "127.0.0.1".into(), port: 5432 });
    assert!(s.replicas.is_empty());
    assert!(s.auth.users.is_empty());
}

#[test]
fn env_overrides_file() {
    let s = load(
        "[cluster]\nprimary = \"127.0.0.1:5432\"\n[pool]\nsize = 5\n[monitor]\nuser = \"mon\"\n",
        &[("PGSPLIT_POOL__SIZE", "7"), ("PGSPLIT_POOL__MODE", "session"), ("PGSPLIT_CLUSTER__REPLICAS", "h1:1,h2:2")],
    )
    .unwrap();
    assert_eq!(s.pool.size, 7);
    assert_eq!(s.pool.mode, PoolMode::Session);
    assert_eq!(s.replicas.len(), 2);
    assert_eq!(s.replicas[1], NodeAddr { host: "h2".into(), port: 2 });
}

#[test]
fn unknown_keys_are_rejected() {
    let e = load("[cluster]\nprimary = \"127.0.0.1:5432\"\n[pool]\nszie = 5\n", &[]).unwrap_err();
    assert!(e.to_string().contains("szie"), "{e}");
    let e = load("[cluster]\nprimary = \"127.0.0.1:5432\"\n[nope]\n", &[]).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = load("[cluster]\nprimary = \"127.0.0.1:5432\"\n", &[("PGSPLIT_POOL__SIZZLE", "1")]).unwrap_err();
    assert!(e.to_string().contains("sizzle"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    for (toml, key) in [
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[pool]\nmode = \"statement\"\n", "pool.mode"),
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[pool]\nsize = 0\n", "pool.size"),
        ("[cluster]\nprimary = \"nohostport\"\n", "cluster.primary"),
        ("[cluster]\nprimary = \"\"\n", "cluster.primary"),
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[server]\nlisten = \"bogus\"\n", "server.listen"),
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[server]\nrequire_tls = true\n", "server.require_tls"),
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[auth]\nmethod = \"password\"\n", "auth.method"),
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[auth]\nunlisted_users = \"auth_query\"\n", "auth.auth_user"),
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[[users]]\nname = \"a\"\n", "users[0].password"),
        (
            "[cluster]\nprimary = \"127.0.0.1:5432\"\n[[users]]\nname = \"a\"\npassword = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n",
            "users[0].password",
        ),
        ("[cluster]\nprimary = \"127.0.0.1:5432\"\n[log]\nformat = \"xml\"\n", "log.format"),
    ] {
        let e = load(toml, &[]).unwrap_err();
        assert!(e.to_string().starts_with(key), "{toml}: {e}");
    }
    let e = load("[cluster]\nprimary = \"127.0.0.1:5432\"\n[pool]\ncheckout_timeout = \"soon\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("checkout_timeout"), "{e}");
}

#[test]
fn url_credentials_become_users() {
    let mut c = Config::default();
    c.apply(&Overrides {
        primary: Some("postgres://app:s%40cret@127.0.0.1:5433/app".into()),
        replicas: vec!["postgres://app:s%40cret@127.0.0.1:5434/app".into()],
        ..Default::default()
    });
    let s = Settings::validate(c).unwrap();
    assert_eq!(s.primary.port, 5433);
    let app = &s.auth.users["app"];
    assert_eq!(app.backend, BackendCredential::Password("s@cret".into()));
    assert_eq!(app.method, AuthMethod::ScramSha256);
    assert!(s.database_allowed("other"), "a URL database is not a restriction");
}

#[test]
fn socket_directories_as_in_libpq() {
    let mut c = Config::default();
    c.apply(&Overrides {
        primary: Some("postgres://app:a+b%2Fc@%2Fvar%2Frun%2Fpostgresql:5433/app".into()),
        replicas: vec![
            "postgres://app:pw@/app?host=/tmp/pg&port=5434".into(),
            "/run/pg:5435".into(),
            "10.0.0.7:5436".into(),
        ],
        ..Default::default()
    });
    let s = Settings::validate(c).unwrap();
    let socket = |a: &NodeAddr| a.socket_path().map(|p| p.display().to_string());
    assert_eq!(s.primary, NodeAddr { host: "/var/run/postgresql".into(), port: 5433 });
    assert_eq!(socket(&s.primary).as_deref(), Some("/var/run/postgresql/.s.PGSQL.5433"));
    assert_eq!(s.replicas[0], NodeAddr { host: "/tmp/pg".into(), port: 5434 });
    assert_eq!(socket(&s.replicas[1]).as_deref(), Some("/run/pg/.s.PGSQL.5435"));
    assert_eq!(socket(&s.replicas[2]), None, "a host name is TCP");
    // userinfo is percent-decoded only: `+` is not a space there
    assert_eq!(s.auth.users["app"].backend, BackendCredential::Password("a+b/c".into()));

    let mut c = Config::default();
    c.apply(&Overrides { primary: Some("postgres://app@/app".into()), ..Default::default() });
    assert!(Settings::validate(c).unwrap_err().to_string().contains("no host"));
}

#[test]
fn stored_secrets() {
    let v = pgsplit_protocol::auth::ScramVerifier::generate("pw").encode();
    let toml = format!(
        "[cluster]\nprimary = \"h:1\"\n[[users]]\nname = \"a\"\npassword = \"{v}\"\n[[users]]\nname = \"b\"\nmethod = \"md5\"\npassword = \"md5{}\"\n[[users]]\nname = \"c\"\nmethod = \"trust\"\n",
        "0".repeat(32)
    );
    let s = load(&toml, &[]).unwrap();
    assert!(matches!(s.auth.users["a"].secret, ClientSecret::Scram(_)));
    assert_eq!(s.auth.users["a"].backend, BackendCredential::None);
    assert!(matches!(s.auth.users["b"].secret, ClientSecret::Md5(_)));
    assert!(matches!(s.auth.users["b"].backend, BackendCredential::Md5(_)));
    assert_eq!(s.auth.users["c"].method, AuthMethod::Trust);
}

/// Every key of the configuration is documented in docs/configuration.md with its default.
#[test]
fn every_key_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let mut missing = Vec::new();
    for (section, table) in defaults.as_table().unwrap() {
        let Some(table) = table.as_table() else {
            continue;
        };
        for (key, value) in table {
            let entry = format!("`{section}.{key}`");
            let line = doc.lines().find(|l| l.starts_with(&format!("| {entry} ")));
            match line {
                None => missing.push(format!("{entry} is not documented")),
                Some(l) => {
                    let shown = match value {
                        toml::Value::String(s) if s.is_empty() => "`\"\"`".to_string(),
                        toml::Value::String(s) => format!("`\"{s}\"`"),
                        toml::Value::Array(a) if a.is_empty() => "`[]`".to_string(),
                        toml::Value::Array(_) => "(list)".to_string(),
                        toml::Value::Table(t) if t.is_empty() => "`{}`".to_string(),
                        toml::Value::Integer(i) => format!("`{i}`"),
                        toml::Value::Boolean(b) => format!("`{b}`"),
                        other => format!("`{other}`"),
                    };
                    if !l.contains(&shown) {
                        missing.push(format!("{entry}: default {shown} is not on its line"));
                    }
                }
            }
        }
    }
    for key in ["name", "password", "method", "server_password", "pool_size", "pool_mode"] {
        if !doc.contains(&format!("`users[].{key}`")) {
            missing.push(format!("users[].{key} is not documented"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn missing_file_is_an_error() {
    let e = Config::load(Some(std::path::Path::new("/nonexistent/pgsplit.toml")), Vec::new()).unwrap_err();
    assert!(e.to_string().contains("does not exist"));
}
