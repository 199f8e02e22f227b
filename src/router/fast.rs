//! A lexical fast path for the shapes that provably need no parse.
//!
//! It answers only when the answer cannot differ from the full classifier's, and otherwise
//! returns `None`: a single statement (at most a trailing `;`), no comments (which might hold
//! a hint), and
//! * `SELECT` without parentheses (so no function call, subquery or CTE) and without the
//!   words `INTO`, `FOR` (locking) or any catalog relation: a read of the named relations;
//! * `INSERT` / `UPDATE` / `DELETE` mentioning no function with session effects: a write;
//! * bare `BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `START TRANSACTION`.

use std::cell::RefCell;

use aho_corasick::AhoCorasick;
use std::sync::{Arc, LazyLock};

use super::{Class, ClassRef, Need, TxControl};

/// Words that, after `SELECT`, make the fast path give up. (A `match` rather than a list: it
/// runs for every word of every statement.)
fn is_select_stop(w: &[u8]) -> bool {
    matches!(
        w,
        b"into" | b"for" | b"with" | b"union" | b"table" | b"pg_temp" | b"information_schema" | b"lateral" | b"similar"
    )
}

/// Substrings that make a write need the full parse (session effects hide in function calls).
const WRITE_STOP: &[&str] = &["currval", "lastval", "set_config", "advisory", "pg_temp", "with", "temp"];

/// What makes a write leave the fast path: [`WRITE_STOP`] anywhere (literals too, in any
/// case), a second statement, a comment, a quoted identifier or a backslash. One automaton,
/// one pass over the text.
static WRITE_GIVE_UP: LazyLock<AhoCorasick> = LazyLock::new(|| {
    let patterns = WRITE_STOP.iter().copied().chain([";", "--", "/*", "\"", "\\"]);
    AhoCorasick::builder().ascii_case_insensitive(true).build(patterns).expect("fixed patterns")
});

/// SQL keywords that are not relation names (for the relation list of a fast-path read).
#[rustfmt::skip]
fn is_keyword(w: &[u8]) -> bool {
    matches!(
        w,
        b"select" | b"from" | b"where" | b"and" | b"or" | b"not" | b"as" | b"on" | b"join" | b"left" | b"right" | b"inner"
            | b"outer" | b"full" | b"cross" | b"natural" | b"using" | b"order" | b"by" | b"group" | b"having" | b"limit"
            | b"offset" | b"asc" | b"desc" | b"nulls" | b"first" | b"last" | b"distinct" | b"all" | b"is" | b"null" | b"true"
            | b"false" | b"in" | b"between" | b"like" | b"ilike" | b"case" | b"when" | b"then" | b"else" | b"end" | b"only"
            | b"fetch" | b"next" | b"rows" | b"row" | b"ties" | b"any" | b"some" | b"exists"
    )
}

const fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Characters PostgreSQL operators are made of.
#[rustfmt::skip]
const fn is_operator_char(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
    )
}

const OTHER: u8 = 0;
const IDENT: u8 = 1;
const OPERATOR: u8 = 2;

/// Each byte's class, [`IDENT`] or [`OPERATOR`] or [`OTHER`]: one load per byte where the
/// tests above are a chain of comparisons.
static BYTE_CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if is_ident(b) {
            IDENT
        } else if is_operator_char(b) {
            OPERATOR
        } else {
            OTHER
        };
        i += 1;
    }
    t
};

fn class_of(b: u8) -> u8 {
    BYTE_CLASS[usize::from(b)]
}

/// A lexical token the fast path looks at.
enum Token<'a> {
    /// A word, lower-cased (ASCII only, as PostgreSQL folds identifiers).
    Word { lower: &'a [u8] },
    /// A run of operator characters (or `*`, which might be one).
    Operator(&'a str),
}

/// Words and operators of `sql` outside string literals and quoted identifiers, or `None`
/// when the text has something the fast path does not handle (or `f` says stop).
fn tokens(sql: &str, mut f: impl FnMut(Token<'_>) -> bool) -> Option<()> {
    let b = sql.as_bytes();
    let mut i = 0;
    // Lower-cased in place of an allocation: PostgreSQL truncates identifiers to 63 bytes, and
    // a longer word is left to the parser.
    let mut word = [0u8; 63];
    while i < b.len() {
        let c = b[i];
        let class = class_of(c);
        if class == IDENT {
            // lower-cased as it is read; bytes >= 0x80 belong to words, so a word never
            // splits a character
            let mut n = 0;
            while i < b.len() && class_of(b[i]) == IDENT {
                *word.get_mut(n)? = b[i].to_ascii_lowercase();
                n += 1;
                i += 1;
            }
            if !f(Token::Word { lower: &word[..n] }) {
                return None;
            }
            continue;
        }
        if class == OPERATOR && c != b'-' && c != b'/' {
            let start = i;
            while i < b.len() && class_of(b[i]) == OPERATOR {
                i += 1;
            }
            let op = &sql[start..i];
            // A run with `-` or `/` may hold a comment or a sign, and one ending in `+` lexes as
            // two operators: leave those to the parser, so that the operators recorded here
            // are the ones PostgreSQL sees.
            if op.contains(['-', '/']) || (op.len() > 1 && op.ends_with('+')) {
                return None;
            }
            let op = if op == "!=" { "<>" } else { op };
            if !f(Token::Operator(op)) {
                return None;
            }
            continue;
        }
        match c {
            b'\'' => {
                // a plain literal: skip to its closing quote ('' is an escaped quote)
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(b'\\') => return None, // E'' escapes: leave to the parser
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'"' | b'(' | b'/' | b'-' | b';' | b'\\' => return None,
            _ => i += 1,
        }
    }
    Some(())
}

/// The statement without surrounding space and trailing `;`, and that split after its first
/// word.
fn first_word(sql: &str) -> (&str, &str, &str) {
    let s = sql.trim();
    let s = s.strip_suffix(';').unwrap_or(s).trim_end();
    let first_end = s.bytes().position(|c| !c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (first, rest) = s.split_at(first_end);
    (s, first, rest)
}

/// What decides a fast-path SELECT's class.
enum Part<'a> {
    /// A word that may name a relation, lower-cased.
    Relation(&'a [u8]),
    /// An operator as PostgreSQL will see it.
    Operator(&'a str),
}

/// Walks what follows `SELECT` and calls `f` with its [`Part`]s in order. `None` when the fast
/// path does not answer for this text.
fn select_parts(rest: &str, mut f: impl FnMut(Part<'_>)) -> Option<()> {
    tokens(rest, |t| match t {
        Token::Word { lower: w } => {
            if is_select_stop(w) || w.starts_with(b"pg_") {
                return false;
            }
            if !is_keyword(w) && !w[0].is_ascii_digit() {
                f(Part::Relation(w));
            }
            // the operators PostgreSQL turns these keywords into
            let ops: &[&str] = match w {
                b"like" => &["~~", "!~~"],
                b"ilike" => &["~~*", "!~~*"],
                _ => &[],
            };
            ops.iter().for_each(|op| f(Part::Operator(op)));
            true
        }
        Token::Operator(op) => {
            f(Part::Operator(op));
            true
        }
    })
}

pub fn classify_fast(sql: &str) -> Option<Class> {
    let (s, first, rest) = first_word(sql);
    if first.eq_ignore_ascii_case("select") {
        let mut relations = Vec::with_capacity(4);
        let mut operators: Vec<String> = Vec::with_capacity(2);
        select_parts(rest, |part| match part {
            Part::Relation(w) => relations.push(String::from_utf8_lossy(w).into_owned()),
            Part::Operator(op) => {
                if !operators.iter().any(|o| o == op) {
                    operators.push(op.to_owned());
                }
            }
        })?;
        relations.sort();
        relations.dedup();
        let mut c = Class::new(Need::Read);
        c.relations = relations;
        operators.sort();
        c.operators = operators;
        return Some(c);
    }
    fixed_kind(s, first).map(Fixed::class)
}

/// The fast path's statements besides SELECT: their class does not depend on the rest of the
/// text.
#[derive(Clone, Copy)]
enum Fixed {
    Write = 0,
    Begin = 1,
    End = 2,
}

impl Fixed {
    fn class(self) -> Class {
        let tx = |t| {
            let mut c = Class::new(Need::Read);
            c.tx = Some(t);
            c
        };
        match self {
            Fixed::Write => Class::new(Need::Write),
            Fixed::Begin => {
                let mut c = tx(TxControl::Begin { read_only: false, serializable: false });
                c.need = Need::TxControl;
                c
            }
            Fixed::End => tx(TxControl::End),
        }
    }
}

/// `s` (trimmed, without its `;`) as a [`Fixed`] statement, if it is one the fast path answers.
fn fixed_kind(s: &str, first: &str) -> Option<Fixed> {
    if ["insert", "update", "delete"].iter().any(|k| first.eq_ignore_ascii_case(k)) {
        return (!WRITE_GIVE_UP.is_match(s)).then_some(Fixed::Write);
    }
    let is = |words: &[&str]| words.iter().any(|w| s.eq_ignore_ascii_case(w));
    if is(&["begin", "start transaction", "begin transaction", "begin work"]) {
        return Some(Fixed::Begin);
    }
    if is(&["commit", "end", "rollback", "abort", "commit work", "rollback work"]) {
        return Some(Fixed::End);
    }
    None
}

/// The longest shape kept in the per-thread cache; a longer one is classified every time.
const MAX_SHAPE: usize = 256;

/// Slots of the per-thread shape cache (direct-mapped by a hash of the shape).
const SHAPE_SLOTS: usize = 128;

/// What decides a fast-path SELECT's class: its relation words and operators, in order, each
/// followed by a space. Literals and numbers are not part of it, so `... WHERE aid = 1` and
/// `... WHERE aid = 2` share a shape (and a class).
struct Shape {
    buf: [u8; MAX_SHAPE],
    len: usize,
    overflow: bool,
}

impl Shape {
    fn push(&mut self, part: &[u8]) {
        let end = self.len + part.len() + 1;
        if end > MAX_SHAPE {
            self.overflow = true;
            return;
        }
        self.buf[self.len..end - 1].copy_from_slice(part);
        self.buf[end - 1] = b' ';
        self.len = end;
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// FNV-1a: the shape is short and this runs once per statement.
    fn slot(&self) -> usize {
        let h = self
            .bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        (h as usize) % SHAPE_SLOTS
    }
}

type ShapeSlots = Vec<Option<(Box<[u8]>, ClassRef)>>;

thread_local! {
    /// Per worker thread, so that no lock is taken: a few kilobytes per thread.
    static SHAPES: RefCell<ShapeSlots> = RefCell::new(vec![None; SHAPE_SLOTS]);
}

/// The [`Fixed`] statements' classes, shared.
static FIXED: LazyLock<[ClassRef; 3]> =
    LazyLock::new(|| [Fixed::Write, Fixed::Begin, Fixed::End].map(|k| Arc::new(k.class())));

/// [`classify_fast`] for the session's hot path, without allocating for the common shapes:
/// a SELECT's class is shared by all texts of its [`Shape`] (kept per thread), and fast-path
/// writes and transaction statements share theirs.
pub fn classify_fast_shared(sql: &str) -> Option<ClassRef> {
    let (s, first, rest) = first_word(sql);
    if !first.eq_ignore_ascii_case("select") {
        return fixed_kind(s, first).map(|k| FIXED[k as usize].clone());
    }
    let mut shape = Shape { buf: [0; MAX_SHAPE], len: 0, overflow: false };
    select_parts(rest, |part| match part {
        Part::Relation(w) => shape.push(w),
        Part::Operator(op) => shape.push(op.as_bytes()),
    })?;
    if shape.overflow {
        return classify_fast(sql).map(Arc::new);
    }
    let slot = shape.slot();
    let hit = SHAPES.with_borrow(|slots| match &slots[slot] {
        Some((key, class)) if **key == *shape.bytes() => Some(class.clone()),
        _ => None,
    });
    if hit.is_some() {
        return hit;
    }
    let class = Arc::new(classify_fast(sql)?);
    SHAPES.with_borrow_mut(|slots| slots[slot] = Some((shape.bytes().into(), class.clone())));
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the automaton replaced: a scan of the whole text per character and stop word.
    fn by_substrings(s: &str) -> bool {
        let lower = s.to_ascii_lowercase();
        [";", "--", "/*", "\"", "\\"].iter().any(|c| s.contains(c)) || WRITE_STOP.iter().any(|w| lower.contains(w))
    }

    #[test]
    fn write_check_agrees_with_substrings() {
        let corpus = [
            "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
            "DELETE FROM t WHERE id = 1",
            "INSERT INTO t VALUES (currval('s'))",
            "INSERT INTO t VALUES (LASTVAL())",
            "UPDATE t SET a = Set_Config('x', 'y', false)",
            "UPDATE t SET a = pg_advisory_lock(1)",
            "INSERT INTO pg_temp.t VALUES (1)",
            "INSERT INTO mytemptable VALUES (1)",
            "INSERT INTO t VALUES ('attempt')",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "INSERT INTO t VALUES (1); DELETE FROM t",
            "DELETE FROM t -- comment",
            "DELETE FROM t /* comment */",
            "DELETE FROM \"T\"",
            "INSERT INTO t VALUES (E'\\n')",
            "UPDATE t SET a = a - 1 WHERE b / 2 = 1",
            "UPDATE t SET wit = 1, hw = 2, cur = 3, setting = 4",
            "UPDATE TËMP SET a = 1",
        ];
        for sql in corpus {
            assert_eq!(WRITE_GIVE_UP.is_match(sql), by_substrings(sql), "{sql}");
            assert_eq!(classify_fast(sql).is_some(), !by_substrings(sql), "{sql}");
        }
    }

    #[test]
    fn transaction_statements_in_any_case() {
        for sql in ["begin", "BEGIN;", " Start Transaction ", "begin work", "COMMIT", "end;", "Rollback Work", "abort"]
        {
            assert!(classify_fast(sql).and_then(|c| c.tx).is_some(), "{sql}");
        }
        for sql in ["begin isolation level serializable", "start  transaction", "commit and chain"] {
            assert!(classify_fast(sql).is_none(), "{sql}");
        }
    }
}
