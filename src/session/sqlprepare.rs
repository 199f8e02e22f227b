//! SQL-level prepared statements (`PREPARE` / `EXECUTE` / `DEALLOCATE`) without pinning: each
//! distinct statement gets a pgsplit name (`pgsplit_q_<hash>`), the client's names map to it,
//! `EXECUTE` is routed by the prepared query's class and the statement is prepared first on
//! whichever connection runs it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Buf;
use pgsplit_protocol::backend::{encode_command_complete, encode_ready};
use pgsplit_protocol::framing::FrameHeader;
use pgsplit_protocol::frontend::encode_query;
use pgsplit_protocol::{ErrorResponse, SqlState};

use super::expect::Expect;
use super::relay::{Batch, Session};
use crate::error::Error;
use crate::router::{Class, SqlPrepared, STATEMENT_PLACEHOLDER};

/// One of the client's SQL prepared statements.
#[derive(Debug, Clone)]
pub(super) struct SqlStatement {
    /// pgsplit's name for it on backends.
    pub internal: String,
    /// The `PREPARE` that creates it under that name.
    pub prepare_sql: String,
    /// The class of the prepared query (routes its EXECUTEs).
    pub inner: Arc<Class>,
}

enum Attached {
    Ready(crate::router::Route),
    Wait,
    Failed,
}

fn internal_name(template: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    template.hash(&mut h);
    format!("pgsplit_q_{:016x}", h.finish())
}

impl Session {
    /// Handles a lone PREPARE / EXECUTE / DEALLOCATE. `Some(false)`: it must wait for the
    /// current backend; `None`: not handled here (an EXECUTE of an unknown name, which the
    /// server will report).
    pub(super) async fn sql_prepared(&mut self, h: FrameHeader, sp: SqlPrepared) -> Result<Option<bool>, Error> {
        match sp {
            SqlPrepared::Deallocate { name } => {
                self.cin.advance(h.total);
                if self.sql_statements.remove(&name).is_some() {
                    encode_command_complete(&mut self.cout, "DEALLOCATE");
                } else {
                    self.report(&ErrorResponse::error(
                        SqlState::INVALID_SQL_STATEMENT_NAME,
                        format!("prepared statement \"{name}\" does not exist"),
                    ));
                }
                encode_ready(&mut self.cout, self.tx);
                Ok(Some(true))
            }
            SqlPrepared::Prepare { name, template, inner } => {
                if self.sql_statements.contains_key(&name) {
                    self.cin.advance(h.total);
                    self.report(&ErrorResponse::error(
                        SqlState::DUPLICATE_PREPARED_STATEMENT,
                        format!("prepared statement \"{name}\" already exists"),
                    ));
                    encode_ready(&mut self.cout, self.tx);
                    return Ok(Some(true));
                }
                let internal = internal_name(&template);
                let stmt = SqlStatement {
                    prepare_sql: template.replace(STATEMENT_PLACEHOLDER, &internal),
                    internal,
                    inner: Arc::new(*inner),
                };
                // Prepare where its EXECUTEs will likely run (the server checks it there).
                let route = self.decide(&stmt.inner);
                let route = match self.attach_or_report(route, h).await? {
                    Attached::Ready(r) => r,
                    Attached::Wait => return Ok(Some(false)),
                    Attached::Failed => return Ok(Some(true)),
                };
                self.cin.advance(h.total);
                let conn = &mut self.backend.as_mut().expect("attached").conn;
                if conn.sql_prepared.contains(&stmt.internal) {
                    self.sql_statements.insert(name, stmt);
                    encode_command_complete(&mut self.cout, "PREPARE");
                    encode_ready(&mut self.cout, self.tx);
                    return Ok(Some(true));
                }
                encode_query(&mut self.bout, &stmt.prepare_sql);
                self.expect.untracked_sync();
                self.disarm_retry();
                self.batches.push_back(Batch { prepare: Some((name, stmt)), ..Batch::internal(route.target.label()) });
                Ok(Some(true))
            }
            SqlPrepared::Execute { name, template } => {
                let Some(stmt) = self.sql_statements.get(&name).cloned() else {
                    // The server reports the unknown name.
                    return Ok(None);
                };
                let route = self.decide(&stmt.inner);
                let route = match self.attach_or_report(route, h).await? {
                    Attached::Ready(r) => r,
                    Attached::Wait => return Ok(Some(false)),
                    Attached::Failed => return Ok(Some(true)),
                };
                self.cin.advance(h.total);
                let target = route.target.label();
                let conn = &mut self.backend.as_mut().expect("attached").conn;
                if conn.sql_prepared.insert(stmt.internal.clone()) {
                    encode_query(&mut self.bout, &stmt.prepare_sql);
                    self.expect.push(Expect::SwallowQuery);
                    self.batches.push_back(Batch::internal(target));
                }
                encode_query(&mut self.bout, &template.replace(STATEMENT_PLACEHOLDER, &stmt.internal));
                self.expect.untracked_sync();
                self.disarm_retry();
                self.batches.push_back(Batch { wrote: route.may_write(&stmt.inner), ..Batch::internal(target) });
                Ok(Some(true))
            }
        }
    }

    /// Attaches for `route`; a failure is reported to the client (and the query consumed).
    async fn attach_or_report(&mut self, route: crate::router::Route, h: FrameHeader) -> Result<Attached, Error> {
        match self.attach_for(route).await {
            Ok(Some(r)) => Ok(Attached::Ready(r)),
            Ok(None) => Ok(Attached::Wait),
            Err(e) => {
                self.cin.advance(h.total);
                self.request_failed(e)?;
                encode_ready(&mut self.cout, self.tx);
                Ok(Attached::Failed)
            }
        }
    }
}
