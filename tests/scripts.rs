//! The operator scripts in `scripts/` and the unit in `tuning/`: help, install into a temporary
//! root (twice, and refused without root), a two-node localnet, a short bench, and
//! `systemd-analyze verify` when it is installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_success, stderr, stdout};

fn script(name: &str) -> Command {
    let mut cmd = Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name),
    );
    cmd.env_remove("DESTDIR").env_remove("RUST_LOG");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn script")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Every file under `root` with its bytes and mode, sorted by path.
fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let bytes = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            out.push((
                path.strip_prefix(root).unwrap().to_path_buf(),
                bytes,
                meta.permissions().mode(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn every_script_has_help() {
    for name in ["install", "localnet", "bench"] {
        let out = run(script(name).arg("--help"));
        assert_success(&out);
        assert!(
            stdout(&out).starts_with("Usage:"),
            "{name}: {}",
            stdout(&out)
        );
        let out = run(script(name).arg("--no-such-flag-xyz"));
        assert!(!out.status.success(), "{name} accepts a bad flag");
        assert!(stderr(&out).contains("error"), "{name}: {}", stderr(&out));
    }
}

#[test]
fn install_into_a_temporary_root_is_idempotent() {
    if !is_root() {
        common::visible_note("skipped: install into a temporary root needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let install = || {
        run(script("install").env("DESTDIR", root.path()).args([
            "--binary",
            env!("CARGO_BIN_EXE_nym-mixnode"),
            "--id",
            "n1",
        ]))
    };
    let out = install();
    assert_success(&out);
    let first = tree(root.path());
    let names: Vec<String> = first
        .iter()
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    for expected in [
        "usr/local/bin/nym-mixnode",
        "etc/systemd/system/nym-mixnode.service",
        "etc/sysctl.d/99-nym-mixnode.conf",
        "etc/default/nym-mixnode",
        "var/lib/nym-mixnode",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    let out = install();
    assert_success(&out);
    assert_eq!(tree(root.path()), first, "a second install changes nothing");
    let default = std::fs::read_to_string(root.path().join("etc/default/nym-mixnode")).unwrap();
    assert!(default.contains("NYM_MIXNODE_ID=n1"), "{default}");
}

#[test]
fn install_refuses_without_root() {
    if !is_root() {
        let out = run(&mut script("install"));
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("must run as root"),
            "{}",
            stderr(&out)
        );
        return;
    }
    // As root, drop to nobody for the script.
    let root = tempfile::tempdir().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install");
    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&path)
        .env("DESTDIR", root.path()));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("must run as root"),
        "{}",
        stderr(&out)
    );
    assert!(tree(root.path()).is_empty(), "nothing was written");
}

#[test]
fn localnet_runs_two_nodes_that_mix_and_stop_cleanly() {
    let out = run(script("localnet")
        .args(["2", "--count", "3"])
        .env("NYM_MIXNODE_BIN", env!("CARGO_BIN_EXE_nym-mixnode")));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert_eq!(text.matches("MIXING: all 3").count(), 2, "{text}");
    // Each probe's packets crossed both nodes: a packet layered for a route of two nodes only
    // comes back if each of them unwrapped and forwarded it.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("Probing ") && l.contains(" -> "))
            .count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches("stopped cleanly").count(), 2, "{text}");
    assert_eq!(text.matches("\"status\":\"up\"").count(), 2, "{text}");
    // The links were Noise: each node answered the probe's handshake and made its own to the
    // other node (the topology lists every node with its Noise key).
    let noise_lines: Vec<&str> = text.lines().filter(|l| l.contains(": noise ")).collect();
    assert_eq!(noise_lines.len(), 2, "{text}");
    for line in noise_lines {
        for role in ["responder", "initiator"] {
            let count = line
                .split(&format!("{{role=\"{role}\"}} "))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok());
            assert!(count.is_some_and(|n| n > 0), "{role} handshakes in {line}");
        }
    }
    assert!(text.contains("localnet: OK"), "{text}");
}

#[test]
fn bench_runs_each_shard_count_and_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let out = run(script("bench")
        .arg("2")
        .arg("--report")
        .arg(&report)
        .args(["--duration", "1", "--rate", "300", "--held-packets", "4"])
        .env("BENCH_MIX_BIN", env!("CARGO_BIN_EXE_bench-mix")));
    assert_success(&out);
    assert!(stdout(&out).contains("--cores 1,2"), "{}", stdout(&out));
    assert!(std::fs::metadata(&report).unwrap().len() > 0);
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !common::tool_present(
        "systemd-analyze",
        "the unit check (apt-get install systemd)",
    ) {
        return;
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/nym-mixnode.service"),
    )
    .unwrap();
    for line in [
        "LimitNOFILE=65536",
        "LimitMEMLOCK=",
        "KillSignal=SIGINT",
        "Restart=on-failure",
        "User=nym",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit");
    }
    // ExecStart must name an existing executable: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nym-mixnode.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/nym-mixnode",
            env!("CARGO_BIN_EXE_nym-mixnode"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    // verify exits 0 on unknown keys and bad values too; it reports them on stderr.
    assert_success(&out);
    assert!(
        !stderr(&out).contains("nym-mixnode.service"),
        "systemd-analyze verify complained:\n{}",
        stderr(&out)
    );
}
