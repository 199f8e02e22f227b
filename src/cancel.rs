//! Cancel keys: every client gets its own BackendKeyData, and a CancelRequest carrying it is
//! forwarded to the backend connection running that client's query — never to another client's.
//!
//! A session attaches its backend's key while it holds a connection and detaches it before the
//! connection goes back to the pool. Detaching waits for any cancel being delivered, so a
//! cancel can never land on a connection after another client has taken it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use pgsplit_protocol::StartupPacket;
use rand::RngExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::config::NodeAddr;

/// Where a cancel for a session must go right now.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub addr: Arc<NodeAddr>,
    pub pid: i32,
    pub secret: i32,
}

/// One session's cancel state.
#[derive(Debug)]
pub struct CancelSlot {
    pub pid: i32,
    pub secret: i32,
    target: Mutex<Option<CancelTarget>>,
    in_flight: AtomicUsize,
    delivered: Notify,
}

impl CancelSlot {
    pub fn attach(&self, target: CancelTarget) {
        *self.target.lock().expect("cancel lock") = Some(target);
    }

    /// Forgets the backend, first waiting for cancels already on their way to it.
    pub async fn detach(&self) {
        loop {
            let notified = self.delivered.notified();
            {
                let mut t = self.target.lock().expect("cancel lock");
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    *t = None;
                    return;
                }
            }
            notified.await;
        }
    }

    pub fn is_attached(&self) -> bool {
        self.target.lock().expect("cancel lock").is_some()
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<i32, Arc<CancelSlot>>>,
}

/// Removes a session's slot from the registry when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.slots.lock().expect("cancel registry").remove(&self.slot.pid);
    }
}

impl CancelRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(CancelRegistry::default())
    }

    /// Gives a new session a unique, random key.
    pub fn register(self: &Arc<Self>) -> Registration {
        let mut rng = rand::rng();
        let mut slots = self.slots.lock().expect("cancel registry");
        loop {
            let pid: i32 = rng.random_range(1..i32::MAX);
            if slots.contains_key(&pid) {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                pid,
                secret: rng.random(),
                target: Mutex::new(None),
                in_flight: AtomicUsize::new(0),
                delivered: Notify::new(),
            });
            slots.insert(pid, slot.clone());
            return Registration { registry: self.clone(), slot };
        }
    }

    /// Handles a CancelRequest: if the key matches a session that is running a query, cancel
    /// that query on its backend. Unknown or wrong keys are ignored, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) -> bool {
        let Some(slot) = self.slots.lock().expect("cancel registry").get(&pid).cloned() else {
            return false;
        };
        if !pgsplit_protocol::auth::constant_time_eq(&slot.secret.to_be_bytes(), &secret.to_be_bytes()) {
            return false;
        }
        let target = {
            let t = slot.target.lock().expect("cancel lock");
            let Some(target) = t.clone() else {
                return false;
            };
            slot.in_flight.fetch_add(1, Ordering::AcqRel);
            target
        };
        let sent = send_cancel(&target).await;
        slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        slot.delivered.notify_waiters();
        sent
    }

    pub fn len(&self) -> usize {
        self.slots.lock().expect("cancel registry").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sends a CancelRequest for `target` and waits for the server to close the connection, which
/// it does after signalling the backend.
pub async fn send_cancel(target: &CancelTarget) -> bool {
    let fut = async {
        let mut s = crate::pool::BackendStream::connect(&target.addr).await?;
        let mut b = BytesMut::new();
        StartupPacket::CancelRequest { pid: target.pid, secret: target.secret }.encode(&mut b);
        s.write_all(&b).await?;
        let mut sink = [0u8; 16];
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut sink).await;
        Ok::<_, std::io::Error>(())
    };
    matches!(tokio::time::timeout(std::time::Duration::from_secs(5), fut).await, Ok(Ok(())))
}
