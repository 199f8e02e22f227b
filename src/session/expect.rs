//! Response bookkeeping for extended-protocol batches that pgsplit rewrites.
//!
//! When pgsplit answers a message itself (a Parse of a statement the connection already has, a
//! Close of a client statement) or sends one the client did not (a Parse to prepare a statement
//! on this connection), the backend's responses no longer line up with the client's messages.
//! The queue lists, in order, the response each message will get, so synthetic responses are
//! inserted at exactly the right place and injected ones are dropped. Batches that need no
//! rewriting put nothing here and are relayed untouched.

use std::collections::VecDeque;

/// The response expected for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Earlier batches that were relayed untouched: pass until this many ReadyForQuery.
    Untracked(u32),
    /// ParseComplete; `swallow` for a Parse pgsplit injected; `id` is forgotten on error.
    Parse {
        swallow: bool,
        id: Option<u64>,
    },
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    /// A message pgsplit answers itself with this body-less response (`'1'` or `'3'`).
    Synth(u8),
    /// An error pgsplit reports itself (the rest of the batch up to Sync is not sent).
    SynthError(bytes::Bytes),
    /// A simple query pgsplit sent itself: everything up to and including its ReadyForQuery
    /// is dropped.
    SwallowQuery,
}

/// What to do with one backend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Forward,
    Drop,
}

#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
    /// Sync points relayed untouched since the last queued entry.
    untracked_tail: u32,
}

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Forgets everything (the batches it described were abandoned with their connection).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.untracked_tail = 0;
    }

    /// Notes a sync point (Sync, Query, FunctionCall) relayed without tracking.
    pub fn untracked_sync(&mut self) {
        self.untracked_tail += 1;
    }

    /// Queues the response of a tracked message.
    pub fn push(&mut self, e: Expect) {
        if self.untracked_tail > 0 {
            let n = std::mem::take(&mut self.untracked_tail);
            self.queue.push_back(Expect::Untracked(n));
        }
        self.queue.push_back(e);
    }

    /// Synthetic responses due now (everything before them has been answered): appended to
    /// `out` in order.
    pub fn drain_synthetic(&mut self, out: &mut bytes::BytesMut) {
        loop {
            match self.queue.front() {
                Some(Expect::Synth(tag)) => {
                    pgsplit_protocol::backend::encode_empty(out, *tag);
                }
                Some(Expect::SynthError(e)) => out.extend_from_slice(e),
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    /// Accounts for one backend message of type `tag`. Returns whether to forward it and the
    /// statement ids whose Parse did not happen (to forget from the connection).
    pub fn on_backend(&mut self, tag: u8, forget: &mut Vec<u64>) -> Action {
        match tag {
            // asynchronous messages belong to no request
            b'N' | b'S' | b'A' => return Action::Forward,
            b'Z' => {
                if self.queue.is_empty() {
                    self.untracked_tail = self.untracked_tail.saturating_sub(1);
                    return Action::Forward;
                }
                match self.queue.front_mut() {
                    Some(Expect::Untracked(n)) => {
                        *n -= 1;
                        if *n == 0 {
                            self.queue.pop_front();
                        }
                    }
                    Some(Expect::Sync) => {
                        self.queue.pop_front();
                    }
                    Some(Expect::SwallowQuery) => {
                        self.queue.pop_front();
                        return Action::Drop;
                    }
                    _ => {}
                }
                return Action::Forward;
            }
            _ => {}
        }
        let Some(head) = self.queue.front() else {
            return Action::Forward;
        };
        match head {
            Expect::Untracked(_) => Action::Forward,
            Expect::SwallowQuery => Action::Drop,
            _ if tag == b'E' => {
                // The server skips everything up to Sync after an error.
                while let Some(e) = self.queue.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    if let Expect::Parse { id: Some(id), .. } = e {
                        forget.push(*id);
                    }
                    self.queue.pop_front();
                }
                Action::Forward
            }
            Expect::Parse { swallow, .. } => {
                let swallow = *swallow;
                if tag == b'1' {
                    self.queue.pop_front();
                }
                if swallow {
                    Action::Drop
                } else {
                    Action::Forward
                }
            }
            Expect::Bind => self.complete_on(tag, b"2"),
            Expect::DescribeStatement | Expect::DescribePortal => self.complete_on(tag, b"Tn"),
            Expect::Execute => self.complete_on(tag, b"CIs"),
            Expect::Close => self.complete_on(tag, b"3"),
            Expect::Sync | Expect::Synth(_) | Expect::SynthError(_) => Action::Forward,
        }
    }

    fn complete_on(&mut self, tag: u8, ends: &[u8]) -> Action {
        if ends.contains(&tag) {
            self.queue.pop_front();
        }
        Action::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// Feeds backend tags through, collecting what the client sees (synthetic ones included).
    fn run(e: &mut Expectations, backend: &[u8]) -> (Vec<u8>, Vec<u64>) {
        let mut seen = Vec::new();
        let mut forget = Vec::new();
        let mut out = BytesMut::new();
        e.drain_synthetic(&mut out);
        seen.extend(out.chunks(5).map(|c| c[0]));
        for &t in backend {
            let mut out = BytesMut::new();
            e.drain_synthetic(&mut out);
            seen.extend(out.chunks(5).map(|c| c[0]));
            if e.on_backend(t, &mut forget) == Action::Forward {
                seen.push(t);
            }
        }
        let mut out = BytesMut::new();
        e.drain_synthetic(&mut out);
        seen.extend(out.chunks(5).map(|c| c[0]));
        (seen, forget)
    }

    #[test]
    fn skipped_parse_is_answered_in_place() {
        // Parse(existing) Describe(S) Bind Execute Sync: the Parse is not sent.
        let mut e = Expectations::default();
        for x in [Expect::Synth(b'1'), Expect::DescribeStatement, Expect::Bind, Expect::Execute, Expect::Sync] {
            e.push(x);
        }
        let (seen, _) = run(&mut e, b"tT2DDCZ");
        assert_eq!(seen, b"1tT2DDCZ");
        assert!(e.is_empty());
    }

    #[test]
    fn injected_parse_is_swallowed() {
        let mut e = Expectations::default();
        for x in [Expect::Parse { swallow: true, id: Some(7) }, Expect::Bind, Expect::Execute, Expect::Sync] {
            e.push(x);
        }
        let (seen, forget) = run(&mut e, b"12CZ");
        assert_eq!(seen, b"2CZ");
        assert!(forget.is_empty());
    }

    #[test]
    fn error_skips_to_sync_and_forgets_unprepared() {
        let mut e = Expectations::default();
        for x in [
            Expect::Parse { swallow: false, id: Some(1) },
            Expect::Parse { swallow: false, id: Some(2) },
            Expect::Synth(b'3'),
            Expect::Bind,
            Expect::Sync,
        ] {
            e.push(x);
        }
        let (seen, forget) = run(&mut e, b"EZ");
        assert_eq!(seen, b"EZ", "no synthetic reply after an error");
        assert_eq!(forget, vec![1, 2]);
        assert!(e.is_empty());
    }

    #[test]
    fn untracked_batches_pass_first() {
        let mut e = Expectations::default();
        e.untracked_sync();
        e.untracked_sync();
        e.push(Expect::Synth(b'1'));
        e.push(Expect::Sync);
        let (seen, _) = run(&mut e, b"TDCZ2CZZ");
        assert_eq!(seen, b"TDCZ2CZ1Z");
    }

    #[test]
    fn injected_simple_query_is_swallowed() {
        let mut e = Expectations::default();
        e.push(Expect::SwallowQuery);
        e.untracked_sync();
        let (seen, _) = run(&mut e, b"CZTDCZ");
        assert_eq!(seen, b"TDCZ");
        assert!(e.is_empty());
    }

    #[test]
    fn synthetic_reply_after_flush_goes_out_at_once() {
        let mut e = Expectations::default();
        e.push(Expect::Synth(b'1'));
        let (seen, _) = run(&mut e, b"");
        assert_eq!(seen, b"1");
    }
}
