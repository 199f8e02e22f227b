//! pgsplit's own session variables, answered by the proxy (the simple protocol here, the
//! extended one in [`super::local`]):
//!
//! * `SHOW pgsplit.last_write_lsn` — a WAL position at or after the session's last write;
//! * `SET pgsplit.min_lsn = 'X/Y'` / `RESET pgsplit.min_lsn` — reads need a replica that has
//!   replayed at least this far (carries read-your-writes across connections and proxies);
//! * `SET pgsplit.consistency = 'session' | 'global' | 'time' | 'eventual'` / `RESET`;
//! * `SHOW pgsplit.min_lsn`, `SHOW pgsplit.consistency`.

use std::time::{Duration, Instant};

use pgsplit_protocol::backend::{encode_command_complete, encode_data_row, encode_ready, encode_row_description};
use pgsplit_protocol::{ErrorResponse, SqlState};

use super::relay::Session;
use crate::config::Mode;
use crate::replication::{format_lsn, parse_lsn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Var {
    LastWriteLsn,
    MinLsn,
    Consistency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    Show(Var),
    Set(Var, String),
    Reset(Var),
}

fn var(name: &str) -> Result<Var, String> {
    match name {
        "last_write_lsn" => Ok(Var::LastWriteLsn),
        "min_lsn" => Ok(Var::MinLsn),
        "consistency" => Ok(Var::Consistency),
        other => Err(format!("unrecognized configuration parameter \"pgsplit.{other}\"")),
    }
}

/// Recognizes a pgsplit command; `None` for any other statement.
pub(super) fn parse(sql: &str) -> Option<Result<Command, String>> {
    let s = sql.trim_start();
    // Every statement passes here: look at the verb before copying anything.
    if !matches!(s.as_bytes().first(), Some(b's' | b'S' | b'r' | b'R')) {
        return None;
    }
    let s = s.trim_end().trim_end_matches(';').trim_end();
    let verb = &s[..s.find(char::is_whitespace)?];
    if !["show", "set", "reset"].iter().any(|v| verb.eq_ignore_ascii_case(v)) {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let (verb, rest) = lower.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let name_and_value = rest.strip_prefix("pgsplit.")?;
    let name_end =
        name_and_value.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name_and_value.len());
    let name = &name_and_value[..name_end];
    let tail = name_and_value[name_end..].trim();
    Some(match verb {
        "show" if tail.is_empty() => var(name).map(Command::Show),
        "reset" if tail.is_empty() => var(name).map(Command::Reset),
        "set" => {
            let value = tail.strip_prefix('=').or_else(|| tail.strip_prefix("to ")).map(str::trim);
            match value {
                None | Some("") => Err("syntax error: expected SET pgsplit.name = 'value'".into()),
                Some(v) => {
                    // keep the original case of the value
                    let start = s.len() - v.len();
                    let v = s[start..].trim().trim_matches('\'').to_owned();
                    var(name).map(|n| Command::Set(n, v))
                }
            }
        }
        _ => Err("syntax error in a pgsplit command".into()),
    })
}

impl Session {
    /// Answers a pgsplit command. The caller makes sure nothing else is in flight.
    pub(super) async fn run_command(&mut self, cmd: Result<Command, String>) {
        if let Ok(Command::Show(Var::LastWriteLsn)) = &cmd {
            self.wait_for_write_lsn().await;
        }
        match cmd.and_then(|c| self.apply_command(c)) {
            Ok(None) => encode_command_complete(&mut self.cout, "SET"),
            Ok(Some((name, value))) => {
                encode_row_description(&mut self.cout, &[var_name(name)]);
                encode_data_row(&mut self.cout, &[Some(&value)]);
                encode_command_complete(&mut self.cout, "SHOW");
            }
            Err(msg) => self.report(&command_error(msg)),
        }
        encode_ready(&mut self.cout, self.tx);
    }

    /// pgsplit variables given at startup (`options=-c pgsplit.consistency=global`).
    pub(super) fn apply_startup_vars(&mut self, vars: &[(String, String)]) -> Result<(), crate::error::Error> {
        for (name, value) in vars {
            let cmd = var(name).and_then(|v| match v {
                Var::LastWriteLsn => Err("parameter \"pgsplit.last_write_lsn\" cannot be changed".to_string()),
                v => Ok(Command::Set(v, value.clone())),
            });
            cmd.and_then(|c| self.apply_command(c)).map_err(crate::error::Error::Unsupported)?;
        }
        Ok(())
    }

    fn show(&self, v: Var) -> String {
        match v {
            Var::LastWriteLsn => format_lsn(self.writes.last_write_lsn),
            Var::MinLsn => format_lsn(self.writes.min_lsn),
            Var::Consistency => self.consistency().as_str().to_owned(),
        }
    }

    /// `Ok(Some(..))`: a value to show; `Ok(None)`: a setting was changed.
    pub(super) fn apply_command(&mut self, c: Command) -> Result<Option<(Var, String)>, String> {
        match c {
            Command::Show(v) => Ok(Some((v, self.show(v)))),
            Command::Reset(Var::MinLsn) => {
                self.writes.min_lsn = 0;
                Ok(None)
            }
            Command::Reset(Var::Consistency) => {
                self.consistency_override = None;
                Ok(None)
            }
            Command::Set(Var::MinLsn, v) => {
                let lsn = parse_lsn(&v).ok_or_else(|| format!("invalid input syntax for type pg_lsn: \"{v}\""))?;
                self.writes.min_lsn = lsn;
                Ok(None)
            }
            Command::Set(Var::Consistency, v) => {
                self.consistency_override = Some(Mode::parse("pgsplit.consistency", &v).map_err(|e| e.to_string())?);
                Ok(None)
            }
            Command::Set(Var::LastWriteLsn, _) | Command::Reset(Var::LastWriteLsn) => {
                Err("parameter \"pgsplit.last_write_lsn\" cannot be changed".into())
            }
        }
    }

    /// If the session's last write is not placed yet, waits for the monitor round that places
    /// it (one `monitor.interval`, bounded).
    pub(super) async fn wait_for_write_lsn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.writes.pending.is_some() && Instant::now() < deadline {
            let snap = self.ctx.topology.snapshot();
            self.writes.resolve(&snap);
            if self.writes.pending.is_none() {
                break;
            }
            tokio::time::sleep(self.ctx.settings().monitor.interval / 4 + Duration::from_millis(1)).await;
        }
    }
}

/// The error for a pgsplit command that failed.
pub(super) fn command_error(msg: String) -> ErrorResponse {
    let code = if msg.starts_with("syntax") {
        SqlState::SYNTAX_ERROR
    } else if msg.starts_with("unrecognized") {
        SqlState::UNDEFINED_OBJECT
    } else if msg.starts_with("invalid input syntax") {
        SqlState::INVALID_TEXT_REPRESENTATION
    } else if msg.contains("cannot be changed") {
        SqlState::CANT_CHANGE_RUNTIME_PARAM
    } else {
        SqlState::INVALID_PARAMETER_VALUE
    };
    ErrorResponse::error(code, msg)
}

pub(super) fn var_name(v: Var) -> &'static str {
    match v {
        Var::LastWriteLsn => "pgsplit.last_write_lsn",
        Var::MinLsn => "pgsplit.min_lsn",
        Var::Consistency => "pgsplit.consistency",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("SHOW pgsplit.last_write_lsn;"), Some(Ok(Command::Show(Var::LastWriteLsn))));
        assert_eq!(parse("set pgsplit.min_lsn = '0/16B3748'"), Some(Ok(Command::Set(Var::MinLsn, "0/16B3748".into()))));
        assert_eq!(
            parse("SET pgsplit.consistency TO eventual"),
            Some(Ok(Command::Set(Var::Consistency, "eventual".into())))
        );
        assert_eq!(parse("RESET pgsplit.min_lsn"), Some(Ok(Command::Reset(Var::MinLsn))));
        assert!(matches!(parse("SHOW pgsplit.nope"), Some(Err(_))));
        assert!(matches!(parse("SET pgsplit.min_lsn"), Some(Err(_))));
        assert_eq!(parse("SHOW search_path"), None);
        assert_eq!(parse("SELECT 'pgsplit.min_lsn'"), None);
        assert_eq!(parse("SET work_mem = 1"), None);
    }
}
