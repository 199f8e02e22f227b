//! Full classification from PostgreSQL's own parse tree.
//!
//! The top level of each statement is matched on its typed node; everything below it is walked
//! completely (every field of every node, through `pg_query`'s serde view of the tree), so a
//! locking clause, `INTO`, a data-modifying CTE or a function call is found at any depth.

use pg_query::protobuf::{a_const, RawStmt};
use pg_query::NodeEnum;
use serde_json::Value;

use super::functions::{self, Known};
use super::{find_hint, Class, Effect, Need, Pin, TxControl};

const CURSOR_OPT_HOLD: i32 = 0x0020;

/// Classifies a statement batch by parsing it. Never fails: a parse error is a class.
pub fn classify_full(sql: &str) -> Class {
    let parsed = match pg_query::parse(sql) {
        Ok(p) => p,
        Err(_) => {
            let mut c = Class::new(Need::ParseError);
            c.hint = find_hint(sql);
            return c;
        }
    };
    let mut class = Class::new(Need::Read);
    class.statements = parsed.protobuf.stmts.len();
    // Session effects of statements between BEGIN and ROLLBACK in the same string never happen.
    let mut block_start = None;
    for raw in &parsed.protobuf.stmts {
        if let Some(NodeEnum::TransactionStmt(t)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            match t.kind {
                1 | 2 => block_start = Some(class.effects.len()),
                3 => block_start = None,
                4 => {
                    if let Some(i) = block_start.take() {
                        class.effects.truncate(i);
                    }
                }
                _ => {}
            }
        }
        statement(sql, raw, &mut class);
    }
    if let [raw] = parsed.protobuf.stmts.as_slice() {
        if let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            sql_prepared(node, &mut class);
        }
    }
    class.hint = find_hint(sql);
    class.functions.sort();
    class.functions.dedup();
    class.operators.sort();
    class.operators.dedup();
    class.relations.sort();
    class.relations.dedup();
    class
}

/// The text of one statement of a batch, trimmed, for replaying it.
fn statement_text<'a>(sql: &'a str, raw: &RawStmt) -> &'a str {
    let start = (raw.stmt_location.max(0) as usize).min(sql.len());
    let end = if raw.stmt_len <= 0 { sql.len() } else { (start + raw.stmt_len as usize).min(sql.len()) };
    sql.get(start..end).unwrap_or(sql).trim().trim_end_matches(';').trim()
}

fn statement(sql: &str, raw: &RawStmt, class: &mut Class) {
    let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
        return;
    };
    match node {
        NodeEnum::SelectStmt(_) => walk_node(node, class),
        NodeEnum::InsertStmt(_) | NodeEnum::UpdateStmt(_) | NodeEnum::DeleteStmt(_) | NodeEnum::MergeStmt(_) => {
            class.require(Need::Write);
            walk_node(node, class);
        }
        NodeEnum::VariableShowStmt(_) => {}
        NodeEnum::VariableSetStmt(s) => variable_set(s, statement_text(sql, raw), class),
        NodeEnum::TransactionStmt(t) => transaction(t, class),
        NodeEnum::ExplainStmt(e) => {
            let analyze = e.options.iter().any(|o| match &o.node {
                Some(NodeEnum::DefElem(d)) => d.defname == "analyze" && def_bool(d.arg.as_deref()).unwrap_or(true),
                _ => false,
            });
            if analyze {
                if let Some(q) = e.query.as_ref().and_then(|q| q.node.as_ref()) {
                    let mut inner = Class::new(Need::Read);
                    inner_statement(q, &mut inner);
                    if !inner.is_read() {
                        class.require(Need::ExplainAnalyze);
                    }
                    merge(class, inner);
                }
            }
        }
        NodeEnum::CopyStmt(c) => {
            if c.is_from || c.is_program || !c.filename.is_empty() {
                class.require(Need::Copy);
            }
            if let Some(r) = &c.relation {
                add_relation(class, &r.schemaname, &r.relname);
            }
            if let Some(q) = c.query.as_ref().and_then(|q| q.node.as_ref()) {
                inner_statement(q, class);
            }
        }
        NodeEnum::DeclareCursorStmt(d) => {
            if d.options & CURSOR_OPT_HOLD != 0 {
                class.require(Need::SessionState);
                class.effects.push(Effect::Pin(Pin::HoldCursor));
            }
            if let Some(q) = d.query.as_ref().and_then(|q| q.node.as_ref()) {
                inner_statement(q, class);
            }
        }
        NodeEnum::ClosePortalStmt(c) => {
            if c.portalname.is_empty() {
                class.effects.push(Effect::Unpin(Pin::HoldCursor));
            }
        }
        NodeEnum::FetchStmt(_) => {}
        NodeEnum::PrepareStmt(_) => {
            class.require(Need::SessionState);
            class.effects.push(Effect::Pin(Pin::SqlPrepare));
        }
        // The prepared statement may write: treat EXECUTE as unknown (primary, counts as a write).
        NodeEnum::ExecuteStmt(_) => class.require(Need::Unknown),
        NodeEnum::DeallocateStmt(d) => {
            if d.isall || d.name.is_empty() {
                class.effects.push(Effect::DeallocateAll);
            }
        }
        NodeEnum::ListenStmt(_) => {
            class.require(Need::SessionState);
            class.effects.push(Effect::Pin(Pin::Listen));
        }
        NodeEnum::UnlistenStmt(u) => {
            class.require(Need::SessionState);
            if u.conditionname.is_empty() || u.conditionname == "*" {
                class.effects.push(Effect::Unpin(Pin::Listen));
            }
        }
        NodeEnum::NotifyStmt(_) => class.require(Need::Write),
        NodeEnum::DiscardStmt(d) => match d.target {
            1 => class.effects.push(Effect::DiscardAll),
            3 => class.effects.push(Effect::Unpin(Pin::Sequence)),
            4 => class.effects.push(Effect::Unpin(Pin::TempObject)),
            _ => {}
        },
        NodeEnum::LoadStmt(_) => {
            class.require(Need::SessionState);
            class.effects.push(Effect::Pin(Pin::Other));
        }
        NodeEnum::TruncateStmt(_) => class.require(Need::Write),
        NodeEnum::LockStmt(_)
        | NodeEnum::CallStmt(_)
        | NodeEnum::DoStmt(_)
        | NodeEnum::VacuumStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_)
        | NodeEnum::CheckPointStmt(_) => {
            class.require(Need::Utility);
            walk_node(node, class);
        }
        other => {
            let name = variant_name(other);
            let ddl =
                ["Create", "Alter", "Drop", "Rename", "Comment", "Grant", "Define", "Security", "Refresh", "Import"]
                    .iter()
                    .any(|p| name.starts_with(p));
            class.ddl |= ddl;
            // Walk first: DDL of a temporary object is session state (not replicated, pins).
            walk_node(node, class);
            class.require(if ddl { Need::Ddl } else { Need::Unknown });
        }
    }
}

/// A lone PREPARE / EXECUTE / DEALLOCATE becomes a template the session rewrites; it then
/// needs no pin (the session prepares it wherever it runs).
fn sql_prepared(node: &NodeEnum, class: &mut Class) {
    use super::{SqlPrepared, STATEMENT_PLACEHOLDER as PH};
    let p = match node {
        NodeEnum::PrepareStmt(ps) => {
            let mut t = ps.clone();
            t.name = PH.to_owned();
            let Ok(template) = NodeEnum::PrepareStmt(t).deparse() else { return };
            let inner = match ps.query.as_ref().and_then(|q| q.node.as_ref()).map(|q| q.deparse()) {
                Some(Ok(q)) => classify_full(&q),
                _ => return,
            };
            class.effects.retain(|e| *e != Effect::Pin(Pin::SqlPrepare));
            class.need = Need::Read;
            SqlPrepared::Prepare { name: ps.name.clone(), template, inner: Box::new(inner) }
        }
        NodeEnum::ExecuteStmt(es) => {
            let mut t = es.clone();
            t.name = PH.to_owned();
            let Ok(template) = NodeEnum::ExecuteStmt(t).deparse() else { return };
            SqlPrepared::Execute { name: es.name.clone(), template }
        }
        NodeEnum::DeallocateStmt(d) if !d.isall && !d.name.is_empty() => {
            SqlPrepared::Deallocate { name: d.name.clone() }
        }
        _ => return,
    };
    class.sql_prepared = Some(p);
}

/// A statement nested in EXPLAIN, COPY or DECLARE: a query whose class counts.
fn inner_statement(node: &NodeEnum, class: &mut Class) {
    match node {
        NodeEnum::SelectStmt(_) => {}
        NodeEnum::InsertStmt(_) | NodeEnum::UpdateStmt(_) | NodeEnum::DeleteStmt(_) | NodeEnum::MergeStmt(_) => {
            class.require(Need::Write)
        }
        _ => class.require(Need::Unknown),
    }
    walk_node(node, class);
}

fn merge(into: &mut Class, from: Class) {
    into.require(from.need);
    into.effects.extend(from.effects);
    into.functions.extend(from.functions);
    into.operators.extend(from.operators);
    into.relations.extend(from.relations);
    into.catalog |= from.catalog;
}

fn variant_name(node: &NodeEnum) -> String {
    match serde_json::to_value(node) {
        Ok(Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

fn def_bool(arg: Option<&pg_query::protobuf::Node>) -> Option<bool> {
    match arg?.node.as_ref()? {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Ival(i) => Some(i.ival != 0),
            a_const::Val::Boolval(b) => Some(b.boolval),
            a_const::Val::Sval(s) => Some(matches!(s.sval.as_str(), "true" | "on" | "1" | "yes")),
            _ => None,
        },
        NodeEnum::String(s) => Some(matches!(s.sval.as_str(), "true" | "on" | "1" | "yes")),
        _ => None,
    }
}

fn def_str(arg: Option<&pg_query::protobuf::Node>) -> Option<String> {
    match arg?.node.as_ref()? {
        NodeEnum::AConst(c) => match c.val.as_ref()? {
            a_const::Val::Sval(s) => Some(s.sval.to_lowercase()),
            _ => None,
        },
        NodeEnum::String(s) => Some(s.sval.to_lowercase()),
        _ => None,
    }
}

fn transaction(t: &pg_query::protobuf::TransactionStmt, class: &mut Class) {
    match t.kind {
        // BEGIN, START TRANSACTION
        1 | 2 => {
            let mut read_only = false;
            let mut serializable = false;
            for o in &t.options {
                if let Some(NodeEnum::DefElem(d)) = &o.node {
                    match d.defname.as_str() {
                        "transaction_read_only" => read_only = def_bool(d.arg.as_deref()).unwrap_or(false),
                        "transaction_isolation" => {
                            serializable = def_str(d.arg.as_deref()).as_deref() == Some("serializable")
                        }
                        _ => {}
                    }
                }
            }
            if !read_only || serializable {
                class.require(Need::TxControl);
            }
            if class.tx.is_none() {
                class.tx = Some(TxControl::Begin { read_only, serializable });
            }
        }
        // COMMIT, ROLLBACK: end whatever transaction there is, wherever it runs.
        3 | 4 => {
            if class.tx.is_none() {
                class.tx = Some(TxControl::End);
            }
        }
        // SAVEPOINT, RELEASE, ROLLBACK TO: follow the transaction.
        5..=7 => {}
        // PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED: two-phase commit.
        _ => class.require(Need::Write),
    }
}

fn variable_set(s: &pg_query::protobuf::VariableSetStmt, text: &str, class: &mut Class) {
    if s.is_local {
        return;
    }
    let name = s.name.to_lowercase();
    match s.kind {
        // SET name = value / TO DEFAULT / FROM CURRENT
        1..=3 => {
            if matches!(name.as_str(), "transaction_isolation" | "transaction_read_only" | "transaction_deferrable") {
                return; // these apply to the current transaction only
            }
            if setting_forces_primary(&name, text) {
                class.require(Need::SessionState);
            }
            class.effects.push(Effect::Set { name, sql: text.to_owned() });
        }
        // SET TRANSACTION ... (this transaction) or SET SESSION CHARACTERISTICS AS TRANSACTION ...
        4 => {
            if name == "session characteristics" {
                if setting_forces_primary(&name, text) {
                    class.require(Need::SessionState);
                }
                class.effects.push(Effect::Set { name, sql: text.to_owned() });
            }
        }
        5 => class.effects.push(Effect::Reset { name }),
        6 => class.effects.push(Effect::ResetAll),
        _ => class.require(Need::Unknown),
    }
}

fn walk_node(node: &NodeEnum, class: &mut Class) {
    match serde_json::to_value(node) {
        Ok(v) => walk(&v, class, 0),
        Err(_) => class.require(Need::Unknown),
    }
}

fn add_relation(class: &mut Class, schema: &str, rel: &str) {
    if schema == "pg_catalog" || schema == "information_schema" || rel.starts_with("pg_") {
        class.catalog = true;
    }
    if schema == "pg_temp" {
        class.require(Need::SessionState);
    }
    class.relations.push(rel.to_lowercase());
}

/// Walks every field of every node below a statement.
fn walk(v: &Value, class: &mut Class, depth: usize) {
    match v {
        Value::Object(m) => {
            // A RangeVar, whether wrapped as a node or held directly (`relation`, `rel`, ...).
            if m.contains_key("relname") && m.contains_key("relpersistence") {
                range_var(v, class);
            }
            for (k, child) in m {
                match k.as_str() {
                    "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" if depth > 0 => {
                        class.require(Need::WritableCte)
                    }
                    "locking_clause" if child.as_array().is_some_and(|a| !a.is_empty()) => class.require(Need::Locking),
                    "into_clause" if !child.is_null() => class.require(Need::SelectInto),
                    "FuncCall" => func_call(child, class),
                    // explicit operators; `name` of an A_Expr, `use_op` of ORDER BY ... USING,
                    // `oper_name` of `x op ANY (SELECT ...)`
                    "A_Expr" | "AExpr" => operator(child.get("name"), class),
                    "SortBy" => operator(child.get("use_op"), class),
                    "SubLink" => operator(child.get("oper_name"), class),
                    _ => {}
                }
                walk(child, class, depth + 1);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, class, depth + 1)),
        _ => {}
    }
}

fn range_var(v: &Value, class: &mut Class) {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    if s("relpersistence") == "t" {
        class.require(Need::SessionState);
        class.effects.push(Effect::Pin(Pin::TempObject));
    }
    add_relation(class, s("schemaname"), s("relname"));
}

/// The string value of a node (`{"String": {"sval": ..}}`).
fn sval(v: &Value) -> Option<&str> {
    v.get("node").unwrap_or(v).get("String")?.get("sval")?.as_str()
}

/// A constant argument: a string or boolean literal, possibly cast.
fn const_arg(v: &Value) -> Option<String> {
    let n = v.get("node").unwrap_or(v);
    if let Some(c) = n.get("TypeCast") {
        return const_arg(c.get("arg")?);
    }
    let val = n.get("A_Const").or_else(|| n.get("AConst"))?.get("val")?;
    if let Some(s) = val.get("Sval") {
        return Some(s.get("sval")?.as_str()?.to_owned());
    }
    if let Some(b) = val.get("Boolval") {
        return Some(b.get("boolval").and_then(Value::as_bool).unwrap_or(false).to_string());
    }
    None
}

fn func_call(v: &Value, class: &mut Class) {
    let names: Vec<&str> =
        v.get("funcname").and_then(Value::as_array).map(|a| a.iter().filter_map(sval).collect()).unwrap_or_default();
    let Some(name) = names.last().map(|n| n.to_lowercase()) else {
        return;
    };
    match functions::known(&name) {
        Some(Known::SetConfig) => {
            let args: Vec<Option<String>> =
                v.get("args").and_then(Value::as_array).map(|a| a.iter().map(const_arg).collect()).unwrap_or_default();
            match args.as_slice() {
                [Some(_), Some(_), Some(local)] if local == "true" => {}
                [Some(n), Some(val), Some(_)] => class.effects.push(Effect::Set {
                    name: n.to_lowercase(),
                    sql: format!("SELECT pg_catalog.set_config({}, {}, false)", quote_literal(n), quote_literal(val)),
                }),
                _ => {
                    class.require(Need::SessionState);
                    class.effects.push(Effect::Pin(Pin::Other));
                }
            }
        }
        Some(k) => {
            functions::apply(k, &mut class.need, &mut class.effects);
        }
        None => class.functions.push(name),
    }
}

/// Records an operator from its (possibly schema-qualified) name list. Keyword forms
/// (`BETWEEN`, `IN`, ...) compare with the type's default operators and are not recorded.
fn operator(names: Option<&Value>, class: &mut Class) {
    let Some(op) = names.and_then(Value::as_array).and_then(|a| a.last()).and_then(sval) else {
        return;
    };
    if !op.starts_with(|c: char| c.is_ascii_alphabetic()) {
        class.operators.push(op.to_owned());
    }
}

/// Whether a session setting must never reach a replica: a serializable default (a standby
/// refuses to start serializable transactions, so the connection could not even be reset) or
/// read-write session characteristics.
pub fn setting_forces_primary(name: &str, sql: &str) -> bool {
    // the name first: this runs for every setting in force after every batch
    let words: &[&str] = match name {
        "default_transaction_isolation" => &["serializable"],
        "session characteristics" => &["serializable", "read write"],
        "transaction_read_only" | "default_transaction_read_only" => &["off", "false", "'0'"],
        _ => return false,
    };
    let sql = sql.to_ascii_lowercase();
    words.iter().any(|w| sql.contains(w))
}

/// A SQL string literal for `s`, valid whatever `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}
