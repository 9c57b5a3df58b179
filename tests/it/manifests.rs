//! The Kubernetes examples in `deploy/kubernetes/`: every manifest parses,
//! the RBAC grants exactly what rollback needs, the sidecar is locked down
//! and wired to its ConfigMap and Secret, and the configuration it embeds
//! passes `backstop validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use backstop_tests::backstop_bin;
use serde::Deserialize as _;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// One example: a directory applied with `kubectl apply -k`.
struct Example {
    dir: &'static str,
    workload_kind: &'static str,
    /// The pod label whose value is the deployment id.
    id_label: &'static str,
    /// The Role's rules as (API group, resource, resource names, verbs).
    rules: &'static [(
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    )],
}

const EXAMPLES: &[Example] = &[
    Example {
        dir: "deployment",
        workload_kind: "Deployment",
        id_label: "pod-template-hash",
        rules: &[
            ("apps", "deployments", &["web"], &["get", "patch"]),
            ("apps", "replicasets", &[], &["list"]),
        ],
    },
    Example {
        dir: "argo-rollouts",
        workload_kind: "Rollout",
        id_label: "rollouts-pod-template-hash",
        rules: &[
            ("argoproj.io", "rollouts", &["web"], &["get", "patch"]),
            ("argoproj.io", "rollouts/status", &["web"], &["patch"]),
            ("apps", "replicasets", &[], &["list"]),
        ],
    },
];

/// Every document of every `.yaml` file in the example's directory, as JSON.
fn documents(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = serde_norway::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if !value.is_null() {
                docs.push(serde_json::to_value(value).unwrap());
            }
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        out.insert(name, docs);
    }
    out
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

struct Loaded {
    files: BTreeMap<String, Vec<Value>>,
    objects: Vec<Value>,
}

impl Loaded {
    fn new(ex: &Example) -> Self {
        let files = documents(&repo().join("deploy/kubernetes").join(ex.dir));
        let objects = files
            .iter()
            .filter(|(name, _)| *name != "kustomization.yaml")
            .flat_map(|(_, docs)| docs.clone())
            .collect();
        Self { files, objects }
    }

    fn one(&self, kind: &str) -> &Value {
        let found: Vec<_> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "expected one {kind}");
        found[0]
    }

    fn pod_spec(&self, ex: &Example) -> &Value {
        &self.one(ex.workload_kind)["spec"]["template"]["spec"]
    }

    fn sidecar(&self, ex: &Example) -> &Value {
        self.pod_spec(ex)["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "backstop")
            .expect("a container named backstop")
    }
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them_all() {
    for ex in EXAMPLES {
        let loaded = Loaded::new(ex);
        let kinds: BTreeSet<&str> = loaded
            .objects
            .iter()
            .map(|o| {
                assert!(
                    o["apiVersion"].is_string(),
                    "{}: no apiVersion: {o}",
                    ex.dir
                );
                assert!(
                    o["metadata"]["name"].is_string(),
                    "{}: no name: {o}",
                    ex.dir
                );
                o["kind"].as_str().unwrap()
            })
            .collect();
        let want: BTreeSet<&str> = [
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            ex.workload_kind,
            "PodMonitor",
        ]
        .into();
        assert_eq!(kinds, want, "{}", ex.dir);
        assert!(
            !kinds.contains("ClusterRole") && !kinds.contains("ClusterRoleBinding"),
            "{}: rollback needs no cluster-wide rights",
            ex.dir
        );
        let kustomization = &loaded.files["kustomization.yaml"][0];
        let listed = strings(&kustomization["resources"]);
        let present: BTreeSet<String> = loaded
            .files
            .keys()
            .filter(|f| *f != "kustomization.yaml")
            .cloned()
            .collect();
        assert_eq!(listed, present, "{}: kustomization.yaml resources", ex.dir);
    }
}

#[test]
fn the_role_grants_exactly_what_rollback_needs() {
    for ex in EXAMPLES {
        let loaded = Loaded::new(ex);
        let role = loaded.one("Role");
        let mut got = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    got.insert((
                        group.clone(),
                        resource,
                        strings(&rule["resourceNames"]),
                        strings(&rule["verbs"]),
                    ));
                }
            }
        }
        let want: BTreeSet<_> = ex
            .rules
            .iter()
            .map(|(g, r, names, verbs)| {
                let set = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
                (g.to_string(), r.to_string(), set(names), set(verbs))
            })
            .collect();
        assert_eq!(got, want, "{}: the Role's rules", ex.dir);
        // The names it may touch are the workload's, and the rollback config's.
        let workload = str_at(loaded.one(ex.workload_kind), "/metadata/name");
        assert_eq!(workload, "web");
        let config = str_at(loaded.one("ConfigMap"), "/data/backstop.toml");
        let key = if ex.workload_kind == "Rollout" {
            "rollout"
        } else {
            "deployment"
        };
        assert!(
            config.contains(&format!("{key} = \"{workload}\"")),
            "{}: the config rolls back another workload",
            ex.dir
        );

        let binding = loaded.one("RoleBinding");
        assert_eq!(str_at(binding, "/roleRef/kind"), "Role");
        assert_eq!(
            str_at(binding, "/roleRef/name"),
            str_at(role, "/metadata/name")
        );
        let account = str_at(loaded.one("ServiceAccount"), "/metadata/name");
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1, "{}: one subject", ex.dir);
        assert_eq!(str_at(&subjects[0], "/kind"), "ServiceAccount");
        assert_eq!(str_at(&subjects[0], "/name"), account);
        assert_eq!(str_at(loaded.pod_spec(ex), "/serviceAccountName"), account);
    }
}

#[test]
fn the_sidecar_is_locked_down_and_wired_to_its_config_and_secret() {
    for ex in EXAMPLES {
        let loaded = Loaded::new(ex);
        let pod = loaded.pod_spec(ex);
        let c = loaded.sidecar(ex);
        let what = format!("{}: the backstop container", ex.dir);

        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{what}"
        );
        assert!(
            sc["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true,
            "{what} may run as root"
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{what} has no {kind}.{resource}"
                );
            }
        }

        // Volumes by name, and where the sidecar mounts them.
        let volumes: BTreeMap<&str, &Value> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v))
            .collect();
        let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (str_at(m, "/mountPath"), m))
            .collect();
        let config_mount = mounts["/etc/backstop"];
        assert_eq!(config_mount["readOnly"], true, "{what}");
        let config_volume = volumes[str_at(config_mount, "/name")];
        assert_eq!(
            str_at(config_volume, "/configMap/name"),
            str_at(loaded.one("ConfigMap"), "/metadata/name"),
            "{what} does not mount the ConfigMap at /etc/backstop"
        );
        let state = volumes[str_at(mounts["/var/lib/backstop"], "/name")];
        assert!(state["emptyDir"].is_object(), "{what}: state volume");
        let args = strings(&c["args"]);
        assert!(
            args.contains("/etc/backstop/backstop.toml"),
            "{what}: {args:?}"
        );

        // The API token reaches this container only.
        assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
        let api = "/var/run/secrets/kubernetes.io/serviceaccount";
        let token = volumes[str_at(mounts[api], "/name")];
        assert!(
            token["projected"]["sources"][0]["serviceAccountToken"].is_object(),
            "{what}: {token}"
        );
        for other in pod["containers"].as_array().unwrap() {
            if other["name"] != "backstop" {
                let theirs = other["volumeMounts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    theirs.iter().all(|m| m["mountPath"] != api),
                    "{}: the {} container gets the rollback token",
                    ex.dir,
                    other["name"]
                );
            }
        }

        // Liveness on /healthz, at the port the agent listens on; no readiness,
        // so the agent's trouble never takes the web pod out of service.
        let port = c["ports"][0]["containerPort"].as_u64().unwrap();
        let config = str_at(loaded.one("ConfigMap"), "/data/backstop.toml");
        assert!(
            config.contains(&format!("listen = \"0.0.0.0:{port}\"")),
            "{what}"
        );
        for probe in ["livenessProbe", "startupProbe"] {
            assert_eq!(
                str_at(&c[probe], "/httpGet/path"),
                "/healthz",
                "{what} {probe}"
            );
            assert_eq!(c[probe]["httpGet"]["port"], c["ports"][0]["name"], "{what}");
        }
        assert!(c["readinessProbe"].is_null(), "{what} has a readinessProbe");

        // The downward API and the Secret.
        let env: BTreeMap<&str, &Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), &e["valueFrom"]))
            .collect();
        let field = |name: &str| str_at(env[name], "/fieldRef/fieldPath").to_string();
        assert_eq!(
            field("DEPLOYMENT_ID"),
            format!("metadata.labels['{}']", ex.id_label)
        );
        assert_eq!(field("POD_NAME"), "metadata.name");
        assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
        let secret = loaded.one("Secret");
        let secret_name = str_at(secret, "/metadata/name");
        for name in ["BACKSTOP_ADMIN_TOKEN", "DATABASE_URL", "SLACK_WEBHOOK_URL"] {
            let r = &env[name]["secretKeyRef"];
            assert_eq!(str_at(r, "/name"), secret_name, "{what}: {name}");
            assert!(
                secret["stringData"][str_at(r, "/key")].is_string(),
                "{what}: {name} names a key the Secret lacks"
            );
        }
    }
}

#[test]
fn prometheus_finds_the_sidecar_by_annotation_and_pod_monitor() {
    for ex in EXAMPLES {
        let loaded = Loaded::new(ex);
        let template = &loaded.one(ex.workload_kind)["spec"]["template"];
        let c = loaded.sidecar(ex);
        let port = c["ports"][0]["containerPort"].as_u64().unwrap();
        let notes = &template["metadata"]["annotations"];
        assert_eq!(notes["prometheus.io/scrape"], "true", "{}", ex.dir);
        assert_eq!(notes["prometheus.io/port"], port.to_string(), "{}", ex.dir);
        assert_eq!(notes["prometheus.io/path"], "/metrics", "{}", ex.dir);

        let monitor = loaded.one("PodMonitor");
        let selector = monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        for (k, v) in selector {
            assert_eq!(
                &template["metadata"]["labels"][k], v,
                "{}: selector {k}",
                ex.dir
            );
        }
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["port"], c["ports"][0]["name"], "{}", ex.dir);
        assert_eq!(endpoint["path"], "/metrics", "{}", ex.dir);
    }
}

/// A value for each variable the sidecar's env defines, shaped like what the
/// Secret or the downward API would give.
fn stand_in(name: &str) -> &'static str {
    match name {
        "DATABASE_URL" => "postgres://backstop_probe:pw@127.0.0.1:5432/web",
        "SLACK_WEBHOOK_URL" => "https://hooks.slack.com/services/T0/B0/x",
        "BACKSTOP_ADMIN_TOKEN" => "0123456789abcdef0123456789abcdef",
        "POD_NAMESPACE" => "web",
        "POD_NAME" => "web-5d9c7b6f4-x2x9q",
        _ => "5d9c7b6f4",
    }
}

#[test]
fn the_embedded_configuration_passes_backstop_validate() {
    for ex in EXAMPLES {
        let loaded = Loaded::new(ex);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backstop.toml");
        std::fs::write(
            &path,
            str_at(loaded.one("ConfigMap"), "/data/backstop.toml"),
        )
        .unwrap();
        // Only the variables the container defines: the config may use no other.
        let mut cmd = Command::new(backstop_bin());
        cmd.args(["validate", "--config"]).arg(&path).env_clear();
        for e in loaded.sidecar(ex)["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            cmd.env(name, stand_in(name));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            ex.dir,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The ECS example in `deploy/aws-ecs/`: the task definition (its field
/// names are those of `RegisterTaskDefinition` in the ECS API reference,
/// botocore's `botocore/data/ecs/2014-11-13/service-2.json`), the
/// configuration its sidecar's image carries, and the two agreeing.
#[test]
fn the_ecs_task_definition_runs_backstop_as_a_sidecar_wired_to_its_configuration() {
    let dir = repo().join("deploy/aws-ecs");
    let text = std::fs::read_to_string(dir.join("task-definition.json")).unwrap();
    let td: Value = serde_json::from_str(&text).unwrap();
    let containers = td["containerDefinitions"].as_array().unwrap();
    let by_name = |n: &str| {
        containers
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no container {n}"))
    };
    let (web, agent) = (by_name("web"), by_name("backstop"));
    assert_eq!(containers.len(), 2);
    assert_eq!(web["essential"], true);
    // The agent is a guard: its failure does not stop the service, and ECS
    // restarts it.
    assert_eq!(agent["essential"], false);
    assert_eq!(agent["restartPolicy"]["enabled"], true);
    assert_eq!(
        agent["dependsOn"],
        serde_json::json!([{"containerName": "web", "condition": "START"}])
    );
    // Health by the agent's own check (the image has no shell).
    assert_eq!(
        agent["healthCheck"]["command"],
        serde_json::json!([
            "CMD",
            "/usr/local/bin/backstop",
            "healthcheck",
            "--timeout",
            "3s"
        ])
    );
    assert_eq!(agent["readonlyRootFilesystem"], true);
    assert_eq!(agent["user"], "65532:65532");
    // The state directory is a task volume.
    let volume = str_at(agent, "/mountPoints/0/sourceVolume");
    assert!(td["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == volume));
    assert_eq!(
        str_at(agent, "/mountPoints/0/containerPath"),
        "/var/lib/backstop"
    );
    // Credentials come from the task role only: no key in the task definition.
    assert!(str_at(&td, "/taskRoleArn").starts_with("arn:aws:iam::"));
    for c in containers {
        for e in c["environment"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            assert!(
                !name.starts_with("AWS_ACCESS_KEY") && !name.starts_with("AWS_SECRET"),
                "{name}"
            );
        }
    }
    let command: Vec<&str> = agent["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let config_at = command.iter().position(|a| *a == "--config").unwrap() + 1;
    assert_eq!(command[config_at], "/etc/backstop/backstop.toml");
    // The image carries the configuration at that path.
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("COPY backstop.toml /etc/backstop/backstop.toml"));

    // The configuration: the aws_ecs target, the deployment from the
    // platform, the probe on the web container's port, the agent's port
    // mapped.
    let config_text = std::fs::read_to_string(dir.join("backstop.toml")).unwrap();
    let config = toml_value(&config_text);
    assert_eq!(config["rollback"]["target"], "aws_ecs");
    assert_eq!(config["deployment"]["from_platform"], true);
    let port = web["portMappings"][0]["containerPort"].as_u64().unwrap();
    assert!(str_at(&config, "/probe/0/url").starts_with(&format!("http://127.0.0.1:{port}/")));
    let listen = str_at(&config, "/agent/listen");
    assert!(listen.ends_with(&format!(":{}", agent["portMappings"][0]["containerPort"])));

    // It passes `backstop validate` with exactly the variables the task
    // gives the container (its environment and secrets), and they name the
    // cluster and service the task definition is for.
    let mut cmd = Command::new(backstop_bin());
    cmd.args(["validate", "--config"])
        .arg(dir.join("backstop.toml"))
        .env_clear();
    let mut vars = BTreeMap::new();
    for e in agent["environment"].as_array().unwrap() {
        vars.insert(
            e["name"].as_str().unwrap().to_string(),
            e["value"].as_str().unwrap().to_string(),
        );
    }
    for s in agent["secrets"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        vars.insert(name.to_string(), stand_in(name).to_string());
    }
    assert_eq!(vars["BACKSTOP_ECS_SERVICE"], str_at(&td, "/family"));
    assert_eq!(
        vars["AWS_REGION"],
        str_at(web, "/logConfiguration/options/awslogs-region")
    );
    cmd.envs(&vars);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TOML document as JSON.
fn toml_value(text: &str) -> Value {
    toml_edit::de::from_str(text).unwrap()
}
