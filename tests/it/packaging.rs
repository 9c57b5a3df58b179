//! What ships beside the binary: the systemd unit and the example
//! configuration.

use std::process::Command;

use backstop_tests::backstop_bin;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_systemd_unit_verifies_without_a_word() {
    let unit = std::fs::read_to_string(repo().join("systemd/backstop.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/backstop run"));
    for directive in [
        "StateDirectory=backstop",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive:?}");
    }
    // Point ExecStart at the binary just built, so verify can check it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backstop.service");
    let bin = backstop_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/backstop", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify said:\n{said}"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let out = Command::new(backstop_bin())
        .args(["validate", "--config"])
        .arg(repo().join("config.example.toml"))
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
