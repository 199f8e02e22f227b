//! pgsplit's own commands (`SHOW pgsplit.*`, `SET pgsplit.*`, `RESET pgsplit.*`) in the
//! extended protocol, as drivers send them (tokio-postgres and sqlx prepare a named statement,
//! describe it, then bind and execute it; JDBC and libpq use the unnamed one).
//!
//! A batch whose every message concerns such a command is answered by pgsplit itself, in
//! order after whatever is in flight; the statements and portals stay known to the session
//! for later batches. A batch that mixes them with statements for the server is refused with
//! one clear error: pgsplit would otherwise have to splice its answers into the server's.

use std::collections::HashMap;

use bytes::Buf;
use pgsplit_protocol::backend::{
    encode_command_complete, encode_data_row, encode_empty, encode_ready, encode_row_description,
};
use pgsplit_protocol::frontend::Target as DescribeTarget;
use pgsplit_protocol::{ErrorResponse, FrontendMessage, SqlState};

use super::commands::{self, command_error, Command, Var};
use super::dispatch::protocol;
use super::relay::Session;
use crate::error::Error;

type Cmd = Result<Command, String>;

/// The session's statements and portals that hold pgsplit commands (`""` is the unnamed one).
#[derive(Default)]
pub(super) struct LocalStatements {
    statements: HashMap<String, Cmd>,
    portals: HashMap<String, Cmd>,
}

/// One message of a batch, as far as pgsplit's commands are concerned.
enum Step {
    Parse(String, Cmd),
    Bind { portal: String, statement: String },
    Describe(DescribeTarget, String),
    Execute(String),
    Close(DescribeTarget, String),
    Sync,
    Flush,
}

impl LocalStatements {
    fn get(&self, kind: DescribeTarget, name: &str) -> Option<&Cmd> {
        match kind {
            DescribeTarget::Statement => self.statements.get(name),
            DescribeTarget::Portal => self.portals.get(name),
        }
    }
}

/// Whether `text` holds `pgsplit.` in any case: each `.` is looked for (memchr) and the seven
/// bytes before it compared, rather than comparing at every position.
fn mentions_pgsplit(text: &[u8]) -> bool {
    memchr::memchr_iter(b'.', text).any(|dot| dot >= 7 && text[dot - 7..dot].eq_ignore_ascii_case(b"pgsplit"))
}

impl Session {
    /// Whether the batch in `cin[..end]` may concern pgsplit commands (a cheap look before
    /// [`Session::local_batch`] decodes it).
    pub(super) fn may_be_local(&self, end: usize) -> bool {
        if self.local.as_ref().is_some_and(|l| !l.statements.is_empty() || !l.portals.is_empty()) {
            return true;
        }
        let mut found = false;
        let _ = self.frames(end, |tag, body| {
            found |= tag == b'P' && mentions_pgsplit(body);
            Ok(())
        });
        found
    }

    pub(super) fn has_local_statement(&self, name: &str) -> bool {
        self.local.as_ref().is_some_and(|l| l.statements.contains_key(name))
    }

    /// A message for the server replaces the unnamed statement or a portal of that name.
    pub(super) fn forget_local(&mut self, kind: DescribeTarget, name: &str) {
        if let Some(l) = self.local.as_mut() {
            match kind {
                DescribeTarget::Statement => l.statements.remove(name),
                DescribeTarget::Portal => l.portals.remove(name),
            };
        }
    }

    /// Answers the batch in `cin[..end]` if it is made of pgsplit commands. `Ok(None)`: the
    /// batch is not (the caller routes it); `Ok(Some(false))`: it has to wait (for what is in
    /// flight, or for the rest of the batch); `Ok(Some(true))`: answered.
    pub(super) async fn local_batch(&mut self, end: usize) -> Result<Option<bool>, Error> {
        let Some((steps, all_local)) = self.local_steps(end)? else {
            return Ok(None);
        };
        let ends_with_sync = matches!(steps.last(), Some(Step::Sync));
        if !ends_with_sync && !matches!(steps.last(), Some(Step::Flush)) && end == self.cin.len() {
            // the client sends its Sync or Flush next; nothing is answered before it
            return Ok(Some(false));
        }
        if !self.batches.is_empty() {
            self.blocked = true;
            return Ok(Some(false));
        }
        self.cin.advance(end);
        if !all_local {
            self.report(&ErrorResponse::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "pgsplit: pgsplit.* commands in the extended protocol must be in a batch of their own (a Sync before and after them)",
            ));
            if ends_with_sync {
                encode_ready(&mut self.cout, self.tx);
            } else {
                self.skip_until_sync = true;
            }
            return Ok(Some(true));
        }
        let mut failed = false;
        for step in steps {
            if failed && !matches!(step, Step::Sync) {
                continue;
            }
            if let Err(e) = Box::pin(self.local_step(step)).await {
                self.report(&e);
                failed = true;
            }
        }
        // an error with no Sync yet: like the server, skip the client's messages up to it
        self.skip_until_sync = failed && !ends_with_sync;
        Ok(Some(true))
    }

    async fn local_step(&mut self, step: Step) -> Result<(), ErrorResponse> {
        let undefined = |what: &str, name: &str| {
            let code =
                if what == "portal" { SqlState::INVALID_CURSOR_NAME } else { SqlState::INVALID_SQL_STATEMENT_NAME };
            ErrorResponse::error(code, format!("{what} \"{name}\" does not exist"))
        };
        let local = self.local.get_or_insert_with(Default::default);
        match step {
            Step::Parse(name, cmd) => {
                if !name.is_empty() && (local.statements.contains_key(&name) || self.statements.contains_key(&name)) {
                    return Err(ErrorResponse::error(
                        SqlState::DUPLICATE_PREPARED_STATEMENT,
                        format!("prepared statement \"{name}\" already exists"),
                    ));
                }
                local.statements.insert(name, cmd);
                encode_empty(&mut self.cout, b'1');
            }
            Step::Bind { portal, statement } => {
                let cmd =
                    local.statements.get(&statement).ok_or_else(|| undefined("prepared statement", &statement))?;
                local.portals.insert(portal, cmd.clone());
                encode_empty(&mut self.cout, b'2');
            }
            Step::Describe(kind, name) => {
                let what = if kind == DescribeTarget::Portal { "portal" } else { "prepared statement" };
                let cmd = local.get(kind, &name).ok_or_else(|| undefined(what, &name))?;
                let shows = match cmd {
                    Ok(Command::Show(v)) => Some(*v),
                    Ok(_) => None,
                    Err(msg) => return Err(command_error(msg.clone())),
                };
                if kind == DescribeTarget::Statement {
                    // ParameterDescription: no parameters
                    self.cout.extend_from_slice(&[b't', 0, 0, 0, 6, 0, 0]);
                }
                match shows {
                    Some(v) => encode_row_description(&mut self.cout, &[commands::var_name(v)]),
                    None => encode_empty(&mut self.cout, b'n'),
                }
            }
            Step::Execute(portal) => {
                let cmd = local.portals.get(&portal).ok_or_else(|| undefined("portal", &portal))?.clone();
                if let Ok(Command::Show(Var::LastWriteLsn)) = &cmd {
                    self.wait_for_write_lsn().await;
                }
                match cmd.and_then(|c| self.apply_command(c)) {
                    Ok(Some((_, value))) => {
                        encode_data_row(&mut self.cout, &[Some(&value)]);
                        encode_command_complete(&mut self.cout, "SHOW");
                    }
                    Ok(None) => encode_command_complete(&mut self.cout, "SET"),
                    Err(msg) => return Err(command_error(msg)),
                }
            }
            Step::Close(kind, name) => {
                match kind {
                    DescribeTarget::Statement => local.statements.remove(&name),
                    DescribeTarget::Portal => local.portals.remove(&name),
                };
                encode_empty(&mut self.cout, b'3');
            }
            Step::Sync => encode_ready(&mut self.cout, self.tx),
            Step::Flush => {}
        }
        Ok(())
    }

    /// The batch's messages and whether all of them concern pgsplit commands; `None` when
    /// none does.
    fn local_steps(&self, end: usize) -> Result<Option<(Vec<Step>, bool)>, Error> {
        let known = |kind, name: &str| self.local.as_ref().is_some_and(|l| l.get(kind, name).is_some());
        // what this batch itself adds and replaces, in order
        let mut added: Vec<(DescribeTarget, String, bool)> = Vec::new();
        let is_local = |added: &[(DescribeTarget, String, bool)], kind, name: &str| {
            added.iter().rev().find(|(k, n, _)| *k == kind && n == name).map_or_else(|| known(kind, name), |a| a.2)
        };
        let mut steps = Vec::new();
        let (mut any, mut all) = (false, true);
        self.frames(end, |tag, body| {
            // keeps the step if it concerns a pgsplit command
            let mut keep = |local: bool, step: Step| {
                if local {
                    steps.push(step);
                }
                local
            };
            let local = match FrontendMessage::decode(tag, body).map_err(protocol)? {
                FrontendMessage::Parse { name, sql, .. } => {
                    let cmd = commands::parse(&sql);
                    added.push((DescribeTarget::Statement, name.clone(), cmd.is_some()));
                    cmd.is_some_and(|cmd| keep(true, Step::Parse(name, cmd)))
                }
                FrontendMessage::Bind(b) => {
                    let local = is_local(&added, DescribeTarget::Statement, &b.statement);
                    added.push((DescribeTarget::Portal, b.portal.clone(), local));
                    keep(local, Step::Bind { portal: b.portal, statement: b.statement })
                }
                FrontendMessage::Describe { kind, name } => {
                    keep(is_local(&added, kind, &name), Step::Describe(kind, name))
                }
                FrontendMessage::Execute { portal, .. } => {
                    keep(is_local(&added, DescribeTarget::Portal, &portal), Step::Execute(portal))
                }
                FrontendMessage::Close { kind, name } => keep(is_local(&added, kind, &name), Step::Close(kind, name)),
                FrontendMessage::Sync | FrontendMessage::Flush => {
                    steps.push(if tag == b'S' { Step::Sync } else { Step::Flush });
                    return Ok(());
                }
                _ => false,
            };
            any |= local;
            all &= local;
            Ok(())
        })?;
        Ok(any.then_some((steps, all)))
    }
}

#[cfg(test)]
mod tests {
    use super::mentions_pgsplit;

    #[test]
    fn pgsplit_mentions_in_any_case() {
        for (text, found) in [
            ("SET pgsplit.consistency = 'strong'", true),
            ("show PgSplit.last_route", true),
            ("pgsplit.x", true),
            ("SELECT 1 FROM s.t WHERE a.b = 2 AND x_pgsplit.y = 1", true),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", false),
            ("SELECT pgsplit FROM t", false),
            ("gsplit.x", false),
            (".pgsplit", false),
            ("", false),
        ] {
            assert_eq!(mentions_pgsplit(text.as_bytes()), found, "{text}");
        }
    }
}
