//! A lexical fast path for the shapes that provably need no parse.
//!
//! It answers only when the answer cannot differ from the full classifier's, and otherwise
//! returns `None`: a single statement (at most a trailing `;`), no comments (which might hold
//! a hint), and
//! * `SELECT` without parentheses (so no function call, subquery or CTE) and without the
//!   words `INTO`, `FOR` (locking) or any catalog relation: a read of the named relations;
//! * `INSERT` / `UPDATE` / `DELETE` mentioning no function with session effects: a write;
//! * bare `BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `START TRANSACTION`.

use super::{Class, Need, TxControl};

/// Words that, after `SELECT`, make the fast path give up.
const SELECT_STOP: &[&str] =
    &["into", "for", "with", "union", "table", "pg_temp", "information_schema", "lateral", "similar"];

/// Substrings that make a write need the full parse (session effects hide in function calls).
const WRITE_STOP: &[&str] = &["currval", "lastval", "set_config", "advisory", "pg_temp", "with", "temp"];

/// SQL keywords that are not relation names (for the relation list of a fast-path read).
const KEYWORDS: &[&str] = &[
    "select", "from", "where", "and", "or", "not", "as", "on", "join", "left", "right", "inner", "outer", "full",
    "cross", "natural", "using", "order", "by", "group", "having", "limit", "offset", "asc", "desc", "nulls", "first",
    "last", "distinct", "all", "is", "null", "true", "false", "in", "between", "like", "ilike", "case", "when", "then",
    "else", "end", "only", "fetch", "next", "rows", "row", "ties", "any", "some", "exists",
];

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Characters PostgreSQL operators are made of.
fn is_operator_char(b: u8) -> bool {
    b"+-*/<>=~!@#%^&|`?".contains(&b)
}

/// A lexical token the fast path looks at.
enum Token<'a> {
    /// A word, lower-cased.
    Word(&'a str),
    /// A run of operator characters (or `*`, which might be one).
    Operator(&'a str),
}

/// Words and operators of `sql` outside string literals and quoted identifiers, or `None`
/// when the text has something the fast path does not handle (or `f` says stop).
fn tokens(sql: &str, mut f: impl FnMut(Token<'_>) -> bool) -> Option<()> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut word = String::new();
    while i < b.len() {
        let c = b[i];
        if is_ident(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            word.clear();
            word.push_str(&sql[start..i]);
            word.make_ascii_lowercase();
            if !f(Token::Word(&word)) {
                return None;
            }
            continue;
        }
        if is_operator_char(c) && c != b'-' && c != b'/' {
            let start = i;
            while i < b.len() && is_operator_char(b[i]) {
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

pub fn classify_fast(sql: &str) -> Option<Class> {
    let s = sql.trim();
    let s = s.strip_suffix(';').unwrap_or(s).trim_end();
    let first_end = s.bytes().position(|c| !c.is_ascii_alphabetic()).unwrap_or(s.len());
    let first = &s[..first_end];
    if first.eq_ignore_ascii_case("select") {
        let mut relations = Vec::new();
        let mut operators: Vec<String> = Vec::new();
        let mut ok = true;
        tokens(&s[first_end..], |t| match t {
            Token::Word(w) => {
                if SELECT_STOP.contains(&w) || w.starts_with("pg_") {
                    ok = false;
                    return false;
                }
                if !KEYWORDS.contains(&w) && !w.as_bytes()[0].is_ascii_digit() {
                    relations.push(w.to_owned());
                }
                // the operators PostgreSQL turns these keywords into
                let ops: &[&str] = match w {
                    "like" => &["~~", "!~~"],
                    "ilike" => &["~~*", "!~~*"],
                    _ => &[],
                };
                for op in ops {
                    if !operators.iter().any(|o| o == op) {
                        operators.push((*op).to_owned());
                    }
                }
                true
            }
            Token::Operator(op) => {
                if !operators.iter().any(|o| o == op) {
                    operators.push(op.to_owned());
                }
                true
            }
        })?;
        if !ok {
            return None;
        }
        relations.sort();
        relations.dedup();
        let mut c = Class::new(Need::Read);
        c.relations = relations;
        operators.sort();
        c.operators = operators;
        return Some(c);
    }
    if ["insert", "update", "delete"].iter().any(|k| first.eq_ignore_ascii_case(k)) {
        if s.contains(';') || s.contains("--") || s.contains("/*") || s.contains('"') || s.contains('\\') {
            return None;
        }
        let lower = s.to_ascii_lowercase();
        if WRITE_STOP.iter().any(|w| lower.contains(w)) {
            return None;
        }
        return Some(Class::new(Need::Write));
    }
    let tx = |t| {
        let mut c = Class::new(Need::Read);
        c.tx = Some(t);
        c
    };
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "begin" | "start transaction" | "begin transaction" | "begin work" => {
            let mut c = tx(TxControl::Begin { read_only: false, serializable: false });
            c.need = Need::TxControl;
            Some(c)
        }
        "commit" | "end" | "rollback" | "abort" | "commit work" | "rollback work" => Some(tx(TxControl::End)),
        _ => None,
    }
}
