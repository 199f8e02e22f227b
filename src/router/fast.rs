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

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Characters PostgreSQL operators are made of.
#[rustfmt::skip]
fn is_operator_char(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%' | b'^' | b'&' | b'|' | b'`' | b'?'
    )
}

/// A lexical token the fast path looks at.
enum Token<'a> {
    /// A word: lower-cased (ASCII only, as PostgreSQL folds identifiers), and as written.
    Word { lower: &'a [u8], text: &'a str },
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
        if is_ident(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let lower = word.get_mut(..i - start)?;
            lower.copy_from_slice(&b[start..i]);
            lower.make_ascii_lowercase();
            // bytes >= 0x80 belong to words, so a word never splits a character
            if !f(Token::Word { lower, text: &sql[start..i] }) {
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
        let mut relations = Vec::with_capacity(4);
        let mut operators: Vec<String> = Vec::with_capacity(2);
        let mut ok = true;
        tokens(&s[first_end..], |t| match t {
            Token::Word { lower: w, text } => {
                if is_select_stop(w) || w.starts_with(b"pg_") {
                    ok = false;
                    return false;
                }
                if !is_keyword(w) && !w[0].is_ascii_digit() {
                    relations.push(text.to_ascii_lowercase());
                }
                // the operators PostgreSQL turns these keywords into
                let ops: &[&str] = match w {
                    b"like" => &["~~", "!~~"],
                    b"ilike" => &["~~*", "!~~*"],
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
