//! The dashboard and the alerting rules platform teams install (`deploy/monitoring/`, the chart's
//! `monitoring.*` values), checked against the tools that consume them and against the metrics a
//! real operator serves:
//!
//! - promtool checks the rules and runs their unit tests (`gpupool-alerts.test.yaml`), and every
//!   alert has a case where it fires and one where it must not;
//! - every metric and label the dashboard and the rules query is on the `/metrics` of an operator
//!   driven through a scenario on the real control plane (a renamed metric or label fails here),
//!   and the rules, fed that very scrape, fire exactly the alerts the scenario calls for;
//! - the dashboard is provisioning-ready; the chart and kustomize ship the canonical files, and
//!   the API server (with the prometheus-operator CRDs installed) accepts what they render.
//!
//! Needs promtool, helm and the prometheus-operator CRDs: `hack/build-tools.sh` builds and
//! fetches them from Go modules on first use, or set `GPUPOOL_TOOLS_BIN`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::tools::{helm, path_str, read, repo, run, run_with_stdin, tools_bin, yaml_docs};
use support::{PoolYaml, TIMEOUT, create_pool, env_with, operator_log, patch_pool, wait_condition};
use testenv::nodes::{GpuNode, create_node, set_gpus};
use testenv::simulate::{PluginGpus, SIMULATE_VALIDATION_LABEL, ValidationPods};
use testenv::{ControlPlane, free_port, wait_for};
use tokio::sync::OnceCell;

const RULES: &str = "deploy/monitoring/gpupool-alerts.rules.yaml";
const RULE_TESTS: &str = "deploy/monitoring/gpupool-alerts.test.yaml";
const DASHBOARD: &str = "deploy/monitoring/gpupool-dashboard.json";
const PROMETHEUS_RULE: &str = "deploy/monitoring/prometheusrule.yaml";
const CHART_RULES: &str = "charts/gpupool-operator/monitoring/gpupool-alerts.rules.yaml";
const CHART_DASHBOARD: &str = "charts/gpupool-operator/monitoring/gpupool-dashboard.json";
/// Where every alert's runbook_url points: a heading of the README's Monitoring section.
const RUNBOOK_BASE: &str = "https://github.com/gpupool/gpupool/blob/main/README.md#";
/// The scrape job the rules select the operator by (the chart's ServiceMonitor and
/// deploy/monitoring's PodMonitor both name it so).
const JOB: &str = "gpupool-operator";
/// Labels Prometheus attaches to every series of a target when it scrapes: never on `/metrics`.
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// Series Prometheus writes itself for each target (not on `/metrics` either).
const SCRAPE_SERIES: &[&str] = &["up"];

// ---------------------------------------------------------------------------------------------
// Alerting rules
// ---------------------------------------------------------------------------------------------

/// Each alerting rule of the rules file: (group, rule).
fn alert_rules(rules: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if rule.get("alert").is_some() {
                out.push((group["name"].as_str().unwrap().to_string(), rule.clone()));
            }
        }
    }
    out
}

fn rules_file() -> Value {
    yaml_docs(&read(&repo(RULES))).remove(0)
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tools_bin().join("promtool");
    let checked =
        run(std::process::Command::new(&promtool).args(["check", "rules", &path_str(RULES)]));
    assert!(checked.contains("SUCCESS"), "{checked}");
    // rule_files in the test file are relative to it.
    let tested =
        run(std::process::Command::new(&promtool).args(["test", "rules", &path_str(RULE_TESTS)]));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is tested both ways: a case where it fires and one where it stays silent.
    let tests = yaml_docs(&read(&repo(RULE_TESTS))).remove(0);
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for test in tests["tests"].as_array().unwrap() {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_string();
            match case["exp_alerts"].as_array().map(Vec::len) {
                Some(n) if n > 0 => fires.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    for (_, rule) in alert_rules(&rules_file()) {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            fires.contains(name),
            "{RULE_TESTS} has no case where {name} fires"
        );
        assert!(
            silent.contains(name),
            "{RULE_TESTS} has no case where {name} stays silent"
        );
    }
}

#[test]
fn every_alert_says_what_to_run_next_and_has_a_runbook_entry() {
    let readme = read(&repo("README.md"));
    let rules = alert_rules(&rules_file());
    assert!(rules.len() >= 8, "{rules:?}");
    for (group, rule) in &rules {
        let name = rule["alert"].as_str().unwrap();
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        assert!(rule["for"].is_string(), "{name} fires at once: no `for`");
        let annotations = &rule["annotations"];
        let summary = annotations["summary"].as_str().unwrap_or_default();
        let description = annotations["description"].as_str().unwrap_or_default();
        assert!(!summary.is_empty(), "{name}: no summary");
        assert!(
            description.contains("`kubectl "),
            "{name}: the description must give the kubectl command to run next: {description}"
        );
        if group == "gpupool.pools" {
            for text in [summary, description] {
                assert!(
                    text.contains("{{ $labels.pool }}"),
                    "{name} must name the pool: {text}"
                );
            }
        }
        // GitHub's anchor of a heading that is just the alert's name is its name in lower case.
        assert_eq!(
            annotations["runbook_url"].as_str(),
            Some(format!("{RUNBOOK_BASE}{}", name.to_lowercase()).as_str()),
            "{name}: runbook_url"
        );
        assert_eq!(
            readme.matches(&format!("\n#### {name}\n")).count(),
            1,
            "README.md needs exactly one runbook heading `#### {name}`"
        );
    }
}

#[test]
fn the_chart_and_kustomize_ship_the_canonical_files() {
    for (copy, canonical) in [(CHART_RULES, RULES), (CHART_DASHBOARD, DASHBOARD)] {
        assert!(
            read(&repo(copy)) == read(&repo(canonical)),
            "{copy} differs from {canonical}: run `cp {canonical} {copy}` and commit it"
        );
    }
    let rule = yaml_docs(&read(&repo(PROMETHEUS_RULE))).remove(0);
    assert_eq!(rule["kind"], "PrometheusRule");
    assert!(
        rule["spec"] == rules_file(),
        "{PROMETHEUS_RULE}'s spec differs from {RULES}: regenerate it with\n  \
         {{ sed -n '1,/^spec:$/p' {PROMETHEUS_RULE}; sed '/^#/d; /^$/d; s/^/  /' {RULES}; }} > x && mv x {PROMETHEUS_RULE}"
    );
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read(&repo(DASHBOARD))).expect("the dashboard is JSON")
}

/// Every panel, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel.clone());
        for inner in panel["panels"].as_array().into_iter().flatten() {
            out.push(inner.clone());
        }
    }
    out
}

/// The datasource every query of the dashboard goes to: the `datasource` template variable.
fn datasource_variable() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

#[test]
fn the_dashboard_is_provisioning_ready() {
    let d = dashboard();
    let text = read(&repo(DASHBOARD));
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    // 36: datasources referenced by {type, uid} (Grafana 9); older schemas are migrated on load.
    assert!(schema >= 36, "schemaVersion {schema} is too old");
    assert!(
        d["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    // Grafana's import placeholders (__inputs, ${DS_...}) are only resolved by the import dialog:
    // a provisioned dashboard must not have them.
    assert!(
        d.get("__inputs").is_none() && !text.contains("${DS_"),
        "import placeholders"
    );
    assert!(
        d["id"].is_null(),
        "a provisioned dashboard has no database id"
    );

    let variables = d["templating"]["list"].as_array().expect("templating");
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let pool = variables
        .iter()
        .find(|v| v["name"] == "pool")
        .expect("a pool variable");
    assert_eq!(pool["type"], "query");
    assert_eq!(pool["datasource"], datasource_variable());
    assert!(variable_query(pool).starts_with("label_values("), "{pool}");

    let mut ids = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: gridPos {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(!title.is_empty(), "panel {id} has no title");
        assert_eq!(
            panel["datasource"],
            datasource_variable(),
            "{title}: the datasource must be the variable"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{title}: a target without expr: {target}"
            );
            assert!(
                refs.insert(target["refId"].to_string()),
                "{title}: refIds repeat"
            );
            if let Some(ds) = target.get("datasource") {
                assert_eq!(*ds, datasource_variable(), "{title}: a target's datasource");
            }
        }
    }
    assert!(ids.len() >= 20, "{} panels", ids.len());
}

fn variable_query(variable: &Value) -> String {
    match &variable["query"] {
        Value::String(q) => q.clone(),
        q => q["query"].as_str().unwrap_or_default().to_string(),
    }
}

/// Every query of the dashboard: (where, PromQL) with Grafana's variables still in.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for panel in panels(&d) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {} {}", panel["title"], target["refId"]),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// The dashboard's legends: (where, legendFormat, the query).
fn dashboard_legends() -> Vec<(String, String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for panel in panels(&d) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(legend) = target["legendFormat"].as_str() {
                out.push((
                    format!("panel {} {}", panel["title"], target["refId"]),
                    legend.to_string(),
                    target["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Helm and kustomize
// ---------------------------------------------------------------------------------------------

const MONITORING_VALUES: &str = r#"
nameOverride: gpuop
operator:
  pluginNamespace: gpu-plugins
  leaderElection:
    leaseName: gpuop-leader
metrics:
  serviceMonitor:
    enabled: true
monitoring:
  dashboard:
    enabled: true
    namespace: grafana
    labels:
      grafana_dashboard: "yes"
    annotations:
      grafana_folder: GPU
  prometheusRule:
    enabled: true
    labels:
      release: kube-prometheus-stack
"#;

fn chart_template(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    yaml_docs(&run(helm()
        .args([
            "template",
            release,
            &path_str("charts/gpupool-operator"),
            "--namespace",
            namespace,
        ])
        .args(args)))
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected among the manifests");
    found[0]
}

/// The job the rules select the operator by: GpuPoolOperatorDown's `job="..."`.
fn rules_job(rules: &Value) -> String {
    let down = alert_rules(rules)
        .into_iter()
        .find(|(_, r)| r["alert"] == "GpuPoolOperatorDown")
        .expect("GpuPoolOperatorDown")
        .1;
    let expr = down["expr"].as_str().unwrap();
    let start = expr.find("job=\"").expect("a job matcher") + 5;
    expr[start..start + expr[start..].find('"').unwrap()].to_string()
}

/// `promtool check rules` on a rules document (e.g. a PrometheusRule's spec).
fn promtool_check(rules: &Value) {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), yaml_serde::to_string(rules).unwrap()).unwrap();
    let out = run(
        std::process::Command::new(tools_bin().join("promtool")).args([
            "check",
            "rules",
            file.path().to_str().unwrap(),
        ]),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The prometheus-operator CRDs on the shared plane, once per test binary.
async fn monitoring_crds(plane: &ControlPlane) {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let dir = tools_bin().join("prometheus-operator-crds");
            run(plane
                .kubectl()
                .args(["apply", "--server-side", "-f"])
                .arg(&dir));
            run(plane.kubectl().args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/prometheusrules.monitoring.coreos.com",
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/podmonitors.monitoring.coreos.com",
            ]));
        })
        .await;
}

async fn ensure_namespace(c: &Client, name: &str) {
    let body: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &body)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

/// `kubectl apply --dry-run=server` of `docs`: admission, the CRDs' schemas, strict field
/// validation (an unknown field is an error).
fn server_dry_run(plane: &ControlPlane, docs: &[&Value]) {
    // As JSON: a YAML round trip could turn a label value like "yes" into a boolean.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let out = run_with_stdin(
        plane
            .kubectl()
            .args(["apply", "--dry-run=server", "--validate=strict", "-f", "-"]),
        &list.to_string(),
    );
    assert_eq!(
        out.matches("(server dry run)").count(),
        docs.len(),
        "every object accepted: {out}"
    );
}

#[tokio::test]
async fn the_chart_installs_the_dashboard_and_the_rules_when_asked() {
    let chart = path_str("charts/gpupool-operator");
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(values.path(), MONITORING_VALUES).unwrap();
    let values = values.path().to_str().unwrap().to_string();
    run(helm().args(["lint", "--strict", &chart, "-f", &values]));

    // Off by default.
    let defaults = chart_template("gpupool-operator", "gpupool-system", &[]);
    assert!(
        !defaults
            .iter()
            .any(|d| d["kind"] == "PrometheusRule" || d["kind"] == "ConfigMap"),
        "monitoring objects are off by default"
    );

    // The default install's names: the rules as shipped, the dashboard byte for byte.
    let on = [
        "--set",
        "monitoring.dashboard.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ];
    let docs = chart_template("gpupool-operator", "gpupool-system", &on);
    let rule = find(&docs, "PrometheusRule");
    assert!(
        rule["spec"] == rules_file(),
        "the chart's PrometheusRule is {RULES}"
    );
    let dashboard = find(&docs, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(dashboard["metadata"]["namespace"], "gpupool-system");
    assert!(
        dashboard["data"]["gpupool-dashboard.json"].as_str()
            == Some(read(&repo(DASHBOARD)).as_str()),
        "the ConfigMap holds {DASHBOARD}"
    );
    // The scrape job the rules expect is the one the ServiceMonitor produces.
    let monitor = find(&docs, "ServiceMonitor");
    let service = find(&docs, "Service");
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(service["metadata"]["labels"][job_label], json!(JOB));
    assert_eq!(rules_job(&rules_file()), JOB);

    // Other names: the rules follow the release (job, namespaces, Lease), nothing else changes.
    let custom = chart_template("team-gpu", "platform-gpu", &["-f", &values]);
    let rule = find(&custom, "PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let expected_text = read(&repo(RULES))
        .replace("job=\"gpupool-operator\"", "job=\"gpuop\"")
        .replace(
            "app.kubernetes.io/name=gpupool-operator",
            "app.kubernetes.io/name=gpuop",
        )
        .replace("get lease gpupool-operator ", "get lease gpuop-leader ")
        .replace("-n gpupool-system ", "-n platform-gpu ")
        .replace("-n gpu-resources ", "-n gpu-plugins ");
    assert!(
        rule["spec"] == yaml_docs(&expected_text).remove(0),
        "the chart's rules are {RULES} pointed at the release"
    );
    let rendered = serde_json::to_string(&rule["spec"]).unwrap();
    for default in [
        "gpupool-system",
        "gpu-resources",
        "job=\\\"gpupool-operator\\\"",
        "name=gpupool-operator",
        "lease gpupool-operator",
    ] {
        assert!(
            !rendered.contains(default),
            "{default} left in the rules of a release that does not use it (a line break in \
             the middle of a command in {RULES}?)"
        );
    }
    promtool_check(&rule["spec"]);
    let monitor = find(&custom, "ServiceMonitor");
    let service = find(&custom, "Service");
    assert_eq!(
        service["metadata"]["labels"][monitor["spec"]["jobLabel"].as_str().unwrap()],
        json!(rules_job(&rule["spec"]))
    );
    let dashboard = find(&custom, "ConfigMap");
    assert_eq!(dashboard["metadata"]["namespace"], "grafana");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "yes");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "GPU"
    );

    // The API server, with prometheus-operator's CRDs, accepts all three.
    let plane = ControlPlane::shared().await;
    let c = plane.client().await;
    monitoring_crds(plane).await;
    for ns in ["platform-gpu", "grafana"] {
        ensure_namespace(&c, ns).await;
    }
    server_dry_run(plane, &[rule, monitor, dashboard]);
}

#[tokio::test]
async fn kustomize_installs_the_dashboard_the_rules_and_the_scrape() {
    let plane = ControlPlane::shared().await;
    let docs = yaml_docs(&run(plane
        .kubectl()
        .args(["kustomize", &path_str("deploy/monitoring")])));
    assert_eq!(docs.len(), 3, "{docs:?}");
    let rule = find(&docs, "PrometheusRule");
    assert!(
        rule["spec"] == rules_file(),
        "deploy/monitoring's PrometheusRule is {RULES}"
    );
    let dashboard = find(&docs, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert!(
        dashboard["data"]["gpupool-dashboard.json"].as_str()
            == Some(read(&repo(DASHBOARD)).as_str()),
        "the ConfigMap holds {DASHBOARD}"
    );

    // The PodMonitor scrapes deploy/'s operator pods, on their http port, as the rules' job.
    let monitor = find(&docs, "PodMonitor");
    let deployment = yaml_docs(&read(&repo("deploy/deployment.yaml"))).remove(0);
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        monitor["metadata"]["namespace"],
        deployment["metadata"]["namespace"]
    );
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod["metadata"]["labels"][key], value, "selector {key}");
    }
    let job_label = monitor["spec"]["jobLabel"].as_str().expect("jobLabel");
    assert_eq!(
        pod["metadata"]["labels"][job_label],
        json!(rules_job(&rules_file()))
    );
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = endpoint["port"].as_str().unwrap();
    let container = &pod["spec"]["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the operator container has no port {port}"
    );
    assert!(
        container["args"].as_array().unwrap().iter().any(|a| a
            .as_str()
            .is_some_and(|a| a.starts_with("--metrics-addr=0.0.0.0:"))),
        "the operator serves /metrics on all interfaces"
    );

    // The README's overlay: deploy/ and deploy/monitoring/ together.
    let overlay = tempfile::tempdir().unwrap();
    let rel = |p: &str| pathdiff(&repo(p), overlay.path());
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!(
            "resources:\n  - {}\n  - {}\n",
            rel("deploy"),
            rel("deploy/monitoring")
        ),
    )
    .unwrap();
    let both = yaml_docs(&run(plane.kubectl().arg("kustomize").arg(overlay.path())));
    assert!(both.iter().any(|d| d["kind"] == "Deployment"));
    assert!(both.iter().any(|d| d["kind"] == "PodMonitor"));

    let c = plane.client().await;
    monitoring_crds(plane).await;
    ensure_namespace(&c, "gpupool-system").await;
    server_dry_run(plane, &docs.iter().collect::<Vec<_>>());
}

/// `to` relative to the folder `from` (both absolute): kustomize takes relative paths.
fn pathdiff(to: &Path, from: &Path) -> String {
    let to: Vec<_> = to.components().collect();
    let from: Vec<_> = from.components().collect();
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

// ---------------------------------------------------------------------------------------------
// The queries against a live operator's metrics
// ---------------------------------------------------------------------------------------------

/// An operator on the real control plane, driven so that every series the dashboard and the
/// rules read exists: a pool with a node whose GPUs never registered and one with an unhealthy
/// GPU (Stalled), a gated, validated pool with a node that passes and one that fails, and a pool
/// whose plugin update registers no GPUs (its GPU-verified rollout halts). Every query's selectors and labels are then checked against its `/metrics`; and the rules,
/// fed that scrape by promtool, fire exactly the alerts this state calls for.
#[tokio::test]
async fn every_series_the_dashboard_and_the_rules_query_is_served_and_the_alerts_fire() {
    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let env = env_with(&["--metrics-addr", addr.as_str()]).await;
    let c = &env.client;

    create_node(c, &GpuNode::aks("mon-gpu-0", "mongpu").gpus(4))
        .await
        .unwrap();
    create_node(
        c,
        &GpuNode::aks("mon-gpu-1", "mongpu").gpus(4).no_gpus_yet(),
    )
    .await
    .unwrap();
    create_pool(c, PoolYaml::new("mon-gpu").agentpool("mongpu")).await;
    // One GPU of mon-gpu-0 falls off (the plugin reports it unhealthy).
    set_gpus(c, "mon-gpu-0", 4, 3).await.unwrap();

    let _kubelet = ValidationPods::spawn_selecting(
        c.clone(),
        "gpupool.io/pool=mon-val",
        Duration::from_secs(1),
    );
    for (name, outcome) in [("mon-val-0", "pass"), ("mon-val-1", "fail")] {
        create_node(
            c,
            &GpuNode::aks(name, "monval")
                .taint("gpupool.io/gpu-not-ready", "", "NoSchedule")
                .label(SIMULATE_VALIDATION_LABEL, outcome),
        )
        .await
        .unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("mon-val")
            .agentpool("monval")
            .extra_spec("  readinessGate: {}\n  validation: {}\n"),
    )
    .await;

    // A plugin rollout that halts: the nodes' GPUs follow their plugin pods (a simulated kubelet
    // device manager), and the update registers none. The first plugin serves them.
    let _device_manager = PluginGpus::spawn_selecting(c.clone(), "monroll=true");
    for name in ["mon-roll-0", "mon-roll-1"] {
        create_node(
            c,
            &GpuNode::aks(name, "monroll")
                .gpus(2)
                .gpus_follow_plugin()
                .label("monroll", "true"),
        )
        .await
        .unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("mon-roll").agentpool("monroll").extra_spec(
            "  devicePlugin:\n    image: nvcr.io/nvidia/k8s-device-plugin:v0.17.0\n  rollout:\n    progressDeadlineSeconds: 30\n",
        ),
    )
    .await;
    wait_condition(&env, "mon-roll", "Ready", "True", None).await;
    patch_pool(
        c,
        "mon-roll",
        json!({"spec": {"devicePlugin": {"image": "nvcr.io/nvidia/k8s-device-plugin:v0.18.2-broken"}}}),
    )
    .await;

    let url = format!("http://{addr}/metrics");
    // The state the expected alerts below follow from: gauges exactly, counters at least.
    let counted = 1.0..=f64::MAX;
    let wanted: &[Wanted] = &[
        ("gpupool_pool_ready", &[("pool", "mon-gpu")], 0.0..=0.0),
        ("gpupool_pool_stalled", &[("pool", "mon-gpu")], 1.0..=1.0),
        ("gpupool_pool_nodes", &[("pool", "mon-gpu")], 2.0..=2.0),
        (
            "gpupool_pool_nodes_with_gpus",
            &[("pool", "mon-gpu")],
            1.0..=1.0,
        ),
        (
            "gpupool_pool_gpus_capacity",
            &[("pool", "mon-gpu")],
            4.0..=4.0,
        ),
        (
            "gpupool_pool_gpus_allocatable",
            &[("pool", "mon-gpu")],
            3.0..=3.0,
        ),
        (
            "gpupool_pool_plugin_ready",
            &[("pool", "mon-gpu")],
            1.0..=1.0,
        ),
        ("gpupool_pool_ready", &[("pool", "mon-val")], 0.0..=0.0),
        ("gpupool_pool_nodes", &[("pool", "mon-val")], 2.0..=2.0),
        (
            "gpupool_pool_nodes_with_gpus",
            &[("pool", "mon-val")],
            2.0..=2.0,
        ),
        (
            "gpupool_pool_plugin_ready",
            &[("pool", "mon-val")],
            1.0..=1.0,
        ),
        (
            "gpupool_pool_validation_failed_nodes",
            &[("pool", "mon-val")],
            1.0..=1.0,
        ),
        (
            "gpupool_pool_validated_nodes",
            &[("pool", "mon-val")],
            1.0..=1.0,
        ),
        (
            "gpupool_pool_gated_nodes",
            &[("pool", "mon-val")],
            1.0..=1.0,
        ),
        (
            "gpupool_validations_total",
            &[("pool", "mon-val"), ("result", "Passed")],
            counted.clone(),
        ),
        (
            "gpupool_validations_total",
            &[("pool", "mon-val"), ("result", "Failed")],
            counted.clone(),
        ),
        (
            "gpupool_gate_taint_writes_total",
            &[("pool", "mon-val"), ("action", "removed")],
            counted.clone(),
        ),
        (
            "gpupool_pool_plugin_rollout_halted",
            &[("pool", "mon-roll")],
            1.0..=1.0,
        ),
        (
            "gpupool_pool_plugin_rollout_nodes_left",
            &[("pool", "mon-roll")],
            1.0..=1.0,
        ),
        ("gpupool_pool_stalled", &[("pool", "mon-roll")], 1.0..=1.0),
        ("gpupool_leader", &[], 1.0..=1.0),
    ];
    let scrape = wait_for(
        &format!(
            "the scenario's series on /metrics: {wanted:?}\noperator log:\n{}",
            operator_log(env.plane)
        ),
        TIMEOUT * 2,
        || async {
            let (_, text) = testenv::http::get(&url).await.ok()?;
            let scrape = Scrape::parse(&text);
            wanted
                .iter()
                .all(|(name, labels, range)| {
                    scrape
                        .value(name, labels)
                        .is_some_and(|v| range.contains(&v))
                })
                .then_some(scrape)
        },
    )
    .await;

    let mut problems = Vec::new();
    for (_, rule) in alert_rules(&rules_file()) {
        let expr = rule["expr"].as_str().unwrap();
        for p in promql::check(expr, &scrape) {
            problems.push(format!("alert {}: {p}\n  in {expr}", rule["alert"]));
        }
    }
    // Grafana's variables, as Grafana would send them for the pool with every kind of series.
    let grafana = |q: &str| {
        q.replace("$__rate_interval", "1m")
            .replace("$pool", "mon-val")
    };
    for (place, expr) in dashboard_queries() {
        for p in promql::check(&grafana(&expr), &scrape) {
            problems.push(format!("{place}: {p}\n  in {expr}"));
        }
    }
    for (place, legend, expr) in dashboard_legends() {
        for p in promql::check_legend(&legend, &grafana(&expr), &scrape) {
            problems.push(format!("{place}: {p}"));
        }
    }
    for variable in dashboard()["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            for p in promql::check_label_values(&variable_query(variable), &scrape) {
                problems.push(format!("variable {}: {p}", variable["name"]));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "queries that read what the operator does not serve:\n{}\n\n/metrics:\n{}",
        problems.join("\n"),
        scrape.text
    );

    // The rules on this very scrape, held for 40 minutes (longer than any `for`).
    let instance = addr.as_str();
    let expected_alerts = [
        ("GpuPoolNotReady", "mon-gpu", "warning"),
        ("GpuPoolGpusMissing", "mon-gpu", "warning"),
        ("GpuPoolGpusUnhealthy", "mon-gpu", "warning"),
        ("GpuPoolNotReady", "mon-val", "warning"),
        ("GpuPoolValidationFailing", "mon-val", "warning"),
        // The halted rollout pages as halted, not also as a stuck DaemonSet; its node without
        // GPUs (capacity kept, allocatable 0, as #1645) makes the pool not Ready, GPUs missing
        // and not allocatable.
        ("GpuPoolNotReady", "mon-roll", "warning"),
        ("GpuPoolGpusMissing", "mon-roll", "warning"),
        ("GpuPoolGpusUnhealthy", "mon-roll", "warning"),
        ("GpuPoolPluginRolloutHalted", "mon-roll", "warning"),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo(RULES), dir.path().join("rules.yaml")).unwrap();
    let test = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": scrape.as_promtool_series(JOB, instance),
            "promql_expr_test": [{
                "expr": "ALERTS{alertstate=\"firing\"}",
                "eval_time": "40m",
                "exp_samples": expected_alerts.iter().map(|(alert, pool, severity)| json!({
                    "labels": format!(
                        "ALERTS{{alertname=\"{alert}\",alertstate=\"firing\",instance=\"{instance}\",job=\"{JOB}\",pool=\"{pool}\",severity=\"{severity}\"}}"
                    ),
                    "value": 1,
                })).collect::<Vec<_>>(),
            }],
        }],
    });
    let test_file = dir.path().join("live.test.yaml");
    std::fs::write(&test_file, yaml_serde::to_string(&test).unwrap()).unwrap();
    let (ok, out, err) = support::tools::try_run(
        std::process::Command::new(tools_bin().join("promtool"))
            .args(["test", "rules"])
            .arg(&test_file),
        None,
    );
    assert!(
        ok,
        "on the live scrape the rules fire other alerts than {expected_alerts:?}:\n{out}\n{err}"
    );
}

/// A sample the scenario waits for: its name, some of its labels, the values it may have.
type Wanted = (
    &'static str,
    &'static [(&'static str, &'static str)],
    std::ops::RangeInclusive<f64>,
);

/// A scrape of `/metrics` (Prometheus or OpenMetrics text), sample by sample.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| Sample::parse(l).unwrap_or_else(|| panic!("unparsable sample line: {l}")))
            .collect();
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the one sample of `name` with these labels (others ignored).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.named(name)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Every sample as a promtool input series held for 40 minutes, with the target labels
    /// Prometheus would attach, plus the target's `up`.
    fn as_promtool_series(&self, job: &str, instance: &str) -> Vec<Value> {
        let target = [("job", job), ("instance", instance)];
        let mut out: Vec<Value> = self
            .samples
            .iter()
            .map(|s| {
                let mut labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", promql::quote(v)))
                    .collect();
                labels.extend(
                    target
                        .iter()
                        .map(|(k, v)| format!("{k}={}", promql::quote(v))),
                );
                json!({
                    "series": format!("{}{{{}}}", s.name, labels.join(",")),
                    "values": format!("{}x40", promql::number(s.value)),
                })
            })
            .collect();
        out.push(json!({
            "series": format!("up{{job={},instance={}}}", promql::quote(job), promql::quote(instance)),
            "values": "1x40",
        }));
        out
    }
}

impl Sample {
    /// `name{a="x",b="y"} value [timestamp]` or `name value`.
    fn parse(line: &str) -> Option<Sample> {
        let name_end = line.find(['{', ' '])?;
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let end;
            loop {
                let (i, c) = chars.next()?;
                if c == '}' {
                    end = i;
                    break;
                }
                if c == ',' || c == ' ' {
                    continue;
                }
                let key_start = i;
                let mut key_end = i;
                while let Some(&(j, c)) = chars.peek() {
                    if c == '=' {
                        key_end = j;
                        break;
                    }
                    chars.next();
                }
                let key = inner[key_start..key_end].to_string();
                chars.next(); // '='
                if chars.next()?.1 != '"' {
                    return None;
                }
                let mut value = String::new();
                loop {
                    let (_, c) = chars.next()?;
                    match c {
                        '"' => break,
                        '\\' => match chars.next()?.1 {
                            'n' => value.push('\n'),
                            other => value.push(other),
                        },
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
            }
            rest = &inner[end + 1..];
        }
        let value = rest.split_whitespace().next()?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().ok()?,
        };
        Some(Sample {
            name,
            labels,
            value,
        })
    }
}

/// A small, honest extractor of what a PromQL expression reads: the series selectors (metric
/// name and label matchers) and the label names of grouping and matching clauses (`by`,
/// `without`, `on`, `ignoring`, `group_left`, `group_right`). It tokenizes the expression;
/// identifiers followed by `(` must be PromQL functions or aggregations (an unknown one is an
/// error, never taken for a metric); keywords are skipped; any other identifier is a metric name,
/// with its matchers if `{` follows. Grafana variables must be substituted first.
mod promql {
    use super::{SCRAPE_SERIES, Sample, Scrape, TARGET_LABELS};

    #[rustfmt::skip]
    const AGGREGATIONS: &[&str] = &[
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    ];
    #[rustfmt::skip]
    const FUNCTIONS: &[&str] = &[
        "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
        "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
        "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
        "delta", "deriv", "double_exponential_smoothing", "end", "exp", "floor",
        "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
        "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour",
        "idelta", "increase", "info", "irate", "label_join", "label_replace", "last_over_time",
        "ln", "log10", "log2", "mad_over_time", "max_over_time", "min_over_time", "minute",
        "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad",
        "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label",
        "sort_by_label_desc", "sort_desc", "sqrt", "start", "stddev_over_time",
        "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector",
        "year",
    ];
    /// Clauses whose parenthesized list holds label names.
    #[rustfmt::skip]
    const LABEL_CLAUSES: &[&str] = &[
        "by", "without", "on", "ignoring", "group_left", "group_right",
    ];
    #[rustfmt::skip]
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Ident(String),
        Str(String),
        Num,
        Punct(String),
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Op {
        Eq,
        Ne,
        Re,
        NotRe,
    }

    #[derive(Debug, Clone, PartialEq)]
    pub struct Matcher {
        pub label: String,
        pub op: Op,
        pub value: String,
    }

    #[derive(Debug, Clone, PartialEq)]
    pub struct Selector {
        pub metric: String,
        pub matchers: Vec<Matcher>,
    }

    #[derive(Debug, Default, PartialEq)]
    pub struct Reads {
        pub selectors: Vec<Selector>,
        /// Label names of by/without/on/ignoring/group_left/group_right.
        pub grouping: Vec<String>,
    }

    fn ident_start(c: char) -> bool {
        c.is_ascii_alphabetic() || c == '_' || c == ':'
    }

    fn ident_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || c == '_' || c == ':'
    }

    fn tokenize(expr: &str) -> Result<Vec<Tok>, String> {
        // Grafana's $name, ${name} and [[name]], in strings too; label_replace's $1 is PromQL.
        if let Some(at) = expr.match_indices('$').map(|(i, _)| i).find(|&i| {
            expr[i + 1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '{')
        }) {
            return Err(format!("an unsubstituted variable at {:?}", &expr[at..]));
        }
        let chars: Vec<char> = expr.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() {
                i += 1;
            } else if c == '#' {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            } else if c == '[' {
                // A range or subquery ([5m], [1h:1m]): durations, nothing read.
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Num);
            } else if c == '"' || c == '\'' || c == '`' {
                let mut s = String::new();
                i += 1;
                loop {
                    let d = *chars.get(i).ok_or("an unterminated string")?;
                    i += 1;
                    if d == c {
                        break;
                    }
                    if d == '\\' && c != '`' {
                        s.push(*chars.get(i).ok_or("an unterminated string")?);
                        i += 1;
                    } else {
                        s.push(d);
                    }
                }
                toks.push(Tok::Str(s));
            } else if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            {
                // Numbers and durations (0.99, 5m, 1h30m, 1e3).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                toks.push(Tok::Num);
            } else if ident_start(c) {
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                toks.push(Tok::Ident(chars[start..i].iter().collect()));
            } else {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                if ["=~", "!~", "!=", "==", ">=", "<="].contains(&two.as_str()) {
                    toks.push(Tok::Punct(two));
                    i += 2;
                } else if "(){}[],=<>+-*/%^@:".contains(c) {
                    toks.push(Tok::Punct(c.to_string()));
                    i += 1;
                } else {
                    return Err(format!("unexpected {c:?}"));
                }
            }
        }
        Ok(toks)
    }

    fn punct(t: Option<&Tok>, p: &str) -> bool {
        matches!(t, Some(Tok::Punct(q)) if q == p)
    }

    pub fn parse(expr: &str) -> Result<Reads, String> {
        let toks = tokenize(expr)?;
        let mut reads = Reads::default();
        let mut i = 0;
        while i < toks.len() {
            let Tok::Ident(name) = &toks[i] else {
                i += 1;
                continue;
            };
            let next = toks.get(i + 1);
            i += 1;
            let lower = name.to_lowercase();
            if LABEL_CLAUSES.contains(&lower.as_str()) {
                if punct(next, "(") {
                    i += 1;
                    while !punct(toks.get(i), ")") {
                        match toks.get(i) {
                            Some(Tok::Ident(label)) => reads.grouping.push(label.clone()),
                            Some(Tok::Punct(p)) if p == "," => {}
                            other => return Err(format!("{name}(...) holds {other:?}")),
                        }
                        i += 1;
                    }
                    i += 1;
                } else if lower != "group_left" && lower != "group_right" {
                    return Err(format!("{name} without a label list"));
                }
            } else if KEYWORDS.contains(&lower.as_str()) {
            } else if AGGREGATIONS.contains(&name.as_str()) {
                let modifier = matches!(next, Some(Tok::Ident(m)) if m == "by" || m == "without");
                if !punct(next, "(") && !modifier {
                    return Err(format!("aggregation {name} without arguments"));
                }
            } else if punct(next, "(") {
                if !FUNCTIONS.contains(&name.as_str()) {
                    return Err(format!("{name}(...) is not a PromQL function"));
                }
            } else {
                let mut selector = Selector {
                    metric: name.clone(),
                    matchers: Vec::new(),
                };
                if punct(next, "{") {
                    i += 1;
                    loop {
                        match toks.get(i) {
                            Some(Tok::Punct(p)) if p == "}" => break,
                            Some(Tok::Punct(p)) if p == "," => i += 1,
                            Some(Tok::Ident(label)) => {
                                let op = match toks.get(i + 1) {
                                    Some(Tok::Punct(p)) if p == "=" => Op::Eq,
                                    Some(Tok::Punct(p)) if p == "!=" => Op::Ne,
                                    Some(Tok::Punct(p)) if p == "=~" => Op::Re,
                                    Some(Tok::Punct(p)) if p == "!~" => Op::NotRe,
                                    other => return Err(format!("matcher {label} {other:?}")),
                                };
                                let Some(Tok::Str(value)) = toks.get(i + 2) else {
                                    return Err(format!("matcher {label} without a string"));
                                };
                                selector.matchers.push(Matcher {
                                    label: label.clone(),
                                    op,
                                    value: value.clone(),
                                });
                                i += 3;
                            }
                            other => return Err(format!("in a selector: {other:?}")),
                        }
                    }
                    i += 1;
                }
                reads.selectors.push(selector);
            }
        }
        if reads.selectors.is_empty() {
            return Err("reads no series".into());
        }
        Ok(reads)
    }

    fn matches(matcher: &Matcher, sample: &Sample) -> bool {
        // A missing label reads as "", as in Prometheus.
        let value = sample.labels.get(&matcher.label).map_or("", String::as_str);
        let regex = || {
            regex::Regex::new(&format!("^(?:{})$", matcher.value))
                .unwrap_or_else(|e| panic!("regex {:?}: {e}", matcher.value))
        };
        match matcher.op {
            Op::Eq => value == matcher.value,
            Op::Ne => value != matcher.value,
            Op::Re => regex().is_match(value),
            Op::NotRe => !regex().is_match(value),
        }
    }

    /// The samples a selector selects, with the target labels left to Prometheus.
    fn selected<'a>(selector: &'a Selector, scrape: &'a Scrape) -> Vec<&'a Sample> {
        scrape
            .named(&selector.metric)
            .filter(|s| {
                selector
                    .matchers
                    .iter()
                    .filter(|m| !TARGET_LABELS.contains(&m.label.as_str()))
                    .all(|m| matches(m, s))
            })
            .collect()
    }

    /// What in `expr` the scrape does not serve: a metric, a label, a matcher no sample meets.
    pub fn check(expr: &str, scrape: &Scrape) -> Vec<String> {
        let reads = match parse(expr) {
            Ok(reads) => reads,
            Err(e) => return vec![format!("cannot read the query: {e}")],
        };
        let mut problems = Vec::new();
        let mut labels_read: std::collections::BTreeSet<&str> =
            TARGET_LABELS.iter().copied().collect();
        for selector in &reads.selectors {
            if SCRAPE_SERIES.contains(&selector.metric.as_str()) {
                for m in &selector.matchers {
                    if !TARGET_LABELS.contains(&m.label.as_str()) {
                        problems.push(format!("{} has no label {}", selector.metric, m.label));
                    }
                }
                continue;
            }
            if scrape.named(&selector.metric).next().is_none() {
                problems.push(format!("no metric {} on /metrics", selector.metric));
                continue;
            }
            for m in &selector.matchers {
                let known = TARGET_LABELS.contains(&m.label.as_str())
                    || scrape
                        .named(&selector.metric)
                        .any(|s| s.labels.contains_key(&m.label));
                if !known {
                    problems.push(format!("{} has no label {}", selector.metric, m.label));
                }
            }
            let selected = selected(selector, scrape);
            if selected.is_empty() {
                problems.push(format!(
                    "no sample of {} meets {:?}",
                    selector.metric, selector.matchers
                ));
            }
            for s in scrape.named(&selector.metric) {
                labels_read.extend(s.labels.keys().map(String::as_str));
            }
        }
        for label in &reads.grouping {
            if !labels_read.contains(label.as_str()) {
                problems.push(format!("groups by {label}, which none of its series has"));
            }
        }
        problems
    }

    /// `{{label}}` in a legend must be a label of the series the query reads.
    pub fn check_legend(legend: &str, expr: &str, scrape: &Scrape) -> Vec<String> {
        let Ok(reads) = parse(expr) else {
            return Vec::new(); // reported by check()
        };
        let mut problems = Vec::new();
        for part in legend.split("{{").skip(1) {
            let Some(label) = part.split("}}").next().map(str::trim) else {
                continue;
            };
            let known = TARGET_LABELS.contains(&label)
                || reads.selectors.iter().any(|sel| {
                    scrape
                        .named(&sel.metric)
                        .any(|s| s.labels.contains_key(label))
                });
            if !known {
                problems.push(format!(
                    "legend {legend:?} shows {label}, which its series lack"
                ));
            }
        }
        problems
    }

    /// A Grafana `label_values(<series>, <label>)` variable query.
    pub fn check_label_values(query: &str, scrape: &Scrape) -> Vec<String> {
        let Some(args) = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        else {
            return vec![format!("not a label_values() query: {query}")];
        };
        let Some((series, label)) = args.rsplit_once(',') else {
            return vec![format!("label_values() without a series: {query}")];
        };
        let mut problems = check(series, scrape);
        let label = label.trim();
        let has = parse(series).is_ok_and(|reads| {
            reads.selectors.iter().any(|sel| {
                selected(sel, scrape)
                    .iter()
                    .any(|s| s.labels.contains_key(label))
            })
        });
        if !has {
            problems.push(format!("{series} has no label {label}"));
        }
        problems
    }

    /// A PromQL string literal.
    pub fn quote(value: &str) -> String {
        format!(
            "\"{}\"",
            value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        )
    }

    /// A sample value as promtool's series notation reads it.
    pub fn number(value: f64) -> String {
        if value.is_infinite() {
            if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
        } else if value.is_nan() {
            "NaN".to_string()
        } else {
            format!("{value}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The extractor itself
// ---------------------------------------------------------------------------------------------

fn selector(metric: &str, matchers: &[(&str, promql::Op, &str)]) -> promql::Selector {
    promql::Selector {
        metric: metric.into(),
        matchers: matchers
            .iter()
            .map(|(label, op, value)| promql::Matcher {
                label: (*label).into(),
                op: *op,
                value: (*value).into(),
            })
            .collect(),
    }
}

#[test]
fn the_extractor_reads_selectors_and_grouping_labels() {
    use promql::Op::*;
    let reads = promql::parse(
        r#"histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{controller="gpupool", result!~"a|b"}[5m:1m] offset 1h)))
           / on (job, instance) group_left () sum without (le) (x_seconds_count) and bare_metric > bool 0"#,
    )
    .unwrap();
    assert_eq!(
        reads.selectors,
        vec![
            selector(
                "x_seconds_bucket",
                &[("controller", Eq, "gpupool"), ("result", NotRe, "a|b")]
            ),
            selector("x_seconds_count", &[]),
            selector("bare_metric", &[]),
        ]
    );
    assert_eq!(reads.grouping, ["le", "job", "instance", "le"]);
    // `sum by (...)` and `max(...) by (...)` are aggregations, never metrics called sum or max.
    let reads = promql::parse("max(a) by (pool) - sum by (pool) (b)").unwrap();
    assert_eq!(
        reads.selectors,
        vec![selector("a", &[]), selector("b", &[])]
    );
    assert_eq!(reads.grouping, ["pool", "pool"]);
    // An identifier before `(` that is no PromQL function is an error, not a metric.
    assert!(promql::parse("sum(ratee(x[5m]))").is_err());
    // Grafana variables must be substituted before.
    assert!(promql::parse(r#"x{pool=~"$pool"}"#).is_err());
    assert!(promql::parse("vector(1)").is_err(), "reads no series");
}

#[test]
fn the_check_fails_a_renamed_metric_a_wrong_label_and_an_unmet_matcher() {
    let scrape = Scrape::parse(
        "# TYPE gpupool_pool_ready gauge\n\
         gpupool_pool_ready{pool=\"a\"} 1\n\
         gpupool_validations_total{pool=\"a\",result=\"Passed\"} 2\n\
         h_bucket{le=\"+Inf\"} 3\n",
    );
    let ok = [
        r#"sum by (pool) (gpupool_pool_ready{pool=~"a|b"}) == 0"#,
        r#"increase(gpupool_validations_total{result="Passed"}[5m])"#,
        "histogram_quantile(0.5, sum by (le) (rate(h_bucket[5m])))",
        r#"absent(up{job="gpupool-operator"} == 1)"#,
        "gpupool_pool_ready and on (job, instance) gpupool_pool_ready",
    ];
    for expr in ok {
        assert_eq!(promql::check(expr, &scrape), Vec::<String>::new(), "{expr}");
    }
    let broken = [
        ("gpupool_pool_readyy == 0", "no metric gpupool_pool_readyy"),
        (r#"gpupool_pool_ready{pol="a"}"#, "has no label pol"),
        (
            r#"gpupool_validations_total{result="Failed"}"#,
            "no sample of gpupool_validations_total",
        ),
        ("sum by (node) (gpupool_pool_ready)", "groups by node"),
        (r#"up{pool="a"}"#, "up has no label pool"),
    ];
    for (expr, problem) in broken {
        let problems = promql::check(expr, &scrape);
        assert!(
            problems.iter().any(|p| p.contains(problem)),
            "{expr}: {problems:?} should say {problem:?}"
        );
    }
    assert_eq!(
        promql::check_legend("{{pool}} {{result}}", "gpupool_validations_total", &scrape),
        Vec::<String>::new()
    );
    assert_eq!(
        promql::check_legend("{{kind}}", "gpupool_validations_total", &scrape).len(),
        1
    );
    assert!(
        promql::check_label_values("label_values(gpupool_pool_ready, pool)", &scrape).is_empty()
    );
    assert!(
        !promql::check_label_values("label_values(gpupool_pool_ready, node)", &scrape).is_empty()
    );
}
