//! The SQL admin console, shaped like PgBouncer's: connect to the virtual database `pgsplit` as
//! one of `admin.users` and run `SHOW REPLICAS | POOLS | CLIENTS | SERVERS | STATS | CONFIG`,
//! `RELOAD`, `PAUSE`, `RESUME`, `BAN node`, `UNBAN node`. Commands read snapshots and registries
//! only; the session relays the replies.

use std::time::{Duration, Instant, SystemTime};

use pgsplit_protocol::SqlState;

use crate::context::Context;
use crate::replication::format_lsn;
use crate::router::Pin;

/// A command's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Rows {
        columns: Vec<&'static str>,
        rows: Vec<Vec<Option<String>>>,
        tag: String,
    },
    /// A command tag, with notices to show first.
    Done {
        tag: String,
        notices: Vec<String>,
    },
    Error(SqlState, String),
}

fn rows(columns: Vec<&'static str>, rows: Vec<Vec<Option<String>>>) -> Reply {
    let tag = format!("SHOW {}", rows.len());
    Reply::Rows { columns, rows, tag }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn opt<T: ToString>(v: Option<T>) -> Option<String> {
    v.map(|v| v.to_string())
}

fn age(t: SystemTime) -> String {
    match t.elapsed() {
        Ok(d) => format!("{}s", d.as_secs()),
        Err(_) => "0s".into(),
    }
}

pub const HELP: &str =
    "SHOW REPLICAS | POOLS | CLIENTS | SERVERS | STATS | CONFIG | HELP; RELOAD; PAUSE; RESUME; BAN node; UNBAN node";

/// Runs one console command.
pub async fn execute(ctx: &Context, sql: &str) -> Reply {
    let text = sql.trim().trim_end_matches(';').trim();
    let words: Vec<String> = text.split_whitespace().map(|w| w.to_ascii_lowercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["show", "replicas"] | ["show", "nodes"] => show_replicas(ctx),
        ["show", "pools"] => show_pools(ctx),
        ["show", "clients"] => show_clients(ctx),
        ["show", "servers"] => show_servers(ctx),
        ["show", "stats"] => show_stats(ctx),
        ["show", "config"] => show_config(ctx),
        ["show", "help"] | ["help"] => rows(vec!["commands"], vec![vec![s(HELP)]]),
        ["reload"] => match ctx.reload() {
            Ok(notes) => Reply::Done { tag: "RELOAD".into(), notices: notes },
            Err(e) => Reply::Error(SqlState("F0000"), e),
        },
        ["pause"] => {
            let wait = ctx.settings().server.shutdown_timeout.max(Duration::from_secs(1));
            let drained = ctx.pause(wait).await;
            let notices = if drained { vec![] } else { vec!["some transactions are still running".into()] };
            Reply::Done { tag: "PAUSE".into(), notices }
        }
        ["resume"] => {
            ctx.resume();
            Reply::Done { tag: "RESUME".into(), notices: vec![] }
        }
        ["ban", node] | ["unban", node] => {
            let ban = words[0] == "ban";
            let node = node.trim_matches('\'');
            let topo = &ctx.topology;
            let index = node
                .parse::<usize>()
                .ok()
                .filter(|i| *i < topo.nodes.len())
                .or_else(|| topo.nodes.iter().position(|n| n.to_string() == node));
            match index {
                Some(i) => {
                    topo.set_manual_ban(i, ban);
                    tracing::warn!(node = %topo.nodes[i], ban, "replica {} from the admin console", if ban { "banned" } else { "unbanned" });
                    Reply::Done { tag: if ban { "BAN".into() } else { "UNBAN".into() }, notices: vec![] }
                }
                None => {
                    Reply::Error(SqlState::UNDEFINED_OBJECT, format!("no node \"{node}\" (use host:port or its index)"))
                }
            }
        }
        _ => Reply::Error(SqlState::SYNTAX_ERROR, format!("unknown admin command; try: {HELP}")),
    }
}

fn show_replicas(ctx: &Context) -> Reply {
    let snap = ctx.topology.snapshot();
    let reads = ctx.stats.per_node();
    let now = Instant::now();
    let out = snap
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            vec![
                s(i),
                s(&n.addr),
                s(format!("{:?}", n.role).to_lowercase()),
                s(n.healthy),
                s(n.banned || ctx.topology.is_suspect(i)),
                s(n.lagging),
                opt(n.lag_bytes),
                opt(n.lag_seconds.map(|l| format!("{l:.3}"))),
                opt(n.lsn.map(format_lsn)),
                opt(n.sampled_at.map(|t| now.saturating_duration_since(t).as_millis())),
                s(reads.get(i).copied().unwrap_or(0)),
                s(ctx.topology.load(i)),
                opt(n.error.clone()),
            ]
        })
        .collect();
    rows(
        vec![
            "index",
            "node",
            "role",
            "healthy",
            "banned",
            "lagging",
            "lag_bytes",
            "lag_seconds",
            "lsn",
            "sample_age_ms",
            "batches",
            "outstanding",
            "error",
        ],
        out,
    )
}

fn show_pools(ctx: &Context) -> Reply {
    let out = ctx
        .pools
        .status()
        .into_iter()
        .map(|p| {
            vec![s(p.node), s(p.user), s(p.database), s(p.max_size), s(p.size), s(p.active), s(p.idle), s(p.waiting)]
        })
        .collect();
    rows(vec!["node", "user", "database", "max_size", "size", "active", "idle", "waiting"], out)
}

fn show_clients(ctx: &Context) -> Reply {
    let out = ctx
        .clients
        .list()
        .into_iter()
        .map(|c| {
            let backend = c.backend();
            let pins: Vec<&str> = Pin::from_bits(c.pins()).map(|p| p.as_str()).collect();
            vec![
                s(c.id),
                s(&c.addr),
                s(&c.user),
                s(&c.database),
                s(&c.application_name),
                s(c.state().as_str()),
                opt(backend.map(|(n, _)| ctx.topology.nodes[n].to_string())),
                opt(backend.map(|(_, pid)| pid)),
                s(c.batches.load(std::sync::atomic::Ordering::Relaxed)),
                s(pins.join(",")),
                s(c.tls),
                s(age(c.connected_at)),
            ]
        })
        .collect();
    rows(
        vec![
            "id",
            "addr",
            "user",
            "database",
            "application_name",
            "state",
            "node",
            "backend_pid",
            "batches",
            "pins",
            "tls",
            "connected",
        ],
        out,
    )
}

fn show_servers(ctx: &Context) -> Reply {
    let out = ctx
        .pools
        .servers
        .list()
        .into_iter()
        .map(|e| {
            let state = if e.in_use.load(std::sync::atomic::Ordering::Relaxed) { "active" } else { "idle" };
            vec![s(e.id), s(&e.node), s(&e.user), s(&e.database), s(e.pid), s(state), s(age(e.created))]
        })
        .collect();
    rows(vec!["id", "node", "user", "database", "pid", "state", "connected"], out)
}

fn show_stats(ctx: &Context) -> Reply {
    let st = &ctx.stats;
    let done = st.completed.load(std::sync::atomic::Ordering::Relaxed);
    let busy = st.busy_micros.load(std::sync::atomic::Ordering::Relaxed);
    let mut out: Vec<Vec<Option<String>>> = vec![
        vec![s("batches_completed"), s(""), s(done)],
        vec![s("avg_batch_us"), s(""), s(busy.checked_div(done).unwrap_or(0))],
        vec![s("reads_retried"), s(""), s(st.retries.load(std::sync::atomic::Ordering::Relaxed))],
        vec![s("clients"), s(""), s(ctx.clients.len())],
    ];
    for (target, reason, n) in st.routed_counts() {
        out.push(vec![s(format!("routed_{target}")), s(reason), s(n)]);
    }
    rows(vec!["stat", "reason", "value"], out)
}

/// Flattens the configuration for SHOW CONFIG, with secrets hidden.
pub fn config_rows(raw: &crate::config::Config) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
                for (i, x) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), x, out);
                }
            }
            other => {
                let secret = prefix.contains("password") && other.as_str().is_some_and(|s| !s.is_empty());
                let shown = if secret { "********".to_string() } else { other.to_string() };
                out.push((prefix.to_owned(), shown));
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = toml::Value::try_from(raw) {
        walk("", &v, &mut out);
    }
    out
}

fn show_config(ctx: &Context) -> Reply {
    let settings = ctx.settings();
    let out = config_rows(&settings.raw).into_iter().map(|(k, v)| vec![s(k), s(v)]).collect();
    rows(vec!["key", "value"], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hides_passwords() {
        let mut c = crate::config::Config::default();
        c.users.push(crate::config::UserConfig { name: "u".into(), password: "secret".into(), ..Default::default() });
        let rows = config_rows(&c);
        let pw = rows.iter().find(|(k, _)| k == "users[0].password").unwrap();
        assert_eq!(pw.1, "********");
        assert!(rows.iter().any(|(k, v)| k == "pool.mode" && v == "\"transaction\""));
        assert!(!rows.iter().any(|(_, v)| v.contains("secret")));
    }
}
