//! The shipped unit: directives the daemon depends on, agreement with the example config, and
//! `scripts/check-systemd.sh` (verify + security score) when systemd-analyze is installed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `[Service]` (and other sections') `Key=value` lines, in order, comments skipped.
fn directives() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("systemd/lmnt-bridge.service")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn values(all: &[(String, String)], key: &str) -> Vec<String> {
    all.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn one(all: &[(String, String)], key: &str) -> String {
    let v = values(all, key);
    assert_eq!(v.len(), 1, "{key} should appear once: {v:?}");
    v[0].clone()
}

/// Parses `30s`, `2min`, `45` (seconds) as systemd does for the forms used in the unit.
fn seconds(value: &str) -> Duration {
    let (num, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("time span {value}"));
    match unit {
        "" | "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        other => panic!("unit {other} in {value}"),
    }
}

#[test]
fn unit_has_what_the_daemon_needs() {
    let d = directives();
    assert_eq!(one(&d, "Type"), "notify");
    assert_eq!(one(&d, "NotifyAccess"), "main");
    assert!(seconds(&one(&d, "WatchdogSec")) >= Duration::from_secs(10));
    assert_eq!(
        one(&d, "ExecStart"),
        "/usr/bin/lmnt-bridge serve --config /etc/lmnt-bridge/config.toml"
    );
    assert_eq!(one(&d, "Restart"), "on-failure");
    assert!(one(&d, "RestartPreventExitStatus")
        .split_whitespace()
        .any(|s| s == "78"));
    assert_eq!(one(&d, "KillMode"), "mixed");
    assert_eq!(one(&d, "DynamicUser"), "yes");
    let creds = values(&d, "LoadCredential");
    for name in ["lmnt-api-key", "bearer-tokens"] {
        assert!(
            creds
                .iter()
                .any(|c| c.starts_with(&format!("{name}:/etc/lmnt-bridge/"))),
            "{creds:?}"
        );
    }
    for env in values(&d, "Environment") {
        let upper = env.to_ascii_uppercase();
        assert!(
            !upper.contains("KEY") && !upper.contains("TOKEN"),
            "secret in Environment=: {env}"
        );
    }
    // Calls need UDP to any address, netlink for interface enumeration, AF_UNIX for notify.
    let families = one(&d, "RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{families}"
        );
    }
    for breaking in ["IPAddressDeny", "PrivateNetwork", "IPAddressAllow"] {
        assert!(
            values(&d, breaking).is_empty(),
            "{breaking}= would cut callers off"
        );
    }
    assert_eq!(one(&d, "CapabilityBoundingSet"), "");
}

#[test]
fn stop_timeout_covers_the_example_drain() {
    let example = Path::new(ROOT).join("systemd/config.toml");
    let env = |key: &str| (key == "LMNT_API_KEY").then(|| "k".to_string());
    let config = lmnt_bridge::config::load(Some(&example), None, &env).unwrap();
    let drain = Duration::from_millis(config.server.drain_timeout_ms);
    let stop = seconds(&one(&directives(), "TimeoutStopSec"));
    assert!(
        stop >= drain + Duration::from_secs(5),
        "TimeoutStopSec {stop:?} vs drain {drain:?}"
    );
}

#[test]
fn check_systemd_script_passes() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    }
    let out = Command::new(Path::new(ROOT).join("scripts/check-systemd.sh"))
        .env("LMNT_BRIDGE_BIN", env!("CARGO_BIN_EXE_lmnt-bridge"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("check-systemd: verify ok"), "{stdout}");
    assert!(
        stdout.contains("check-systemd: security exposure"),
        "{stdout}"
    );
}

#[test]
fn check_systemd_script_rejects_a_typo_and_a_weak_unit() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    }
    let shipped =
        std::fs::read_to_string(Path::new(ROOT).join("systemd/lmnt-bridge.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let typo = shipped.replace("ProtectHome=yes", "ProtectHom=yes");
    let weak: String = shipped
        .lines()
        .filter(|l| {
            !l.starts_with("Protect") && !l.starts_with("Private") && !l.starts_with("SystemCall")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for (name, body, want) in [
        ("typo", typo, "verify reported problems"),
        ("weak", weak, "is above 2.0"),
    ] {
        let unit = dir.path().join(name).join("lmnt-bridge.service");
        std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
        std::fs::write(&unit, body).unwrap();
        let out = Command::new(Path::new(ROOT).join("scripts/check-systemd.sh"))
            .env("LMNT_BRIDGE_BIN", env!("CARGO_BIN_EXE_lmnt-bridge"))
            .env("LMNT_BRIDGE_UNIT", &unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} unit passed");
        assert!(stderr.contains(want), "{name}: {stderr}");
    }
}
