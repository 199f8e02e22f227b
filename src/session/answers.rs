//! Backend frames in: every complete frame is forwarded to the client as it is, except the few
//! that change session state (ReadyForQuery, errors, CommandComplete of COMMIT/ROLLBACK,
//! ParameterStatus, COPY) — only their headers and those bodies are read. A read armed for a
//! retry holds its answer back until it can no longer fail over.

use std::time::Instant;

use bytes::Buf;
use pgsplit_protocol::framing::peek_header;
use pgsplit_protocol::{BackendMessage, TxStatus};

use super::effects::{finish_batch, FinishCtx};
use super::expect::Action;
use super::relay::Session;
use super::retry::{hold, Held};
use crate::clients::ClientState;
use crate::error::Error;
use crate::pool::MAX_BACKEND_MESSAGE;

impl Session {
    /// Handles every complete backend frame buffered so far.
    pub(super) fn process_backend(&mut self) -> Result<(), Error> {
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        let mut forget = Vec::new();
        loop {
            let conn = &mut *b.conn;
            let h = match peek_header(&conn.rbuf, |_| MAX_BACKEND_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    conn.broken = true;
                    return Err(Error::BackendLost);
                }
            };
            if conn.rbuf.len() < h.total {
                conn.rbuf.reserve(h.total - conn.rbuf.len());
                break;
            }
            let mut action = Action::Forward;
            if !self.expect.is_empty() || h.tag == b'Z' {
                let out = match self.retry.as_mut() {
                    Some(r) if !r.open => &mut r.hold,
                    _ => &mut self.cout,
                };
                self.expect.drain_synthetic(out);
                action = self.expect.on_backend(h.tag, &mut forget);
                for id in forget.drain(..) {
                    conn.prepared.remove(&id);
                }
            }
            let body = &conn.rbuf[5..h.total];
            tracing::trace!(tag = %(h.tag as char), len = h.total, ?action, "backend message");
            if self.retry.is_some() {
                let code = if h.tag == b'E' { error_code(body) } else { "" };
                let forward = action == Action::Forward;
                match hold(&mut self.retry, &mut self.cout, h.tag, &conn.rbuf[..h.total], code, forward) {
                    Held::Released => {}
                    Held::Kept => action = Action::Drop,
                    Held::Dropped => {
                        conn.rbuf.advance(h.total);
                        continue;
                    }
                    Held::RetryNow => {
                        self.retry_due = Some(self.retry.as_ref().and_then(|r| r.failed.clone()).unwrap_or_default());
                        return Ok(());
                    }
                }
            }
            match h.tag {
                b'Z' => {
                    let status = body.first().and_then(|b| TxStatus::from_byte(*b).ok()).ok_or(Error::BackendLost)?;
                    self.tx = status;
                    self.copy_in = false;
                    if let Some(batch) = self.batches.pop_front() {
                        let elapsed = batch.started.elapsed();
                        crate::metrics::query_duration(batch.target, elapsed.as_secs_f64());
                        self.ctx.stats.completed(elapsed.as_micros() as u64);
                        if batch.ddl {
                            self.ctx.topology.catalogs.refresh(&self.login.database);
                        }
                        if batch.wrote || self.tx_wrote {
                            if status == TxStatus::Idle {
                                let now = Instant::now();
                                self.tx_wrote = false;
                                let settings = self.ctx.settings();
                                let mode = self.consistency_override.unwrap_or_else(|| {
                                    settings.consistency.mode_for(&self.login.user, &self.login.database)
                                });
                                self.writes.wrote(now, mode, settings.consistency.time_window);
                                self.ctx.topology.note_write(now);
                            } else {
                                self.tx_wrote = true;
                            }
                        }
                        finish_batch(
                            batch,
                            status,
                            &mut self.tx_effects,
                            &mut self.tx_committed,
                            &mut FinishCtx {
                                params: &mut self.params,
                                pins: &mut self.pins,
                                statements: &mut self.statements,
                                sql_statements: &mut self.sql_statements,
                                conn,
                            },
                        );
                        self.forces_primary = self.params.forces_primary();
                        self.client.entry.set_pins(self.pins.iter().fold(0u8, |b, p| b | (1 << (*p as u8))));
                    }
                    if self.batches.is_empty() {
                        self.blocked = false;
                        self.client.entry.set_state(match status {
                            TxStatus::Idle => ClientState::Idle,
                            _ => ClientState::InTransaction,
                        });
                    }
                }
                b'E' => {
                    if let Some(batch) = self.batches.front_mut() {
                        batch.error = true;
                    }
                    self.copy_in = false;
                    crate::metrics::error_sent(error_code(body));
                }
                b'C' => {
                    self.copy_in = false;
                    if !self.tx_effects.is_empty() {
                        if body.starts_with(b"COMMIT") {
                            self.tx_committed = Some(true);
                        } else if body.starts_with(b"ROLLBACK") {
                            self.tx_committed = Some(false);
                        }
                    }
                }
                b'S' => {
                    if let Ok(BackendMessage::ParameterStatus { name, value }) = BackendMessage::decode(h.tag, body) {
                        conn.set_param(name, value);
                    }
                }
                b'G' => {
                    self.copy_in = true;
                    if !self.batch_open && self.batches.front().is_some_and(|b| b.extended) {
                        self.copy_sync_ignored = true;
                        self.copy_ended = false;
                    }
                }
                _ => {}
            }
            if action == Action::Forward {
                self.cout.extend_from_slice(&conn.rbuf[..h.total]);
            }
            conn.rbuf.advance(h.total);
        }
        if !self.expect.is_empty() {
            let out = match self.retry.as_mut() {
                Some(r) if !r.open => &mut r.hold,
                _ => &mut self.cout,
            };
            self.expect.drain_synthetic(out);
        }
        Ok(())
    }
}

/// The SQLSTATE of an ErrorResponse body, without decoding the rest.
fn error_code(body: &[u8]) -> &str {
    let mut i = 0;
    while i < body.len() && body[i] != 0 {
        let code = body[i];
        let start = i + 1;
        let end = body[start..].iter().position(|&b| b == 0).map(|p| start + p).unwrap_or(body.len());
        if code == b'C' {
            return std::str::from_utf8(&body[start..end]).unwrap_or("");
        }
        i = end + 1;
    }
    ""
}
