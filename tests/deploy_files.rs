//! The deployment files under `deploy/`: the Kubernetes manifests against the Kubernetes
//! schemas (`kubernetes-validate`, pinned in tests/peers/requirements.txt, strict: an unknown
//! field fails), their configuration as `check-config` reads it, the drain fitting in the
//! termination grace period; the HAProxy configuration as `haproxy -c` reads it.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lmnt-bridge");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const MANIFEST: &str = "deploy/kubernetes/lmnt-bridge.yaml";

/// The block scalar `config.toml: |` of the ConfigMap, unindented.
fn embedded_config(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "config.toml: |");
    lines.next().expect("a config.toml in the ConfigMap");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The integer after `key:` or `key =` on the first line that has it.
fn number_after(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix(key)?;
            let rest = rest.trim_start_matches([':', '=', ' ']);
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {key} in the manifest"))
}

#[test]
fn kubernetes_manifests_pass_the_schemas_and_drain_within_the_grace_period() {
    let validator = format!("{ROOT}/.venv/bin/kubernetes-validate");
    assert!(
        Path::new(&validator).exists(),
        "{validator} is missing: run `make test` (it installs tests/peers/requirements.txt)"
    );
    let out = Command::new(&validator)
        .args(["--strict", "--quiet"])
        .arg(format!("{ROOT}/{MANIFEST}"))
        .output()
        .expect("run kubernetes-validate");
    assert_succeeded(&out);

    let yaml = std::fs::read_to_string(format!("{ROOT}/{MANIFEST}")).unwrap();
    let config = embedded_config(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &config).unwrap();
    // The pod's credentials as the manifest mounts them (the Secret's `bearer-tokens`): its
    // listener is not on loopback, so the daemon refuses to start without tokens.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(
        credentials.join("bearer-tokens"),
        "k8s-test-token-0123456789\n",
    )
    .unwrap();
    let check = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("LMNT_BASE_URL", "http://127.0.0.1:7070")
        .env("LMNT_BRIDGE_NODE_ID", "lmnt-bridge-0")
        .env_remove("LMNT_API_KEY")
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the ConfigMap's config.toml:\n{config}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let drain_ms = number_after(&config, "drain_timeout_ms");
    let grace_s = number_after(&yaml, "terminationGracePeriodSeconds");
    assert!(
        grace_s * 1000 > drain_ms,
        "terminationGracePeriodSeconds ({grace_s} s) must exceed drain_timeout_ms ({drain_ms})"
    );
    for needed in ["path: /readyz", "preStop:", "kill -TERM 1", "protocol: UDP"] {
        assert!(yaml.contains(needed), "the StatefulSet lacks {needed:?}");
    }
}

#[test]
fn the_haproxy_configuration_is_valid() {
    let out = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(format!("{ROOT}/deploy/haproxy/haproxy.cfg"))
        .output()
        .expect("haproxy: install Debian's haproxy package (scripts/install-deps.sh)");
    assert_succeeded(&out);
}

/// A validator's verdict: it exited 0, else its output is the failure message.
fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
