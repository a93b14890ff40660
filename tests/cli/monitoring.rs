//! deploy/grafana-dashboard.json and deploy/alerts.yml cannot rot: both are parsed (JSON with
//! serde_json, the Prometheus rule file with yaml-rust2), their shape is checked (panels with
//! queries; rule groups whose rules have a name, an expression, a severity and a summary),
//! and every `ringlog_*` / `process_*` metric named in their PromQL must be one the node
//! exports (`SERIES`; counters with `_total`, histograms as `_bucket`, `_sum`, `_count`).

use std::collections::BTreeSet;
use std::path::Path;

use ringlog_node::metrics::{SeriesKind, SERIES};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every metric name a PromQL query may use for the node's series.
fn exported_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for series in SERIES {
        let exposed = series.exposed_name();
        match series.kind() {
            SeriesKind::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{exposed}{suffix}"));
                }
            }
            SeriesKind::Counter | SeriesKind::Gauge => {
                names.insert(exposed);
            }
        }
    }
    names
}

/// The `ringlog_*` and `process_*` identifiers of a PromQL expression (quoted label values
/// and `{{ template }}` text are skipped).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("ringlog_") || word.starts_with("process_") {
            names.insert(word.clone());
        }
        word.clear();
        if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
        }
    }
    names
}

/// Every `expr` of the dashboard's panels (rows' nested panels included), with the panel
/// title.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = stack.pop() {
        let title = panel["title"].as_str().expect("every panel has a title").to_string();
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: expr"));
            queries.push((title.clone(), expr.to_string()));
        }
    }
    queries
}

/// `(alert name, expr)` of every rule, checking each has a severity and a summary.
fn alert_rules(rules: &Yaml) -> Vec<(String, String)> {
    let groups = rules["groups"].as_vec().expect("a `groups` list");
    assert!(!groups.is_empty(), "no rule group");
    let mut out = Vec::new();
    for group in groups {
        assert!(group["name"].as_str().is_some(), "a group without a name");
        for rule in group["rules"].as_vec().expect("a group's `rules` list") {
            let name = rule["alert"].as_str().expect("every rule is an alert with a name");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{name}: expr"));
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning")),
                "{name}: severity {severity:?}"
            );
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}: no summary");
            if let Some(wait) = rule["for"].as_str() {
                assert!(wait.ends_with('s') || wait.ends_with('m'), "{name}: for {wait}");
            }
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

fn assert_all_exported(file: &str, what: &str, expr: &str, exported: &BTreeSet<String>) {
    for name in metric_names(expr) {
        assert!(
            exported.contains(&name),
            "{file}: {what} names `{name}`, which the node does not export: {expr}"
        );
    }
}

#[test]
fn metric_names_are_found_in_promql_outside_quotes() {
    let expr = "histogram_quantile(0.99, sum by (le) (rate(ringlog_produce_duration_seconds_bucket\
                {kind=\"ringlog_not_a_metric\"}[5m]))) / process_max_fds";
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["process_max_fds", "ringlog_produce_duration_seconds_bucket"]);
    let exported = exported_names();
    assert!(exported.contains("ringlog_appends_total"));
    assert!(exported.contains("ringlog_peer_rtt_seconds_count"));
    assert!(exported.contains("process_cpu_seconds_total"));
    assert!(!exported.contains("ringlog_appends"), "counters are queried with _total");
    assert!(!exported.contains("ringlog_peer_rtt_seconds"), "histograms have no bare series");
}

#[test]
fn dashboard_is_valid_json_with_panels_whose_queries_name_exported_metrics() {
    let text = deploy_file("grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    assert!(dashboard["uid"].as_str().is_some());
    let exported = exported_names();
    let queries = dashboard_queries(&dashboard);
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        assert_all_exported("grafana-dashboard.json", &format!("panel {title:?}"), expr, &exported);
        used.extend(metric_names(expr));
    }
    // The panels the issue asks for: throughput, produce/fetch/commit latency quantiles,
    // peer round trips, leaders per node, damaged partitions, log size, CPU, memory.
    for wanted in [
        "ringlog_append_records_total",
        "ringlog_produce_duration_seconds_bucket",
        "ringlog_fetch_duration_seconds_bucket",
        "ringlog_commit_duration_seconds_bucket",
        "ringlog_peer_rtt_seconds_bucket",
        "ringlog_partition_role",
        "ringlog_partition_damaged",
        "ringlog_partition_log_size_bytes",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(wanted), "the dashboard has no panel on {wanted}");
    }
    let quantiles = queries.iter().filter(|(_, e)| e.contains("histogram_quantile(")).count();
    assert!(quantiles >= 4, "latency panels use histogram_quantile ({quantiles} queries do)");
}

#[test]
fn alert_rules_parse_and_name_only_exported_metrics() {
    let text = deploy_file("alerts.yml");
    let documents = YamlLoader::load_from_str(&text).expect("valid YAML");
    assert_eq!(documents.len(), 1, "one YAML document");
    let rules = alert_rules(&documents[0]);
    let exported = exported_names();
    let mut used = BTreeSet::new();
    for (name, expr) in &rules {
        assert_all_exported("alerts.yml", &format!("alert {name}"), expr, &exported);
        used.extend(metric_names(expr));
    }
    let names: BTreeSet<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names.len(), rules.len(), "alert names are unique");
    for wanted in [
        "RinglogNodeDown",
        "RinglogPartitionWithoutLeader",
        "RinglogPartitionDamaged",
        "RinglogFollowerStuck",
        "RinglogHighProduceLatency",
        "RinglogStorageFull",
        "RinglogDiskNearlyFull",
        "RinglogHighMemory",
    ] {
        assert!(names.contains(wanted), "alerts.yml lacks {wanted}");
    }
    for wanted in [
        "ringlog_partition_role",
        "ringlog_partition_damaged",
        "ringlog_follower_stuck",
        "ringlog_produce_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "ringlog_data_dir_available_bytes",
    ] {
        assert!(used.contains(wanted), "no alert on {wanted}");
    }
}
