//! What the primary's catalog says that routing needs: the volatility of every function
//! (`pg_proc.provolatile`), the operators backed by volatile functions, and the unlogged
//! relations, per database. Loaded by the monitor for
//! the databases clients use, refreshed periodically and right after DDL through pgsplit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

/// One database's catalog facts.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Function name (lower case, unqualified) → the most volatile of its overloads:
    /// `i`mmutable, `s`table or `v`olatile.
    pub functions: HashMap<String, u8>,
    /// Operators (by name) of which some overload runs a volatile function.
    pub volatile_operators: HashSet<String>,
    /// Unlogged tables, materialized views and partitioned tables (lower case, unqualified).
    pub unlogged: HashSet<String>,
    pub loaded_at: Option<Instant>,
}

impl Catalog {
    pub fn volatility(&self, function: &str) -> Option<u8> {
        self.functions.get(function).copied()
    }
}

/// A session's memo of its database's catalog. It holds the set of loaded catalogs it was
/// taken from, and is good while that set is the current one (every load or reload stores a
/// new set), so a routing decision needs no lookup by name.
#[derive(Default)]
pub struct CatalogMemo {
    set: Option<Arc<HashMap<String, Arc<Catalog>>>>,
    catalog: Option<Arc<Catalog>>,
}

/// Catalogs of every database in use.
#[derive(Default)]
pub struct Catalogs {
    loaded: ArcSwap<HashMap<String, Arc<Catalog>>>,
    /// Databases to (re)load at the monitor's next pass.
    pending: Mutex<HashSet<String>>,
    pub(crate) wake: Notify,
}

impl Catalogs {
    pub fn get(&self, database: &str) -> Option<Arc<Catalog>> {
        self.loaded.load().get(database).cloned()
    }

    /// [`get`](Self::get) through a session's memo.
    pub fn get_memo<'m>(&self, database: &str, memo: &'m mut CatalogMemo) -> Option<&'m Catalog> {
        let set = self.loaded.load();
        if !memo.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, &set)) {
            memo.catalog = set.get(database).cloned();
            memo.set = Some(Arc::clone(&set));
        }
        memo.catalog.as_deref()
    }

    /// A client uses `database`: load its catalog if it is not loaded.
    pub fn want(&self, database: &str) {
        if self.loaded.load().contains_key(database) {
            return;
        }
        self.refresh(database);
    }

    /// Reload `database`'s catalog soon (after DDL).
    pub fn refresh(&self, database: &str) {
        let mut p = self.pending.lock().expect("catalog pending");
        if p.insert(database.to_owned()) {
            drop(p);
            self.wake.notify_one();
        }
    }

    /// Try `database` again at the next pass, without waking the loader now.
    pub(crate) fn refresh_later(&self, database: &str) {
        self.pending.lock().expect("catalog pending").insert(database.to_owned());
    }

    pub(crate) fn take_pending(&self) -> Vec<String> {
        self.pending.lock().expect("catalog pending").drain().collect()
    }

    pub(crate) fn databases(&self) -> Vec<String> {
        self.loaded.load().keys().cloned().collect()
    }

    pub(crate) fn store(&self, database: &str, catalog: Catalog) {
        let mut m = HashMap::clone(&self.loaded.load());
        m.insert(database.to_owned(), Arc::new(catalog));
        self.loaded.store(Arc::new(m));
    }
}

/// Reads one database's catalog from the primary.
pub(crate) async fn load(conn: &mut sqlx::PgConnection) -> Result<Catalog, sqlx::Error> {
    let functions: Vec<(String, String)> =
        sqlx::query_as("SELECT lower(proname::text), max(provolatile::text) FROM pg_catalog.pg_proc GROUP BY 1")
            .fetch_all(&mut *conn)
            .await?;
    let operators: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT o.oprname::text FROM pg_catalog.pg_operator o \
         JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode WHERE p.provolatile = 'v'",
    )
    .fetch_all(&mut *conn)
    .await?;
    let unlogged: Vec<(String,)> = sqlx::query_as(
        "SELECT lower(relname::text) FROM pg_catalog.pg_class WHERE relpersistence = 'u' AND relkind IN ('r', 'p', 'm')",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(Catalog {
        functions: functions.into_iter().map(|(n, v)| (n, v.bytes().next().unwrap_or(b'v'))).collect(),
        volatile_operators: operators.into_iter().map(|(n,)| n).collect(),
        unlogged: unlogged.into_iter().map(|(n,)| n).collect(),
        loaded_at: Some(Instant::now()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_follows_reloads() {
        let catalogs = Catalogs::default();
        let mut memo = CatalogMemo::default();
        assert!(catalogs.get_memo("app", &mut memo).is_none(), "nothing loaded yet");
        let mut c = Catalog::default();
        c.unlogged.insert("a".into());
        catalogs.store("app", c);
        assert!(catalogs.get_memo("app", &mut memo).unwrap().unlogged.contains("a"), "a load is seen");
        let mut c = Catalog::default();
        c.unlogged.insert("b".into());
        catalogs.store("app", c);
        let now = catalogs.get_memo("app", &mut memo).unwrap();
        assert!(now.unlogged.contains("b") && !now.unlogged.contains("a"), "a reload replaces it");
        catalogs.store("other", Catalog::default());
        assert!(catalogs.get_memo("app", &mut memo).unwrap().unlogged.contains("b"), "another database's load");
        let mut other = CatalogMemo::default();
        assert!(catalogs.get_memo("nowhere", &mut other).is_none());
    }
}
