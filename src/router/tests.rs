//! Table tests for the classifier and the policy.

use super::fast::{classify_fast, classify_fast_shared};
use super::*;

fn need(sql: &str) -> Need {
    classify_full(sql).need
}

#[test]
fn reads() {
    for sql in [
        "SELECT 1",
        "select * from accounts where id = 1",
        "VALUES (1), (2)",
        "TABLE accounts",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "SHOW search_path",
        "SELECT count(*) FROM accounts",
        "EXPLAIN SELECT * FROM accounts",
        "EXPLAIN INSERT INTO t VALUES (1)",
        "COPY accounts TO STDOUT",
        "COPY (SELECT * FROM accounts) TO STDOUT",
        "SELECT 1; SELECT 2",
        "FETCH 10 FROM c",
        "COMMIT",
        "ROLLBACK",
        "BEGIN READ ONLY",
        "START TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ",
        "SET statement_timeout = 1000",
        "SAVEPOINT a",
        "SELECT $1::int",
        "EXPLAIN ANALYZE SELECT 1",
    ] {
        assert_eq!(need(sql), Need::Read, "{sql}");
    }
}

#[test]
fn needs_primary() {
    for (sql, expected) in [
        ("INSERT INTO t VALUES (1)", Need::Write),
        ("UPDATE t SET a = 1", Need::Write),
        ("DELETE FROM t", Need::Write),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", Need::Write),
        ("TRUNCATE t", Need::Write),
        ("CREATE TABLE t (a int)", Need::Ddl),
        ("ALTER TABLE t ADD COLUMN b int", Need::Ddl),
        ("DROP TABLE t", Need::Ddl),
        ("GRANT SELECT ON t TO public", Need::Ddl),
        ("COMMENT ON TABLE t IS 'x'", Need::Ddl),
        ("CREATE MATERIALIZED VIEW mv AS SELECT 1", Need::Ddl),
        ("REFRESH MATERIALIZED VIEW mv", Need::Ddl),
        ("CREATE TABLE x AS SELECT 1", Need::Ddl),
        ("SELECT * INTO newt FROM t", Need::SelectInto),
        ("SELECT * FROM t FOR UPDATE", Need::Locking),
        ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", Need::Locking),
        ("SELECT * FROM t FOR SHARE", Need::Locking),
        ("SELECT * FROM t FOR KEY SHARE", Need::Locking),
        ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", Need::Locking),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", Need::WritableCte),
        ("WITH a AS (WITH b AS (DELETE FROM t RETURNING *) SELECT * FROM b) SELECT * FROM a", Need::WritableCte),
        ("SELECT nextval('s')", Need::SideEffectFunction),
        ("SELECT setval('s', 1)", Need::SideEffectFunction),
        ("SELECT pg_notify('c', 'x')", Need::SideEffectFunction),
        ("SELECT txid_current()", Need::SideEffectFunction),
        ("SELECT pg_current_xact_id()", Need::SideEffectFunction),
        ("SELECT pg_switch_wal()", Need::SideEffectFunction),
        ("SELECT pg_current_wal_lsn()", Need::SideEffectFunction),
        ("SELECT lo_create(0)", Need::SideEffectFunction),
        ("SELECT pg_advisory_xact_lock(1)", Need::SideEffectFunction),
        ("SELECT * FROM t WHERE id = (SELECT nextval('s'))", Need::SideEffectFunction),
        ("SELECT currval('s')", Need::SessionState),
        ("SELECT lastval()", Need::SessionState),
        ("SELECT pg_advisory_lock(1)", Need::SessionState),
        ("COPY t FROM STDIN", Need::Copy),
        ("COPY t TO '/tmp/x'", Need::Copy),
        ("COPY t TO PROGRAM 'cat'", Need::Copy),
        ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", Need::Write),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", Need::ExplainAnalyze),
        ("EXPLAIN (ANALYZE) DELETE FROM t", Need::ExplainAnalyze),
        ("EXPLAIN ANALYZE SELECT nextval('s')", Need::ExplainAnalyze),
        ("BEGIN", Need::TxControl),
        ("START TRANSACTION", Need::TxControl),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", Need::TxControl),
        ("PREPARE TRANSACTION 'x'", Need::Write),
        ("COMMIT PREPARED 'x'", Need::Write),
        ("LISTEN jobs", Need::SessionState),
        ("UNLISTEN *", Need::SessionState),
        ("NOTIFY jobs", Need::Write),
        ("CREATE TEMP TABLE tt (a int)", Need::SessionState),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Need::SessionState),
        ("PREPARE p AS SELECT 1; SELECT 1", Need::SessionState),
        ("EXECUTE p", Need::Unknown),
        ("LOCK TABLE t", Need::Utility),
        ("CALL p()", Need::Utility),
        ("DO $$ BEGIN END $$", Need::Utility),
        ("VACUUM t", Need::Utility),
        ("ANALYZE t", Need::Utility),
        ("CLUSTER t", Need::Utility),
        ("REINDEX TABLE t", Need::Utility),
        ("CHECKPOINT", Need::Utility),
        ("SELECT 1; INSERT INTO t VALUES (1)", Need::Write),
        ("INSERT INTO t VALUES (1); SELECT 1", Need::Write),
        ("SELEC 1", Need::ParseError),
        ("", Need::Read),
        ("SELECT * FROM pg_temp.tt", Need::SessionState),
        ("SET default_transaction_isolation = serializable", Need::SessionState),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", Need::SessionState),
    ] {
        assert_eq!(need(sql), expected, "{sql}");
    }
}

#[test]
fn effects() {
    let c = classify_full("SET search_path TO a, b");
    assert_eq!(c.effects, vec![Effect::Set { name: "search_path".into(), sql: "SET search_path TO a, b".into() }]);
    let c = classify_full("select 1; set local work_mem = '1MB'; SET application_name = 'x';");
    assert_eq!(
        c.effects,
        vec![Effect::Set { name: "application_name".into(), sql: "SET application_name = 'x'".into() }]
    );
    assert!(classify_full("BEGIN; SET work_mem = '9MB'; ROLLBACK").effects.is_empty());
    assert_eq!(classify_full("BEGIN; SET work_mem = '9MB'; COMMIT").effects.len(), 1);
    assert_eq!(classify_full("RESET work_mem").effects, vec![Effect::Reset { name: "work_mem".into() }]);
    assert_eq!(classify_full("RESET ALL").effects, vec![Effect::ResetAll]);
    assert_eq!(classify_full("DISCARD ALL").effects, vec![Effect::DiscardAll]);
    assert_eq!(classify_full("DEALLOCATE ALL").effects, vec![Effect::DeallocateAll]);
    assert_eq!(classify_full("DISCARD TEMP").effects, vec![Effect::Unpin(Pin::TempObject)]);
    assert_eq!(classify_full("UNLISTEN *").effects, vec![Effect::Unpin(Pin::Listen)]);
    assert!(classify_full("UNLISTEN jobs").effects.is_empty());
    assert_eq!(classify_full("SELECT pg_advisory_unlock_all()").effects, vec![Effect::Unpin(Pin::AdvisoryLock)]);
    assert_eq!(classify_full("CLOSE ALL").effects, vec![Effect::Unpin(Pin::HoldCursor)]);
    assert_eq!(classify_full("LISTEN a").effects, vec![Effect::Pin(Pin::Listen)]);
    assert_eq!(classify_full("SELECT currval('s')").effects, vec![Effect::Pin(Pin::Sequence)]);
    assert_eq!(classify_full("CREATE TEMPORARY TABLE x AS SELECT 1").effects, vec![Effect::Pin(Pin::TempObject)]);
    assert_eq!(
        classify_full("SELECT set_config('search_path', 'a, b', false)").effects,
        vec![Effect::Set {
            name: "search_path".into(),
            sql: "SELECT pg_catalog.set_config('search_path', 'a, b', false)".into()
        }]
    );
    assert!(classify_full("SELECT set_config('search_path', 'a', true)").effects.is_empty());
    assert_eq!(classify_full("SELECT set_config('x.y', current_user, false)").effects, vec![Effect::Pin(Pin::Other)]);
    // Transaction-scoped settings are not session state.
    assert!(classify_full("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").effects.is_empty());
    assert!(classify_full("SET transaction_read_only = on").effects.is_empty());
    assert_eq!(classify_full("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE").effects.len(), 1);
}

#[test]
fn sql_prepared_statements() {
    let c = classify_full("PREPARE q(int) AS SELECT * FROM t WHERE id = $1");
    assert!(c.effects.is_empty(), "a lone PREPARE does not pin");
    match c.sql_prepared {
        Some(SqlPrepared::Prepare { name, template, inner }) => {
            assert_eq!(name, "q");
            assert!(template.starts_with(&format!("PREPARE {STATEMENT_PLACEHOLDER}")), "{template}");
            assert!(inner.is_read());
        }
        other => panic!("{other:?}"),
    }
    match classify_full("PREPARE w AS INSERT INTO t VALUES (1)").sql_prepared {
        Some(SqlPrepared::Prepare { inner, .. }) => assert_eq!(inner.need, Need::Write),
        other => panic!("{other:?}"),
    }
    match classify_full("EXECUTE q(42)").sql_prepared {
        Some(SqlPrepared::Execute { name, template }) => {
            assert_eq!(name, "q");
            assert_eq!(template, format!("EXECUTE {STATEMENT_PLACEHOLDER}(42)"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(classify_full("DEALLOCATE q").sql_prepared, Some(SqlPrepared::Deallocate { name: "q".into() }));
    assert_eq!(classify_full("DEALLOCATE ALL").sql_prepared, None);
    // in a multi-statement string PREPARE pins the session instead
    let c = classify_full("PREPARE z AS SELECT 1; SELECT 2");
    assert_eq!(c.sql_prepared, None);
    assert_eq!(c.effects, vec![Effect::Pin(Pin::SqlPrepare)]);
}

#[test]
fn transactions() {
    let tx = |sql: &str| classify_full(sql).tx;
    assert_eq!(tx("BEGIN"), Some(TxControl::Begin { read_only: false, serializable: false }));
    assert_eq!(tx("BEGIN READ ONLY"), Some(TxControl::Begin { read_only: true, serializable: false }));
    assert_eq!(
        tx("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY"),
        Some(TxControl::Begin { read_only: true, serializable: true })
    );
    assert_eq!(tx("COMMIT"), Some(TxControl::End));
    assert_eq!(tx("END"), Some(TxControl::End));
    assert_eq!(tx("SELECT 1"), None);
}

#[test]
fn functions_and_relations() {
    let c = classify_full("SELECT my_fn(a), lower(b) FROM public.accounts a JOIN other o ON a.id = o.id");
    assert_eq!(c.functions, vec!["lower".to_string(), "my_fn".to_string()]);
    assert_eq!(c.relations, vec!["accounts".to_string(), "other".to_string()]);
    assert!(!c.catalog);
    assert!(classify_full("SELECT * FROM pg_catalog.pg_class").catalog);
    assert!(classify_full("SELECT * FROM information_schema.tables").catalog);
    // functions nested anywhere are found
    let c = classify_full("SELECT CASE WHEN x THEN f1() ELSE (SELECT f2() LIMIT f3()) END FROM t ORDER BY f4()");
    assert_eq!(c.functions, vec!["f1", "f2", "f3", "f4"]);
}

#[test]
fn hints() {
    assert_eq!(classify_full("/* pgsplit:primary */ SELECT 1").hint, Some(Hint::Primary));
    assert_eq!(classify_full("SELECT 1 /* pgsplit:replica */").hint, Some(Hint::Replica));
    assert_eq!(classify_full("SELECT 1 -- pgsplit:replica\n").hint, Some(Hint::Replica));
    assert_eq!(classify_full("SELECT 1").hint, None);
    assert_eq!(classify_full("/* pgsplit:replica */ SELEC").hint, Some(Hint::Replica));
}

/// The fast path either declines or agrees with the full classifier.
#[test]
fn fast_path_agrees_with_full_parse() {
    let corpus = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42;",
        "select * from accounts where id = $1",
        "SELECT a, b FROM t WHERE c = 'it''s' ORDER BY a DESC LIMIT 10",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * INTO x FROM t",
        "SELECT nextval('s')",
        "SELECT * FROM pg_class",
        "SELECT 1; DELETE FROM t",
        "SELECT /* pgsplit:primary */ 1",
        "SELECT 1 -- pgsplit:primary",
        "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);",
        "INSERT INTO t VALUES (currval('s'))",
        "DELETE FROM t WHERE a = 1",
        "UPDATE t SET a = 1; SELECT 1",
        "BEGIN;",
        "begin",
        "END;",
        "COMMIT",
        "ROLLBACK",
        "BEGIN READ ONLY",
        "SELECT E'\\x' FROM t",
        "SELECT \"weird name\" FROM t",
        "SELECT * FROM t UNION SELECT * FROM pg_temp.x",
        "SELECT x FROM t WHERE y IN (SELECT nextval('s'))",
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        "select*from t",
        "SELECT 'unterminated",
        "SELECT a FROM t WHERE b != 1 AND c >= 2 AND d <> 3",
        "SELECT a FROM t WHERE b=+1",
        "SELECT a FROM t WHERE b<-1",
        "SELECT a FROM t WHERE b ==> 1 AND c ~~* 'x'",
        "SELECT a FROM t WHERE b BETWEEN 1 AND 2 AND c LIKE 'x%'",
        "SELECT a FROM t ORDER BY a USING >",
        "SELECT a FROM t WHERE b NOT ILIKE 'x' AND c SIMILAR TO 'y'",
        "SELECT Größe FROM Tabellé WHERE ÄB = 1",
        "SELECT a FROM a_table_whose_name_is_exactly_sixty_three_bytes_long_xxxxxxxxxx",
        "SELECT a FROM a_table_whose_name_is_longer_than_sixty_three_bytes_long_xxxxxxxxxxxxx",
    ];
    for sql in corpus {
        let full = classify_full(sql);
        // the hot path's shared classes are the fast path's, for every text (the second time
        // from the per-thread shape cache)
        for _ in 0..2 {
            assert_eq!(classify_fast_shared(sql).as_deref(), classify_fast(sql).as_ref(), "{sql}");
        }
        if let Some(fast) = classify_fast(sql) {
            assert_eq!(fast.need, full.need, "{sql}");
            assert_eq!(fast.tx, full.tx, "{sql}");
            assert_eq!(fast.effects, full.effects, "{sql}");
            assert_eq!(fast.hint, full.hint, "{sql}");
            assert!(full.functions.is_empty(), "{sql}: fast path must not skip functions");
            if full.is_read() {
                for o in &full.operators {
                    assert!(fast.operators.contains(o), "{sql}: fast path lost operator {o}");
                }
                for r in &full.relations {
                    assert!(fast.relations.contains(r), "{sql}: fast path lost relation {r}");
                }
            }
        }
    }
    // and it does answer the hot shapes
    assert!(classify_fast("SELECT abalance FROM pgbench_accounts WHERE aid = 42;").is_some());
    assert!(classify_fast("UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7;").is_some());
    assert!(classify_fast(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);"
    )
    .is_some());
    assert!(classify_fast("BEGIN;").is_some());
    assert!(classify_fast("END;").is_some());
    // words are lower-cased (ASCII only, as PostgreSQL folds them) up to the 63 bytes an
    // identifier can have; a longer word is left to the parser, which truncates it
    let c = classify_fast("SELECT x FROM MyTable WHERE Größe = 1").unwrap();
    assert_eq!(c.relations, ["größe", "mytable", "x"]);
    let name63 = "t".repeat(63);
    assert_eq!(classify_fast(&format!("SELECT a FROM {name63}")).unwrap().relations, ["a", name63.as_str()]);
    assert!(classify_fast(&format!("SELECT a FROM {}", "t".repeat(64))).is_none());
}

#[test]
fn cache_returns_same_class() {
    let c = Classifier::new(4);
    let (a, s1) = c.classify_with_source("SELECT f(1)");
    let (b, s2) = c.classify_with_source("SELECT f(1)");
    assert_eq!(s1, cache::Source::Parse);
    assert_eq!(s2, cache::Source::Cache);
    assert_eq!(a, b);
    for i in 0..10 {
        c.classify(&format!("SELECT f({i})"));
    }
    assert_eq!(c.len(), 4, "cache is bounded");
}

mod policy_table {
    use super::*;
    use crate::config::{LoadBalance, Reads, RoutingConfig, RoutingSettings};
    use crate::replication::Catalog;
    use pgsplit_protocol::TxStatus;
    use policy::{Candidate, SessionView};

    fn cfg() -> RoutingSettings {
        RoutingSettings::validate(&RoutingConfig::default()).unwrap()
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        for (f, v) in
            [("lower", b's'), ("count", b'i'), ("my_volatile_fn", b'v'), ("my_stable_fn", b's'), ("random", b'v')]
        {
            c.functions.insert(f.into(), v);
        }
        c.unlogged.insert("scratch".into());
        c.volatile_operators.insert("==>".into());
        c
    }

    const IDLE: SessionView = SessionView {
        tx: TxStatus::Idle,
        pinned: false,
        attached: None,
        reads: Reads::Replicas,
        forces_primary: false,
        freshness: None,
        last_read: None,
    };
    const TWO: [Candidate; 2] = [Candidate { node: 1, load: 0, weight: 1 }, Candidate { node: 2, load: 0, weight: 1 }];

    fn decide(sql: &str, s: &SessionView, candidates: &[Candidate]) -> Route {
        route(&classify_full(sql), s, candidates, Some(&catalog()), &cfg(), 0)
    }

    #[test]
    fn table() {
        let in_tx = SessionView { tx: TxStatus::InTransaction, attached: Some(Target::Replica(2)), ..IDLE };
        let pinned = SessionView { pinned: true, ..IDLE };
        let prefers_primary = SessionView { reads: Reads::Primary, ..IDLE };
        let serializable = SessionView { forces_primary: true, ..IDLE };
        let just_wrote = SessionView { freshness: Some(Reason::ReadYourWrites), ..IDLE };
        for (sql, s, cands, target, reason) in [
            ("SELECT * FROM t", IDLE, &TWO[..], Target::Replica(1), Reason::Read),
            ("SELECT lower(a), count(*) FROM t GROUP BY 1", IDLE, &TWO[..], Target::Replica(1), Reason::Read),
            ("SELECT my_stable_fn()", IDLE, &TWO[..], Target::Replica(1), Reason::Read),
            ("SELECT random()", IDLE, &TWO[..], Target::Replica(1), Reason::Read),
            ("SELECT * FROM t", IDLE, &[], Target::Primary, Reason::NoReplica),
            ("INSERT INTO t VALUES (1)", IDLE, &TWO[..], Target::Primary, Reason::Needs(Need::Write)),
            ("SELECT my_volatile_fn()", IDLE, &TWO[..], Target::Primary, Reason::VolatileFunction),
            ("SELECT no_such_fn()", IDLE, &TWO[..], Target::Primary, Reason::UnknownFunction),
            ("SELECT a ==> b FROM t", IDLE, &TWO[..], Target::Primary, Reason::VolatileFunction),
            ("SELECT * FROM t ORDER BY a USING ==>", IDLE, &TWO[..], Target::Primary, Reason::VolatileFunction),
            ("SELECT 1 WHERE 2 ==> ANY (SELECT 3)", IDLE, &TWO[..], Target::Primary, Reason::VolatileFunction),
            ("SELECT a OPERATOR(public.==>) b FROM t", IDLE, &TWO[..], Target::Primary, Reason::VolatileFunction),
            ("SELECT a = b, a @@ b FROM t", IDLE, &TWO[..], Target::Replica(1), Reason::Read),
            ("SELECT * FROM scratch", IDLE, &TWO[..], Target::Primary, Reason::UnloggedTable),
            ("SELECT * FROM pg_class", IDLE, &TWO[..], Target::Primary, Reason::Catalog),
            ("SELECT 1 /* pgsplit:primary */", IDLE, &TWO[..], Target::Primary, Reason::HintPrimary),
            ("/* pgsplit:replica */ SELECT 1", prefers_primary, &TWO[..], Target::Replica(1), Reason::HintReplica),
            (
                "/* pgsplit:replica */ INSERT INTO t VALUES (1)",
                IDLE,
                &TWO[..],
                Target::Primary,
                Reason::Needs(Need::Write),
            ),
            (
                "/* pgsplit:replica */ SELECT nextval('s')",
                IDLE,
                &TWO[..],
                Target::Primary,
                Reason::Needs(Need::SideEffectFunction),
            ),
            ("SELECT 1", prefers_primary, &TWO[..], Target::Primary, Reason::Preference),
            ("SELECT 1", in_tx, &TWO[..], Target::Replica(2), Reason::InTransaction),
            ("SELECT 1", pinned, &TWO[..], Target::Primary, Reason::Pinned),
            ("SELECT 1", serializable, &TWO[..], Target::Primary, Reason::SessionSettings),
            ("SELECT 1", just_wrote, &TWO[..], Target::Primary, Reason::ReadYourWrites),
            ("INSERT INTO t VALUES (1)", just_wrote, &TWO[..], Target::Primary, Reason::Needs(Need::Write)),
            ("SELECT 1", just_wrote, &TWO[..], Target::Primary, Reason::ReadYourWrites),
            ("INSERT INTO t VALUES (1)", just_wrote, &TWO[..], Target::Primary, Reason::Needs(Need::Write)),
            ("BEGIN READ ONLY", IDLE, &TWO[..], Target::Replica(1), Reason::ReadOnlyTransaction),
            ("BEGIN", IDLE, &TWO[..], Target::Primary, Reason::Needs(Need::TxControl)),
            (
                "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
                IDLE,
                &TWO[..],
                Target::Primary,
                Reason::Needs(Need::TxControl),
            ),
            ("SELEC 1", IDLE, &TWO[..], Target::Primary, Reason::Needs(Need::ParseError)),
        ] {
            let r = decide(sql, &s, cands);
            assert_eq!((r.target, r.reason), (target, reason), "{sql}");
        }
        // without the catalog, anything that needs it waits on the primary
        for sql in ["SELECT lower('A')", "SELECT 1 + 1"] {
            let r = route(&classify_full(sql), &IDLE, &TWO, None, &cfg(), 0);
            assert_eq!(r.reason, Reason::CatalogNotLoaded, "{sql}");
        }
        // the fast path sees the operators the parser sees
        let fast = classify_fast("SELECT a FROM t WHERE b ==> 1").unwrap();
        assert_eq!(fast.operators, ["==>"]);
        let r = route(&fast, &IDLE, &TWO, Some(&catalog()), &cfg(), 0);
        assert_eq!(r.reason, Reason::VolatileFunction);
        // primary_functions forces a function to the primary
        let c = RoutingConfig { primary_functions: vec!["my_stable_fn".into()], ..Default::default() };
        let r = route(
            &classify_full("SELECT my_stable_fn()"),
            &IDLE,
            &TWO,
            Some(&catalog()),
            &RoutingSettings::validate(&c).unwrap(),
            0,
        );
        assert_eq!(r.reason, Reason::PrimaryFunction);
        // catalog reads may be allowed on replicas
        let c = RoutingConfig { catalog_reads: "replicas".into(), ..Default::default() };
        let r = route(
            &classify_full("SELECT relname FROM pg_class"),
            &IDLE,
            &TWO,
            Some(&catalog()),
            &RoutingSettings::validate(&c).unwrap(),
            0,
        );
        assert_eq!(r.target, Target::Replica(1));
    }

    #[test]
    fn balancing() {
        let cands = [
            Candidate { node: 1, load: 3, weight: 1 },
            Candidate { node: 2, load: 1, weight: 1 },
            Candidate { node: 3, load: 1, weight: 3 },
        ];
        let picks: Vec<usize> =
            (0..4).map(|rr| policy::choose(&cands, LoadBalance::LeastOutstanding, rr, None).unwrap()).collect();
        assert_eq!(picks, [2, 3, 2, 3], "least loaded, ties rotate");
        let picks: Vec<usize> =
            (0..4).map(|rr| policy::choose(&cands, LoadBalance::LeastOutstanding, rr, Some(3)).unwrap()).collect();
        assert_eq!(picks, [3, 3, 3, 3], "ties go to the node the session read from last");
        let picks: Vec<usize> =
            (0..4).map(|rr| policy::choose(&cands, LoadBalance::LeastOutstanding, rr, Some(1)).unwrap()).collect();
        assert_eq!(picks, [2, 3, 2, 3], "but never to a busier one");
        let picks: Vec<usize> =
            (0..3).map(|rr| policy::choose(&cands, LoadBalance::RoundRobin, rr, Some(3)).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3]);
        let mut counts = [0usize; 4];
        for rr in 0..10_000 {
            counts[policy::choose(&cands, LoadBalance::Weighted, rr, None).unwrap()] += 1;
        }
        assert!(counts[3] > counts[1] * 2 && counts[3] > counts[2] * 2, "{counts:?}");
        assert!(counts[1] > 1000 && counts[2] > 1000, "{counts:?}");
        assert_eq!(policy::choose(&[], LoadBalance::RoundRobin, 0, None), None);
    }

    #[test]
    fn read_rules_by_user_database_application() {
        let c = RoutingConfig {
            rules: vec![
                crate::config::RuleConfig {
                    application_name: "reports".into(),
                    reads: "replicas".into(),
                    ..Default::default()
                },
                crate::config::RuleConfig { user: "billing".into(), reads: "primary".into(), ..Default::default() },
                crate::config::RuleConfig { database: "ledger".into(), reads: "primary".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let r = RoutingSettings::validate(&c).unwrap();
        assert_eq!(r.reads_for("billing", "app", "reports"), Reads::Replicas);
        assert_eq!(r.reads_for("billing", "app", "psql"), Reads::Primary);
        assert_eq!(r.reads_for("app", "ledger", ""), Reads::Primary);
        assert_eq!(r.reads_for("app", "app", ""), Reads::Replicas);
    }
}

#[test]
fn fast_path_shapes_share_a_class() {
    let shared = |sql: &str| classify_fast_shared(sql).unwrap_or_else(|| panic!("{sql}: no fast path"));
    // only literals differ: one class
    let a = shared("SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
    let b = shared("select abalance from PGBENCH_ACCOUNTS where aid = 99999");
    assert!(Arc::ptr_eq(&a, &b));
    assert!(Arc::ptr_eq(&a, &shared("SELECT abalance FROM pgbench_accounts WHERE aid = 'x'")));
    // another relation, another operator, or an operator from a keyword: another class
    for other in [
        "SELECT abalance FROM pgbench_branches WHERE aid = 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid < 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid LIKE 'x'",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1 AND bid = 2",
    ] {
        let c = shared(other);
        assert!(!Arc::ptr_eq(&a, &c), "{other}");
        assert_eq!(*c, classify_fast(other).unwrap(), "{other}");
    }
    // a shape too long to keep is still classified
    let long = format!("SELECT {} FROM t", vec!["some_column_name"; 40].join(", "));
    assert!(long.len() > 256);
    assert_eq!(classify_fast_shared(&long).as_deref(), classify_fast(&long).as_ref());
    // fast-path writes share one class; what the fast path leaves alone stays left
    let w = shared("UPDATE t SET a = 1 WHERE id = 2");
    assert!(Arc::ptr_eq(&w, &shared("INSERT INTO t VALUES (1)")));
    assert_eq!(w.need, Need::Write);
    assert!(Arc::ptr_eq(&shared("BEGIN"), &shared("begin;")));
    assert!(Arc::ptr_eq(&shared("COMMIT"), &shared("end")));
    assert_eq!(shared("BEGIN").need, Need::TxControl);
    assert!(shared("ROLLBACK").tx.is_some());
    assert!(classify_fast_shared("SELECT * FROM t FOR UPDATE").is_none());
    assert!(classify_fast_shared("SELECT nextval('s')").is_none());
}
