//! The Docker deployment, checked without Docker: docker-compose.yml is valid against the
//! Compose specification's schema and refers to files that exist, Prometheus scrapes pgsplit,
//! and every metric the Grafana dashboard queries is one a running pgsplit exports.

mod common;

use std::collections::BTreeSet;

use common::*;

fn compose() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    // YAML merge keys (`<<: *anchor`) are resolved as Compose does.
    let mut yaml = yaml;
    yaml.apply_merge().unwrap();
    serde_json::to_value(yaml).unwrap()
}

fn schema() -> serde_json::Value {
    let ours = repo().join("tests/data/compose-spec.json");
    let shared = repo().join("../shared/schemas/compose-spec.json");
    let text = std::fs::read_to_string(&ours).unwrap();
    if let Ok(upstream) = std::fs::read_to_string(&shared) {
        assert_eq!(text, upstream, "tests/data/compose-spec.json is a copy of ../shared/schemas/compose-spec.json");
    }
    serde_json::from_str(&text).unwrap()
}

#[test]
fn compose_file_is_valid_against_the_compose_spec() {
    let doc = compose();
    let mut schema = schema();
    // The spec names draft 07 as "https://json-schema.org/draft-07/schema"; validators know it
    // by its canonical id.
    schema["$schema"] = serde_json::json!("http://json-schema.org/draft-07/schema#");
    let validator =
        jsonschema::options().with_draft(jsonschema::Draft::Draft7).build(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "docker-compose.yml violates the Compose spec:\n{}", errors.join("\n"));
    // A broken file is caught (the check can fail).
    let mut broken = doc.clone();
    broken["services"]["pgsplit"]["ports"] = serde_json::json!("6432");
    assert!(!validator.is_valid(&broken));

    let services = doc["services"].as_object().unwrap();
    for s in ["primary", "replica1", "replica2", "pgsplit", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "service {s}");
    }
    assert_eq!(doc["services"]["pgsplit"]["build"]["dockerfile"], "Dockerfile");
    assert!(repo().join("Dockerfile").exists());
    // every bind-mounted file exists in the repository
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            if let Some(src) = v.as_str().and_then(|v| v.split(':').next()).filter(|s| s.starts_with("./")) {
                assert!(repo().join(src).exists(), "{name} mounts {src}, which does not exist");
            }
        }
    }
    // replicas start from pg_basebackup; pgsplit points at all three
    let entry = std::fs::read_to_string(repo().join("deploy/postgres/replica-entrypoint.sh")).unwrap();
    assert!(entry.contains("pg_basebackup"));
    let cmd: Vec<&str> =
        doc["services"]["pgsplit"]["command"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    for host in ["@primary:5432", "@replica1:5432", "@replica2:5432"] {
        assert!(cmd.iter().any(|a| a.contains(host)), "pgsplit is given {host}");
    }
    let prom = std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).unwrap();
    assert!(prom.contains("pgsplit:9930"), "Prometheus scrapes pgsplit's admin port");
}

/// Metric names in the Grafana dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/dashboards/pgsplit.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" {
                        out.extend(v.as_str().map(str::to_owned));
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has queries");
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("pgsplit_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_queries_name_metrics_pgsplit_exports() {
    let p = Proxy::default().await;
    p.wait_routable().await;
    // traffic that makes every kind of metric appear
    let c = pg(&p.app_url()).await;
    c.batch_execute("SELECT 1; BEGIN; SELECT 1; COMMIT").await.unwrap();
    let _ = c.batch_execute("SELECT * FROM no_such_table").await;
    c.batch_execute("LISTEN deploy_test").await.unwrap();
    let text = scrape(&p).await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    for name in dashboard_metrics() {
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        // metrics that only appear once something happens (a retry) are checked by name
        let known = pgsplit::metrics::ALL.contains(&base);
        assert!(known, "the dashboard queries {name}, which pgsplit does not define");
        if base != pgsplit::metrics::READS_RETRIED_TOTAL {
            assert!(exported.contains(base), "the dashboard queries {name}, which pgsplit did not export:\n{text}");
        }
    }
    p.stop().await;
}
