//! The classifier as the session uses it: fast path, then a bounded LRU cache by statement
//! text, then the full parse.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::{classify_full, fast::classify_fast_shared, ClassRef};

/// Statements longer than this are classified every time rather than cached (they are rare and
/// would crowd the cache).
const MAX_CACHED_LEN: usize = 8 << 10;

/// How a classification was obtained (for metrics and benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Fast = 0,
    Cache = 1,
    Parse = 2,
}

pub struct Classifier {
    cache: Mutex<LruCache<Box<str>, ClassRef>>,
}

impl Classifier {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("nonzero");
        Classifier { cache: Mutex::new(LruCache::new(cap)) }
    }

    pub fn classify(&self, sql: &str) -> ClassRef {
        self.classify_with_source(sql).0
    }

    pub fn classify_with_source(&self, sql: &str) -> (ClassRef, Source) {
        if let Some(c) = classify_fast_shared(sql) {
            return (c, Source::Fast);
        }
        if sql.len() <= MAX_CACHED_LEN {
            if let Some(c) = self.cache.lock().expect("classifier cache").get(sql) {
                return (c.clone(), Source::Cache);
            }
        }
        let c = Arc::new(classify_full(sql));
        if sql.len() <= MAX_CACHED_LEN {
            self.cache.lock().expect("classifier cache").put(sql.into(), c.clone());
        }
        (c, Source::Parse)
    }

    pub fn len(&self) -> usize {
        self.cache.lock().expect("classifier cache").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
