//! Build facts for `GET /api/v1/build-information`: the commit, its time and branch, the
//! compiler, the profile and the target. Each comes from git, rustc or cargo when they can
//! tell, else it reads "unknown"; nothing here fails the build.

use std::process::Command;

fn run(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn set(name: &str, value: Option<String>) {
    let value = value.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env={name}={value}");
}

fn main() {
    // Rebuild when the checked-out commit moves, not on every source change.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    set("NYM_MIXNODE_COMMIT_SHA", run("git", &["rev-parse", "HEAD"]));
    set(
        "NYM_MIXNODE_COMMIT_TIMESTAMP",
        run("git", &["log", "-1", "--format=%cI"]),
    );
    set(
        "NYM_MIXNODE_COMMIT_BRANCH",
        run("git", &["rev-parse", "--abbrev-ref", "HEAD"]),
    );
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let verbose = run(&rustc, &["-vV"]).unwrap_or_default();
    let release = verbose
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .map(str::to_string);
    let channel = release.as_deref().map(|r| {
        if r.contains("nightly") {
            "nightly"
        } else if r.contains("beta") {
            "beta"
        } else {
            "stable"
        }
        .to_string()
    });
    set("NYM_MIXNODE_RUSTC_VERSION", release);
    set("NYM_MIXNODE_RUSTC_CHANNEL", channel);
    set("NYM_MIXNODE_CARGO_PROFILE", std::env::var("PROFILE").ok());
    set("NYM_MIXNODE_CARGO_TRIPLE", std::env::var("TARGET").ok());
    // The build time: SOURCE_DATE_EPOCH for reproducible builds, else now.
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    set(
        "NYM_MIXNODE_BUILD_TIMESTAMP",
        Some(humantime::format_rfc3339_seconds(at).to_string()),
    );
}
