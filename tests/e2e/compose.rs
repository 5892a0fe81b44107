//! docker-compose.yml and the Dockerfile, checked statically.
//!
//! No Docker engine runs where this suite runs, so these tests cannot start the
//! stack. They catch the mistakes that are ours rather than Docker's: a service
//! running a subcommand that was renamed, a misspelt `SLUICE_…` variable (the
//! program would refuse it at start), a bind mount of a file that does not exist,
//! a dependency on a missing service, a worker that cannot scale, an image that
//! does not run `sluice`, a health check calling a program the image lacks. The
//! monitoring services must agree with dashboards/: Prometheus scrapes the port
//! the workers listen on, Grafana loads the dashboards from where its
//! provisioning looks. Each check is tested on a snippet that breaks it.

use crate::harness::sluice_bin;
use serde_yaml::Value;
use std::path::PathBuf;
use std::process::Command;

/// What the compose file may refer to.
struct Known {
    /// Subcommands of `sluice`, from its `--help`.
    subcommands: Vec<String>,
    /// Variables the CLI reads for its flags (`SLUICE_BROKERS`, …), from `--help`.
    flag_env: Vec<String>,
    /// config/sluice.toml: every setting, for `SLUICE_<SECTION>__<FIELD>`.
    config: toml::Table,
    /// Where relative paths in the compose file start.
    root: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let p = root().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn config() -> toml::Table {
    read("config/sluice.toml")
        .parse()
        .expect("config/sluice.toml parses")
}

/// The built binary's `--help`.
fn help() -> String {
    let out = Command::new(sluice_bin())
        .arg("--help")
        .output()
        .expect("run sluice --help");
    assert!(out.status.success(), "sluice --help failed");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// Subcommand names from clap's `Commands:` section: lines indented by exactly
/// two spaces (deeper lines continue a description).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Environment variables clap reads for flags, from `[env: NAME=…]`.
fn flag_env(help: &str) -> Vec<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_string)
        .collect()
}

fn known_from_binary() -> Known {
    let help = help();
    Known {
        subcommands: subcommands(&help),
        flag_env: flag_env(&help),
        config: config(),
        root: root(),
    }
}

/// True when the program reads `name`: a flag's variable, or
/// `SLUICE_<SECTION>__<FIELD>` naming a setting in config/sluice.toml. A table
/// listed empty there (`[kafka.librdkafka_options]`) is an open map: any key.
fn program_reads(name: &str, known: &Known) -> bool {
    if known.flag_env.iter().any(|v| v == name) {
        return true;
    }
    let Some(path) = name.strip_prefix("SLUICE_") else {
        return false;
    };
    let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
    if parts.len() < 2 {
        return false;
    }
    let mut table = &known.config;
    for (i, part) in parts.iter().enumerate() {
        match table.get(part) {
            Some(toml::Value::Table(t)) if t.is_empty() => return true,
            Some(toml::Value::Table(t)) => table = t,
            Some(_) => return i == parts.len() - 1,
            None => return false,
        }
    }
    false
}

/// First word of a service's command, in list or string form.
fn first_word(command: &Value) -> Option<String> {
    match command {
        Value::Sequence(items) => items.first()?.as_str().map(str::to_string),
        Value::String(s) => s.split_whitespace().next().map(str::to_string),
        _ => None,
    }
}

/// A service runs the Sluice image when it builds it or names it.
fn runs_sluice(svc: &Value) -> bool {
    if svc.get("build").is_some() {
        return true;
    }
    svc.get("image")
        .and_then(Value::as_str)
        .and_then(|i| i.split(':').next())
        .and_then(|repo| repo.rsplit('/').next())
        .is_some_and(|name| name == "sluice")
}

/// Keys of a mapping, or the strings of a list (`depends_on`, `environment`).
fn names(v: &Value) -> Vec<String> {
    match v {
        Value::Mapping(m) => m
            .keys()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.split('=').next().unwrap_or(s).to_string())
            .collect(),
        _ => vec![],
    }
}

fn is_relative_path(source: &str) -> bool {
    source == "." || source.starts_with("./") || source.starts_with("../")
}

/// Every problem in `compose`, one message each; empty when it is sound.
fn check(compose: &str, known: &Known) -> Vec<String> {
    let doc: Value = match serde_yaml::from_str(compose) {
        Ok(d) => d,
        Err(e) => return vec![format!("does not parse as YAML: {e}")],
    };
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        return vec!["no `services` mapping".into()];
    };
    let service_names: Vec<String> = names(&Value::Mapping(services.clone()));
    let volume_names: Vec<String> = doc.get("volumes").map(names).unwrap_or_default();
    let mut problems = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap_or("?");
        let mut say = |p: String| problems.push(format!("service `{name}`: {p}"));

        let sluice_command = if runs_sluice(svc) {
            if svc.get("entrypoint").is_some() {
                say("replaces the image's `sluice` entrypoint".into());
            }
            let word = svc.get("command").and_then(first_word);
            match &word {
                None => say("runs sluice without a command (the image's default is --help)".into()),
                Some(w) if !known.subcommands.contains(w) => say(format!(
                    "`{w}` is not a sluice subcommand (sluice has: {})",
                    known.subcommands.join(", ")
                )),
                Some(_) => {}
            }
            word
        } else {
            None
        };

        if sluice_command.as_deref() == Some("worker") {
            if svc.get("container_name").is_some() {
                say("a worker with a container_name cannot be scaled".into());
            }
            if svc.get("ports").is_some() {
                say("a worker publishing host ports cannot be scaled".into());
            }
        }

        if sluice_command.is_some() {
            if let Some(p) = svc
                .get("healthcheck")
                .and_then(|h| h.get("test"))
                .and_then(|t| healthcheck_problem(t, known))
            {
                say(p);
            }
        }

        for dep in svc.get("depends_on").map(names).unwrap_or_default() {
            if !service_names.contains(&dep) {
                say(format!("depends on `{dep}`, which is not a service"));
            }
        }

        for var in svc.get("environment").map(names).unwrap_or_default() {
            if var.starts_with("SLUICE_") && !program_reads(&var, known) {
                say(format!(
                    "sets `{var}`, which sluice does not read (see config/sluice.toml)"
                ));
            }
        }

        for volume in svc
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let source = match volume {
                Value::String(s) => s.split(':').next().unwrap_or("").to_string(),
                Value::Mapping(_) => volume
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                _ => continue,
            };
            if is_relative_path(&source) {
                if !known.root.join(&source).exists() {
                    say(format!("bind-mounts `{source}`, which does not exist"));
                }
            } else if !source.starts_with('/')
                && !source.is_empty()
                && !volume_names.contains(&source)
            {
                say(format!(
                    "uses volume `{source}`, not declared under `volumes`"
                ));
            }
        }

        if let Some(build) = svc.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_string()),
                _ => (
                    build
                        .get("context")
                        .and_then(Value::as_str)
                        .unwrap_or(".")
                        .to_string(),
                    build
                        .get("dockerfile")
                        .and_then(Value::as_str)
                        .unwrap_or("Dockerfile")
                        .to_string(),
                ),
            };
            let file = known.root.join(&context).join(&dockerfile);
            if !file.is_file() {
                say(format!(
                    "builds from `{context}/{dockerfile}`, which does not exist"
                ));
            }
        }
    }
    problems
}

/// What is wrong with the health check `test` of a service running the Sluice
/// image, which holds `sluice` and a shell but no HTTP client.
fn healthcheck_problem(test: &Value, known: &Known) -> Option<String> {
    let words: Vec<String> = match test {
        Value::Sequence(items) => {
            let items: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            match items.split_first() {
                Some((&"CMD", rest)) => rest.iter().map(|s| s.to_string()).collect(),
                Some((&"CMD-SHELL", [cmd])) => cmd.split_whitespace().map(str::to_string).collect(),
                Some((&"NONE", _)) => return None,
                _ => {
                    return Some(format!(
                        "health check test {items:?} is not CMD, CMD-SHELL or NONE"
                    ))
                }
            }
        }
        Value::String(cmd) => cmd.split_whitespace().map(str::to_string).collect(),
        _ => return Some("health check test is neither a list nor a string".into()),
    };
    let program = words.first().map(String::as_str).unwrap_or("");
    if program != "sluice" && !program.ends_with("/sluice") {
        return Some(format!(
            "health check runs `{program}`, which the sluice image lacks; use `sluice health`"
        ));
    }
    match words.get(1) {
        Some(sub) if known.subcommands.contains(sub) => None,
        other => Some(format!(
            "health check runs `sluice {}`, not a sluice subcommand",
            other.map(String::as_str).unwrap_or("")
        )),
    }
}

/// Instructions of a Dockerfile, with continuations joined and comments dropped.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

/// Every problem with the Dockerfile's final (runtime) stage.
fn check_dockerfile(dockerfile: &str) -> Vec<String> {
    let all = instructions(dockerfile);
    let Some(last_from) = all.iter().rposition(|(op, _)| op == "FROM") else {
        return vec!["no FROM".into()];
    };
    let last = &all[last_from..];
    let mut problems = Vec::new();
    let entrypoint = last.iter().rev().find(|(op, _)| op == "ENTRYPOINT");
    match entrypoint {
        None => problems.push("the final stage has no ENTRYPOINT".into()),
        Some((_, args)) => {
            let program = serde_json::from_str::<Vec<String>>(args)
                .ok()
                .and_then(|v| v.into_iter().next())
                .unwrap_or_else(|| args.split_whitespace().next().unwrap_or("").to_string());
            if program != "sluice" && !program.ends_with("/sluice") {
                problems.push(format!(
                    "the final stage's ENTRYPOINT runs `{program}`, not sluice"
                ));
            }
        }
    }
    match last.iter().rev().find(|(op, _)| op == "USER") {
        None => problems.push("the final stage runs as root (no USER)".into()),
        Some((_, user)) if ["root", "0", "root:root", "0:0"].contains(&user.as_str()) => {
            problems.push(format!("the final stage runs as `{user}`"))
        }
        Some(_) => {}
    }
    problems
}

#[test]
fn the_compose_file_passes_every_check() {
    let known = known_from_binary();
    let problems = check(&read("docker-compose.yml"), &known);
    assert!(
        problems.is_empty(),
        "docker-compose.yml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_compose_file_has_the_services_the_readme_uses() {
    let doc: Value = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    let services = &doc["services"];
    for s in ["kafka", "topics", "worker", "producer"] {
        assert!(services.get(s).is_some(), "no `{s}` service");
    }
    assert_eq!(services["worker"]["deploy"]["replicas"].as_u64(), Some(3));
    assert_eq!(services["producer"]["profiles"][0].as_str(), Some("tools"));
    assert_eq!(
        services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].as_str(),
        Some("false")
    );
    let env = &services["worker"]["environment"];
    assert_eq!(env["SLUICE_BROKERS"].as_str(), Some("kafka:9092"));
    // The topics the workers use are the ones the `topics` service creates.
    let create = services["topics"]["command"][0].as_str().unwrap();
    let cfg = config();
    for key in ["tasks", "results", "jobs"] {
        let topic = cfg["topics"][key].as_str().unwrap();
        assert!(create.contains(topic), "`topics` does not create {topic}");
    }
}

/// The target of the bind mount of `source` in `svc`.
fn mount_target(svc: &Value, source: &str) -> Option<String> {
    svc["volumes"].as_sequence()?.iter().find_map(|v| {
        let mut parts = v.as_str()?.split(':');
        if parts.next()? != source {
            return None;
        }
        parts.next().map(str::to_string)
    })
}

fn yaml_file(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn prometheus_and_grafana_see_the_workers_and_the_dashboards() {
    let doc: Value = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    let services = &doc["services"];
    let worker = &services["worker"];
    assert_eq!(
        worker["healthcheck"]["test"],
        serde_yaml::from_str::<Value>(r#"["CMD", "sluice", "health"]"#).unwrap(),
        "workers report readiness"
    );

    // Prometheus finds the workers by the service's DNS name, on their port.
    let listen = worker["environment"]["SLUICE_METRICS__LISTEN"]
        .as_str()
        .expect("workers set SLUICE_METRICS__LISTEN");
    let (host, port) = listen.rsplit_once(':').unwrap();
    assert_eq!(host, "0.0.0.0", "other containers must reach the endpoint");
    let prom = &services["prometheus"];
    assert_eq!(
        mount_target(prom, "./dashboards/prometheus.yml").as_deref(),
        Some("/etc/prometheus/prometheus.yml")
    );
    let config = yaml_file("dashboards/prometheus.yml");
    let sd = &config["scrape_configs"][0]["dns_sd_configs"][0];
    assert_eq!(sd["type"].as_str(), Some("A"));
    assert_eq!(sd["names"][0].as_str(), Some("worker"));
    assert_eq!(
        sd["port"].as_u64().map(|p| p.to_string()).as_deref(),
        Some(port)
    );
    // The rule file it names is mounted beside it.
    let rules = config["rule_files"][0].as_str().unwrap();
    assert_eq!(
        mount_target(prom, &format!("./dashboards/{rules}")),
        Some(format!("/etc/prometheus/{rules}"))
    );
    assert_eq!(prom["ports"][0].as_str(), Some("9090:9090"));

    // Grafana: data source at the prometheus service, dashboards where the
    // provider looks, anonymous viewers, the overview as home.
    let grafana = &services["grafana"];
    assert_eq!(grafana["ports"][0].as_str(), Some("3000:3000"));
    assert_eq!(
        mount_target(grafana, "./dashboards/provisioning").as_deref(),
        Some("/etc/grafana/provisioning")
    );
    let provider = &yaml_file("dashboards/provisioning/dashboards/sluice.yml")["providers"][0];
    let path = provider["options"]["path"].as_str().unwrap();
    assert_eq!(mount_target(grafana, "./dashboards").as_deref(), Some(path));
    let source = &yaml_file("dashboards/provisioning/datasources/prometheus.yml")["datasources"][0];
    assert_eq!(source["url"].as_str(), Some("http://prometheus:9090"));
    assert!(services.get("prometheus").is_some());
    let env = &grafana["environment"];
    assert_eq!(env["GF_AUTH_ANONYMOUS_ENABLED"].as_str(), Some("true"));
    let home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    let file = home
        .strip_prefix(path)
        .expect("the home dashboard is one of the provisioned ones");
    let local = root().join("dashboards").join(file.trim_start_matches('/'));
    assert!(local.is_file(), "{home}: no {}", local.display());
}

#[test]
fn the_dockerfile_runs_sluice_as_a_non_root_user() {
    let problems = check_dockerfile(&read("Dockerfile"));
    assert!(problems.is_empty(), "Dockerfile:\n{}", problems.join("\n"));
}

#[test]
fn subcommands_and_flag_variables_come_from_the_binary() {
    let known = known_from_binary();
    for s in ["broker", "worker", "produce", "results", "status"] {
        assert!(
            known.subcommands.iter().any(|k| k == s),
            "{s}: {:?}",
            known.subcommands
        );
    }
    assert!(
        !known.subcommands.iter().any(|k| k == "Run"),
        "{:?}",
        known.subcommands
    );
    for v in ["SLUICE_BROKERS", "SLUICE_CONFIG"] {
        assert!(
            known.flag_env.iter().any(|k| k == v),
            "{v}: {:?}",
            known.flag_env
        );
    }
    let sample = "Usage: x\n\nCommands:\n  alpha  Does a\n         and more\n  beta   Does b\n\nOptions:\n  -b <B>  [env: X_B=]\n";
    assert_eq!(subcommands(sample), ["alpha", "beta"]);
    assert_eq!(flag_env(sample), ["X_B"]);
}

fn test_known() -> Known {
    Known {
        subcommands: vec!["worker".into(), "produce".into()],
        flag_env: vec!["SLUICE_BROKERS".into()],
        config: config(),
        root: root(),
    }
}

#[test]
fn each_kind_of_compose_mistake_is_caught() {
    let bad = r#"
services:
  kafka:
    image: apache/kafka:3.9.0
    environment:
      SLUICE_WORKER__CONCURRENCY_MAX: "4"
  worker:
    build: .
    command: ["worker"]
    container_name: the-worker
    ports: ["8080:8080"]
    depends_on: [kafka, zookeeper]
    environment:
      SLUICE_BROKERS: kafka:9092
      SLUICE_BROKER: kafka:9092
      SLUICE_WORKER__CONCURENCY: "8"
      SLUICE_KAFKA__LIBRDKAFKA_OPTIONS__DEBUG: "all"
      - not: valid
  producer:
    image: sluice:latest
    command: wroker --id x
    depends_on:
      kafka:
        condition: service_healthy
    volumes:
      - ./config:/etc/sluice:ro
      - ./no/such/dir:/data
      - undeclared:/var/lib/x
  shell:
    image: ghcr.io/someone/sluice
    entrypoint: ["/bin/sh"]
  builder:
    build:
      context: ./no-such-context
  probed:
    image: sluice:latest
    command: ["worker"]
    healthcheck:
      test: ["CMD-SHELL", "curl -f http://localhost:9464/health/ready"]
  misprobed:
    image: sluice:latest
    command: ["worker"]
    healthcheck:
      test: ["CMD", "sluice", "helth"]
"#;
    // The snippet above is not valid YAML (a list item inside a mapping): fix
    // that first, and check it is reported as a parse error.
    let parse = check(bad, &test_known());
    assert_eq!(parse.len(), 1, "{parse:?}");
    assert!(parse[0].contains("does not parse"), "{parse:?}");

    let bad = bad.replace("      - not: valid\n", "");
    let problems = check(&bad, &test_known());
    let expect = [
        "service `kafka`: sets `SLUICE_WORKER__CONCURRENCY_MAX`",
        "service `worker`: a worker with a container_name",
        "service `worker`: a worker publishing host ports",
        "service `worker`: depends on `zookeeper`",
        "service `worker`: sets `SLUICE_BROKER`,",
        "service `worker`: sets `SLUICE_WORKER__CONCURENCY`",
        "service `producer`: `wroker` is not a sluice subcommand",
        "service `producer`: bind-mounts `./no/such/dir`",
        "service `producer`: uses volume `undeclared`",
        "service `shell`: replaces the image's `sluice` entrypoint",
        "service `shell`: runs sluice without a command",
        "service `builder`: runs sluice without a command",
        "service `builder`: builds from `./no-such-context/Dockerfile`",
        "service `probed`: health check runs `curl`, which the sluice image lacks",
        "service `misprobed`: health check runs `sluice helth`, not a sluice subcommand",
    ];
    for e in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "not caught: {e}\nproblems:\n{}",
            problems.join("\n")
        );
    }
    // Nothing else: the valid settings (SLUICE_BROKERS, a librdkafka option, an
    // existing bind mount, a mapping-form depends_on) pass.
    assert_eq!(problems.len(), expect.len(), "{}", problems.join("\n"));
}

#[test]
fn environment_names_follow_the_configuration() {
    let k = test_known();
    for ok in [
        "SLUICE_BROKERS",
        "SLUICE_WORKER__CONCURRENCY",
        "SLUICE_LOG__FORMAT",
        "SLUICE_TOPICS__TASKS",
        "SLUICE_KAFKA__LIBRDKAFKA_OPTIONS__DEBUG",
    ] {
        assert!(program_reads(ok, &k), "{ok}");
    }
    for bad in [
        "SLUICE_CONFIGS",
        "SLUICE_WORKER",
        "SLUICE_WORKER_CONCURRENCY",
        "SLUICE_WORKER__NOPE",
        "SLUICE_NOPE__CONCURRENCY",
        "SLUICE_WORKER__CONCURRENCY__X",
    ] {
        assert!(!program_reads(bad, &k), "{bad}");
    }
}

#[test]
fn dockerfile_mistakes_are_caught() {
    let builder_only = "FROM rust:1 AS build\nENTRYPOINT [\"sluice\"]\nUSER app\nFROM debian:bookworm-slim\nCOPY --from=build /x /y\n";
    let p = check_dockerfile(builder_only);
    assert_eq!(
        p,
        [
            "the final stage has no ENTRYPOINT",
            "the final stage runs as root (no USER)"
        ]
    );
    let wrong = "FROM debian\nUSER 0\nENTRYPOINT [\"bash\", \\\n  \"-c\"]\n";
    assert_eq!(
        check_dockerfile(wrong),
        [
            "the final stage's ENTRYPOINT runs `bash`, not sluice",
            "the final stage runs as `0`"
        ]
    );
    let shell_form = "FROM debian\nUSER sluice\n# ENTRYPOINT [\"bash\"]\nENTRYPOINT /usr/local/bin/sluice worker\n";
    assert!(check_dockerfile(shell_form).is_empty());
    assert_eq!(check_dockerfile(""), ["no FROM"]);
}
