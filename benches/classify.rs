//! Cost of classifying a statement: cache hit, lexical fast path, full parse.
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pgsplit::router::fast::classify_fast;
use pgsplit::router::{classify_full, Classifier};

const FAST: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
const CACHED: &str =
    "SELECT a.id, lower(a.name) FROM accounts a JOIN orders o ON o.account_id = a.id WHERE o.total > $1";
const PARSED: &str = "WITH recent AS (SELECT account_id, sum(total) AS s FROM orders WHERE created > now() - interval '1 day' GROUP BY 1) \
                      SELECT a.id, a.name, r.s FROM accounts a JOIN recent r ON r.account_id = a.id WHERE r.s > 100 ORDER BY r.s DESC LIMIT 20";

fn bench(c: &mut Criterion) {
    let classifier = Classifier::new(10_000);
    classifier.classify(CACHED);
    let mut g = c.benchmark_group("classify");
    g.bench_function("cache_hit", |b| b.iter(|| classifier.classify(black_box(CACHED))));
    g.bench_function("fast_path", |b| b.iter(|| classify_fast(black_box(FAST))));
    g.bench_function("full_parse", |b| b.iter(|| classify_full(black_box(PARSED))));
    g.bench_function("full_parse_pgbench_select", |b| b.iter(|| classify_full(black_box(FAST))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
