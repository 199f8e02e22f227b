//! Named prepared statements of the extended protocol.
//!
//! A client's statement names are its own; on backend connections pgsplit prepares each
//! distinct (SQL, parameter types) once under its own name `pgsplit_<id>`, shared by every
//! client that prepares the same statement. A session maps its clients' names to these, so a
//! named statement keeps working in transaction pooling when the next transaction lands on
//! another connection: pgsplit prepares it there first, transparently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::router::ClassRef;

/// One distinct statement, as prepared on backends.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    pub sql: String,
    pub param_types: Vec<u32>,
    /// The statement's class, decided once when it was first parsed.
    pub class: ClassRef,
    /// Its name on backend connections.
    pub backend_name: String,
}

/// A statement's text and declared parameter types.
type StatementKey = (String, Vec<u32>);

/// Interns statements by text and parameter types.
pub struct StatementRegistry {
    map: Mutex<HashMap<StatementKey, Arc<Statement>>>,
    next: AtomicU64,
}

/// Above this many distinct statements the registry forgets all of them and starts over;
/// statements in use stay valid through the sessions that hold them.
const MAX_STATEMENTS: usize = 100_000;

impl StatementRegistry {
    pub fn new() -> Self {
        StatementRegistry { map: Mutex::new(HashMap::new()), next: AtomicU64::new(1) }
    }

    pub fn intern(&self, sql: &str, param_types: &[u32], classify: impl FnOnce(&str) -> ClassRef) -> Arc<Statement> {
        let mut map = self.map.lock().expect("statement registry");
        if let Some(s) = map.get(&(sql.to_owned(), param_types.to_vec())) {
            return s.clone();
        }
        if map.len() >= MAX_STATEMENTS {
            map.clear();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(Statement {
            id,
            sql: sql.to_owned(),
            param_types: param_types.to_vec(),
            class: classify(sql),
            backend_name: format!("pgsplit_{id}"),
        });
        map.insert((sql.to_owned(), param_types.to_vec()), s.clone());
        s
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("statement registry").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for StatementRegistry {
    fn default() -> Self {
        Self::new()
    }
}
