//! bench-mix runs end to end and reports consistent figures. This checks that the benchmark
//! works, not how fast anything is: a short open-loop run at a low rate.

use std::process::Command;

#[test]
fn bench_mix_runs_and_its_json_accounts_for_every_packet() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_bench-mix"))
        .args([
            "--cores",
            "1",
            "--duration",
            "1.5",
            "--rate",
            "400",
            "--delay-ms",
            "5",
            "--size",
            "ack",
            "--held-packets",
            "8",
            "--noise",
            "--json",
            "--report",
        ])
        .arg(&report)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench-mix failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    // --noise: a plain run, then a Noise run (generator to node, node to sink).
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v}");
    assert_eq!(
        (runs[0]["noise"].as_bool(), runs[1]["noise"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(runs[0]["noise_handshakes"], serde_json::json!([0, 0]));
    let handshakes = runs[1]["noise_handshakes"].as_array().unwrap();
    assert!(
        handshakes.iter().all(|h| h.as_u64().unwrap() > 0),
        "the node answered the generator's handshakes and made its own to the sink: {handshakes:?}"
    );
    assert_eq!(runs[1]["noise_failures"], 0);
    assert_eq!(
        runs[1]["arrived"], runs[1]["sent"],
        "every packet crosses over Noise"
    );
    assert_eq!(v["noise_ratios"].as_array().unwrap().len(), 1);
    // One shard hands nothing to another.
    assert_eq!(runs[0]["handoffs_per_packet"].as_f64(), Some(0.0));
    assert_eq!(runs[0]["doorbells_per_packet"].as_f64(), Some(0.0));
    assert_eq!(runs[0]["batches_per_packet"].as_f64(), Some(0.0));
    // The shard's own system calls: a positive figure where the kernel lets the node count
    // them (root or CAP_PERFMON), null elsewhere.
    match runs[0]["syscalls_per_packet"].as_f64() {
        Some(calls) => assert!(calls > 0.0 && calls < 50.0, "{calls} syscalls per packet"),
        None => assert!(runs[0]["syscalls_per_packet"].is_null(), "{}", runs[0]),
    }
    let run = &v["runs"][0];
    assert_eq!(run["cores"], 1);
    let sent = run["sent"].as_u64().unwrap();
    assert!(sent > 0, "sent {sent}");
    assert_eq!(
        run["arrived"].as_u64().unwrap(),
        sent,
        "every packet sent arrives once"
    );
    assert_eq!(run["unknown"], 0);
    assert!(
        run["drops"].as_object().unwrap().is_empty(),
        "no drops: {}",
        run["drops"]
    );
    // A rate, not a threshold: performance is judged by running bench-mix, not by a test.
    assert!(run["forwarded_per_s"].as_f64().unwrap() > 0.0);
    assert!(run["ceiling_per_s"].as_f64().unwrap() > 0.0);
    assert!(run["efficiency"].as_f64().unwrap() > 0.0);
    assert!(run["latency"]["count"].as_u64().unwrap() > 0);
    for key in ["p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(run["latency"][key].is_u64(), "{key}");
    }
    // Bytes per held packet, for every Sphinx size: the budget counts at least the packet.
    let held = v["held_bytes"].as_array().expect("held_bytes");
    assert_eq!(held.len(), 5, "{held:?}");
    for size in held {
        assert_eq!(size["packets"], 8, "{size}");
        let packet = size["packet_bytes"].as_f64().unwrap();
        assert!(
            size["budget_bytes_per_packet"].as_f64().unwrap() > packet,
            "{size}"
        );
    }
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("<svg") && html.contains("forwarded"),
        "report has plots"
    );
}
