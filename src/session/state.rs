//! Session settings: the client's startup parameters and its session-level `SET`s, kept as the
//! SQL that re-creates them on any backend connection, with a fingerprint so that a connection
//! already carrying the same settings needs no round trip.

use std::hash::{Hash, Hasher};

use crate::router::Effect;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// A connection whose settings are unknown (after a partial RESET): it is fully reset before
/// any session uses it. Real fingerprints are odd, so this never matches one.
pub const UNKNOWN_STATE: u64 = 2;

/// Resets a connection to its own defaults before settings are applied.
const RESET_SQL: &str = "RESET ROLE; RESET SESSION AUTHORIZATION; RESET ALL";

#[derive(Debug, Clone, Default)]
pub struct SessionParams {
    /// From the startup packet: what `RESET` returns to.
    startup: Vec<(String, String)>,
    /// What the session has now: lower-case name and the SQL that sets it.
    current: Vec<(String, String)>,
    fp: u64,
    /// pgsplit's own variables from the startup packet (`options=-c pgsplit.consistency=...`).
    pub pgsplit: Vec<(String, String)>,
}

/// Quotes a value as a SQL literal.
fn literal(s: &str) -> String {
    crate::router::quote_literal(s)
}

fn set_sql(name: &str, value: &str) -> String {
    format!("SELECT pg_catalog.set_config({}, {}, false)", literal(name), literal(value))
}

/// Splits a libpq `options` value (`-c a=b --c=d`, backslash escapes a space).
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let kv = if a == "-c" {
            it.next().ok_or("-c without a setting")?
        } else if let Some(rest) = a.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = a.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(format!("unsupported option \"{a}\" (only -c name=value)"));
        };
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("option \"{kv}\" has no value"))?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

impl SessionParams {
    pub fn from_startup(params: &[(String, String)]) -> Result<Self, String> {
        let mut p = SessionParams::default();
        for (k, v) in params {
            if let Some(var) = k.strip_prefix("pgsplit.") {
                p.pgsplit.push((var.to_owned(), v.clone()));
            } else if k == "options" {
                for (k, v) in parse_options(v)? {
                    match k.strip_prefix("pgsplit.") {
                        Some(var) => p.pgsplit.push((var.to_owned(), v)),
                        None => p.startup_set(&k, &v),
                    }
                }
            } else if k == "replication" && v != "false" && v != "0" {
                return Err("replication connections are not supported through pgsplit".into());
            } else if !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
                p.startup_set(k, v);
            }
        }
        p.current = p.startup.clone();
        p.refresh();
        Ok(p)
    }

    fn startup_set(&mut self, name: &str, value: &str) {
        let key = name.to_lowercase();
        let sql = set_sql(name, value);
        match self.startup.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = sql,
            None => self.startup.push((key, sql)),
        }
    }

    fn refresh(&mut self) {
        self.fp = if self.current.is_empty() {
            0
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.current.hash(&mut h);
            h.finish() | 1
        };
    }

    /// 0 when the session has no settings of its own.
    pub fn fingerprint(&self) -> u64 {
        self.fp
    }

    /// Applies a committed effect. Returns whether the settings changed.
    pub fn apply(&mut self, e: &Effect) -> bool {
        match e {
            Effect::Set { name, sql } => match self.current.iter_mut().find(|(k, _)| k == name) {
                Some(entry) => entry.1 = sql.clone(),
                None => self.current.push((name.clone(), sql.clone())),
            },
            Effect::Reset { name } => {
                self.current.retain(|(k, _)| k != name);
                if let Some(s) = self.startup.iter().find(|(k, _)| k == name) {
                    self.current.push(s.clone());
                }
            }
            Effect::ResetAll | Effect::DiscardAll => self.current = self.startup.clone(),
            _ => return false,
        }
        self.refresh();
        true
    }

    /// The SQL that gives a connection carrying settings `conn_fp` this session's settings.
    pub fn sync_sql(&self, conn_fp: u64) -> String {
        let mut sql = String::new();
        if conn_fp != 0 {
            sql.push_str(RESET_SQL);
        }
        for (_, s) in &self.current {
            if !sql.is_empty() {
                sql.push_str("; ");
            }
            sql.push_str(s);
        }
        sql
    }

    /// Whether a setting in force must not reach a replica: a serializable default (a standby
    /// refuses serializable transactions) or read-write session characteristics.
    pub fn forces_primary(&self) -> bool {
        self.current.iter().any(|(name, sql)| crate::router::setting_forces_primary(name, sql))
    }

    /// Names and replay SQL of the settings in force.
    #[cfg(test)]
    pub fn current(&self) -> &[(String, String)] {
        &self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(kv: &[(&str, &str)]) -> SessionParams {
        let v: Vec<(String, String)> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SessionParams::from_startup(&v).unwrap()
    }

    #[test]
    fn startup_parameters_become_settings() {
        let p = startup(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "psql"),
            ("options", "-c statement_timeout=5s --search-path=a\\,\\ b"),
        ]);
        let names: Vec<&str> = p.current().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["application_name", "statement_timeout", "search_path"]);
        assert_eq!(p.current()[2].1, "SELECT pg_catalog.set_config('search_path', 'a, b', false)");
        assert_ne!(p.fingerprint(), 0);
        assert_eq!(startup(&[("user", "u")]).fingerprint(), 0);
        assert!(SessionParams::from_startup(&[("replication".into(), "true".into())]).is_err());
        let p = startup(&[("options", "-c pgsplit.consistency=global -c work_mem=1MB")]);
        assert_eq!(p.pgsplit, vec![("consistency".to_string(), "global".to_string())]);
        assert_eq!(p.current().len(), 1, "pgsplit's variables are not sent to the server");
        assert!(SessionParams::from_startup(&[("options".into(), "-X".into())]).is_err());
    }

    #[test]
    fn set_reset_and_fingerprints() {
        let mut p = startup(&[("application_name", "a")]);
        let base = p.fingerprint();
        let same = startup(&[("application_name", "a")]);
        assert_eq!(base, same.fingerprint(), "same settings, same fingerprint");
        p.apply(&Effect::Set { name: "work_mem".into(), sql: "SET work_mem = '8MB'".into() });
        assert_ne!(p.fingerprint(), base);
        assert_eq!(p.sync_sql(0), "SELECT pg_catalog.set_config('application_name', 'a', false); SET work_mem = '8MB'");
        assert!(p.sync_sql(42).starts_with("RESET ROLE; RESET SESSION AUTHORIZATION; RESET ALL; "));
        p.apply(&Effect::Set { name: "application_name".into(), sql: "SET application_name = 'b'".into() });
        p.apply(&Effect::Reset { name: "application_name".into() });
        assert!(p.current().iter().any(|(_, s)| s.contains("'a'")), "RESET returns to the startup value");
        p.apply(&Effect::ResetAll);
        assert_eq!(p.fingerprint(), base);
        assert!(!p.apply(&Effect::DeallocateAll));
    }
}
