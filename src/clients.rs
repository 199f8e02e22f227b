//! The registry of connected clients, for SHOW CLIENTS and the dashboard. Each session owns an
//! entry with a few atomics it updates as it goes (no locks on the hot path); the registry lock
//! is taken only when a client arrives or leaves and when someone looks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Idle = 0,
    Active = 1,
    InTransaction = 2,
    Waiting = 3,
}

impl ClientState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::InTransaction => "in_transaction",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientState::Active,
            2 => ClientState::InTransaction,
            3 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }
}

pub struct ClientEntry {
    pub id: u64,
    pub addr: String,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub tls: bool,
    pub connected_at: SystemTime,
    state: AtomicU8,
    /// Node index of the backend held, or -1.
    node: AtomicI32,
    backend_pid: AtomicI32,
    pub batches: AtomicU64,
    /// Pins, as a bit set of `router::Pin` discriminants.
    pins: AtomicU8,
}

impl ClientEntry {
    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }
    pub fn set_backend(&self, node: Option<usize>, pid: i32) {
        self.node.store(node.map(|n| n as i32).unwrap_or(-1), Ordering::Relaxed);
        self.backend_pid.store(pid, Ordering::Relaxed);
    }
    pub fn backend(&self) -> Option<(usize, i32)> {
        let n = self.node.load(Ordering::Relaxed);
        (n >= 0).then(|| (n as usize, self.backend_pid.load(Ordering::Relaxed)))
    }
    pub fn set_pins(&self, bits: u8) {
        self.pins.store(bits, Ordering::Relaxed);
    }
    pub fn pins(&self) -> u8 {
        self.pins.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct ClientRegistry {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<ClientEntry>>>,
}

/// Removes the client from the registry when the session ends.
pub struct ClientHandle {
    registry: Arc<ClientRegistry>,
    pub entry: Arc<ClientEntry>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.registry.entries.lock().expect("client registry").remove(&self.entry.id);
    }
}

impl ClientRegistry {
    pub fn register(
        self: &Arc<Self>,
        addr: &str,
        user: &str,
        database: &str,
        application_name: &str,
        tls: bool,
    ) -> ClientHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            addr: addr.to_owned(),
            user: user.to_owned(),
            database: database.to_owned(),
            application_name: application_name.to_owned(),
            tls,
            connected_at: SystemTime::now(),
            state: AtomicU8::new(0),
            node: AtomicI32::new(-1),
            backend_pid: AtomicI32::new(0),
            batches: AtomicU64::new(0),
            pins: AtomicU8::new(0),
        });
        self.entries.lock().expect("client registry").insert(id, entry.clone());
        ClientHandle { registry: self.clone(), entry }
    }

    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        let mut v: Vec<_> = self.entries.lock().expect("client registry").values().cloned().collect();
        v.sort_by_key(|e| e.id);
        v
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("client registry").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
