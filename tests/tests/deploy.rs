//! The deployment files: the Helm chart and the plain manifests rendered from it agree, the
//! manifests validate against the Kubernetes schemas, and the Dockerfile and compose file
//! use the same ports, health check and seed address.
//!
//! No `helm` binary can be installed here, so the chart is rendered by the small renderer
//! below, which knows exactly the template expressions the chart uses (a template using
//! another one fails the test, so the renderer cannot silently fall behind).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The scalar leaves of a simple YAML mapping, by dotted path (`ports.client` → `4001`).
fn values(yaml: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    for line in yaml.lines() {
        let text = line.split(" #").next().unwrap_or("").trim_end();
        if text.trim().is_empty()
            || text.trim_start().starts_with('#')
            || text.trim_start().starts_with('-')
        {
            continue;
        }
        let indent = text.len() - text.trim_start().len();
        let Some((key, value)) = text.trim().split_once(':') else {
            continue;
        };
        while path.last().is_some_and(|(i, _)| *i >= indent) {
            path.pop();
        }
        let value = value.trim();
        let full: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
        if value.is_empty() {
            path.push((indent, key.to_string()));
        } else {
            out.insert(full.join("."), value.trim_matches('"').to_string());
        }
    }
    out
}

/// Renders the chart's template `text` for release "rdask" with `vals`: the fullname,
/// `.Values.…` (optionally `| quote`), `.Chart.*`, `.Release.*`; lines of blocks that are
/// off by default (`if .Values.x.enabled` false) are dropped with their block. Lines that
/// use `include`d label blocks or `toYaml` are dropped (labels and resources are compared
/// separately).
fn render(text: &str, vals: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skipping = 0usize;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("{{- if ")
            || t.starts_with("{{ if ")
            || t.starts_with("{{- with ")
            || t.starts_with("{{- range ")
        {
            let on = if let Some(cond) = t
                .strip_prefix("{{- if ")
                .or_else(|| t.strip_prefix("{{ if "))
            {
                let cond = cond.trim_end_matches("}}").trim();
                match cond.strip_prefix("not ") {
                    Some(c) => vals
                        .get(c.trim_start_matches(".Values."))
                        .is_none_or(|v| v == "false" || v.is_empty()),
                    None => vals
                        .get(cond.trim_start_matches(".Values."))
                        .is_some_and(|v| v != "false" && !v.is_empty()),
                }
            } else {
                false
            };
            if skipping > 0 || !on {
                skipping += 1;
            }
            continue;
        }
        if t.starts_with("{{- else") {
            if skipping == 1 {
                skipping = 0;
            } else if skipping == 0 {
                skipping = 1;
            }
            continue;
        }
        if t.starts_with("{{- end") || t.starts_with("{{ end") {
            skipping = skipping.saturating_sub(1);
            continue;
        }
        if skipping > 0 || t.contains("nindent") || t.starts_with('#') || t.is_empty() {
            continue;
        }
        let secret_name = match vals.get("clusterSecret.existingSecret") {
            Some(name) if !name.is_empty() => name.clone(),
            _ => "rdask-secret".to_string(),
        };
        let mut l = t
            .replace("{{ include \"rdask.fullname\" . }}", "rdask")
            .replace("{{ include \"rdask.secretName\" . }}", &secret_name);
        while let Some(start) = l.find("{{") {
            let end = l[start..].find("}}").expect("closed") + start + 2;
            let expr = l[start + 2..end - 2].trim();
            let (expr, quote) = match expr.strip_suffix("| quote") {
                Some(e) => (e.trim(), true),
                None => (expr, false),
            };
            // `required "message" .Values.x`: the value, which must not be empty.
            let expr = match expr.strip_prefix("required \"") {
                Some(rest) => {
                    let (message, value) = rest.split_once("\" ").expect("a quoted message");
                    let k = value.trim().trim_start_matches(".Values.");
                    assert!(vals.get(k).is_some_and(|v| !v.is_empty()), "{message}");
                    value.trim()
                }
                None => expr,
            };
            let value = if let Some(k) = expr.strip_prefix(".Values.") {
                vals.get(k)
                    .cloned()
                    .unwrap_or_else(|| panic!("no value {k}"))
            } else {
                match expr {
                    ".Release.Name" => "rdask".into(),
                    ".Release.Namespace" => "default".into(),
                    ".Chart.Name" => "rdask".into(),
                    other => panic!("the test's renderer does not know {{{{ {other} }}}}"),
                }
            };
            let value = if quote { format!("\"{value}\"") } else { value };
            l.replace_range(start..end, &value);
        }
        out.push(l);
    }
    out
}

/// The lines that matter for agreement: names, ports, probes, the addresses nodes use.
fn facts(lines: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    lines
        .into_iter()
        .map(|l| l.trim().to_string())
        .filter(|l| {
            [
                "kind:",
                "name: rdask",
                "serviceName:",
                "clusterIP:",
                "port:",
                "containerPort:",
                "targetPort:",
                "path:",
                "- /",
                "- 0.0.0.0",
                "replicas:",
                "podManagementPolicy:",
                "maxUnavailable:",
                "terminationGracePeriodSeconds:",
                "image:",
                "- name: RDASK_",
                "resource: limits",
                "key:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect()
}

#[test]
fn the_chart_and_the_plain_manifests_agree_on_names_ports_probes_and_the_seed() {
    let vals = values(&read("deploy/helm/rdask/values.yaml"));
    assert_eq!(vals["ports.client"], "4001");
    assert_eq!(vals["ports.dashboard"], "8787");
    let mut rendered = Vec::new();
    for t in [
        "services.yaml",
        "statefulset.yaml",
        "pdb.yaml",
        "servicemonitor.yaml",
        "hpa.yaml",
        "secret.yaml",
    ] {
        rendered.extend(render(
            &read(&format!("deploy/helm/rdask/templates/{t}")),
            &vals,
        ));
    }
    let chart = facts(rendered);
    let manifests = facts(
        read("deploy/kubernetes/rdask.yaml")
            .lines()
            .map(String::from),
    );
    assert_eq!(
        chart, manifests,
        "the chart (rendered for release rdask) and deploy/kubernetes/rdask.yaml differ"
    );
    // The facts that matter most, spelled out.
    for must in [
        "- /dns/rdask-seed/tcp/4001",
        "name: rdask-seed",
        "serviceName: rdask-seed",
        "clusterIP: None",
        "containerPort: 4001",
        "containerPort: 4002",
        "containerPort: 8787",
        "path: /health",
    ] {
        assert!(manifests.contains(must), "{must} missing");
    }
    // The image and compose file: same ports, health check, seed form.
    let docker = read("deploy/Dockerfile");
    assert!(docker.contains("EXPOSE 4001 4002 8787"));
    assert!(docker.contains("http://127.0.0.1:8787/health"));
    assert!(docker.contains("USER 10001"));
    let compose = read("deploy/compose.yaml");
    assert!(compose.contains("RDASK_JOIN: /dns/seed/tcp/4001"));
    assert!(compose.contains("RDASK_DASHBOARD_ADDRESS: 0.0.0.0:8787"));
    // Every flag the deployment files pass is one rdask-node knows.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_rdask-test-node"))
        .arg("--help")
        .output()
        .expect("run the node binary");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--advertise",
        "--join",
        "--dashboard-address",
        "--cluster-size",
        "--memory-limit",
        "--cluster-secret",
        "--data-port",
    ] {
        assert!(help.contains(flag), "{flag} is not an option of rdask-node");
    }
    for var in [
        "RDASK_NTHREADS",
        "RDASK_JOIN",
        "RDASK_DASHBOARD_ADDRESS",
        "RDASK_LISTEN",
        "RDASK_MEMORY_LIMIT",
        "RDASK_DATA_PORT",
        "RDASK_CLUSTER_SECRET",
    ] {
        assert!(help.contains(var), "{var} is not read by rdask-node");
    }
}

#[test]
fn with_a_cluster_secret_the_chart_makes_the_secret_its_pods_read() {
    let mut vals = values(&read("deploy/helm/rdask/values.yaml"));
    assert_eq!(
        vals.get("clusterSecret.enabled").map(String::as_str),
        Some("false")
    );
    vals.insert("clusterSecret.enabled".into(), "true".into());
    vals.insert("clusterSecret.value".into(), "s3cret".into());
    let secret = render(&read("deploy/helm/rdask/templates/secret.yaml"), &vals);
    let pods = render(&read("deploy/helm/rdask/templates/statefulset.yaml"), &vals);
    assert!(secret.contains(&"kind: Secret".to_string()), "{secret:#?}");
    assert!(secret.contains(&"name: rdask-secret".to_string()));
    assert!(
        secret.contains(&"secret: \"s3cret\"".to_string()),
        "{secret:#?}"
    );
    let at = pods
        .iter()
        .position(|l| l == "- name: RDASK_CLUSTER_SECRET")
        .expect("the pods read the secret");
    assert_eq!(pods[at + 3], "name: rdask-secret");
    assert_eq!(pods[at + 4], "key: secret");
    // A Secret of the user's own: the chart makes none and the pods read that one.
    vals.insert("clusterSecret.existingSecret".into(), "mine".into());
    vals.insert("clusterSecret.value".into(), String::new());
    let secret = render(&read("deploy/helm/rdask/templates/secret.yaml"), &vals);
    assert!(secret.is_empty(), "{secret:#?}");
    let pods = render(&read("deploy/helm/rdask/templates/statefulset.yaml"), &vals);
    assert!(pods.contains(&"name: mine".to_string()));
    // Enabled with neither: rendering fails with the chart's message.
    vals.insert("clusterSecret.existingSecret".into(), String::new());
    let failed = std::panic::catch_unwind(|| {
        render(&read("deploy/helm/rdask/templates/secret.yaml"), &vals)
    });
    assert!(failed.is_err());
}

#[test]
fn the_plain_manifests_validate_against_the_kubernetes_schemas() {
    let tool = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubernetes-validate"))
            .find(|p| p.is_file())
    });
    let Some(tool) = tool else {
        assert!(
            std::env::var_os("RDASK_REQUIRE_DEPLOY_TOOLS").is_none(),
            "RDASK_REQUIRE_DEPLOY_TOOLS is set but kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
        eprintln!(
            "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
        return;
    };
    let out = std::process::Command::new(tool)
        .args(["--strict"])
        .arg(root().join("deploy/kubernetes/rdask.yaml"))
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
