//! `bench-mix`: measure the node's forwarding rate, latency and memory on this machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mimalloc::MiMalloc;
use nym_mixnode::bench::{self, BenchOptions, BenchResult};
use nym_mixnode::framing::SizeTag;
use nym_mixnode::sphinx::HopProcessorKind;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Start a node with N shards, a load generator and a sink on loopback, and measure.
#[derive(Parser, Debug)]
#[command(name = "bench-mix", version, about)]
struct Args {
    /// Shards to run; a list (e.g. 1,2) runs each in turn in one process, for scaling.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    cores: Vec<usize>,
    /// Seconds of load per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Open-loop rate in packets/s (for latency); without it the generator saturates.
    #[arg(long)]
    rate: Option<f64>,
    /// Delay each packet asks of the node, ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Packet size.
    #[arg(long, value_enum, default_value_t = Size::Regular)]
    size: Size,
    /// Hop processor(s) (`engine.hop_processor`): "fast", "crate", or a list such as
    /// crate,fast that runs every shard count with each in turn and reports fast over crate.
    #[arg(long, value_delimiter = ',', default_value = "fast")]
    hop_processor: Vec<HopProcessorKind>,
    /// Live Sphinx keys: 1 (one static key), 2 (two rotating keys; the packets are for the
    /// one that is not primary), or a list such as 1,2 that runs each and reports two over
    /// one.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u8).range(1..=2))]
    keys: Vec<u8>,
    /// With two keys, send frames with rotation byte 0 instead of the byte naming the key, so
    /// that the node tries its primary key first (the worst case: two scalar multiplications).
    #[arg(long)]
    unnamed_key: bool,
    /// Run every shard count over plain TCP and then over Noise (XKpsk3 from the generator to
    /// the node and from the node to the sink), and report Noise over plain.
    #[arg(long)]
    noise: bool,
    /// Packets held per packet size to measure bytes per held packet for every size, after
    /// the runs (0: skip).
    #[arg(long, default_value_t = 4000)]
    held_packets: usize,
    /// Output format: text, or one JSON object (as the node's commands take it).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
    /// The same as --output json.
    #[arg(long)]
    json: bool,
    /// Write an HTML (or, for a .svg name, SVG) report with plots.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Size {
    Regular,
    Ack,
    #[value(name = "8k")]
    Extended8,
    #[value(name = "16k")]
    Extended16,
    #[value(name = "32k")]
    Extended32,
}

impl From<Size> for SizeTag {
    fn from(s: Size) -> SizeTag {
        match s {
            Size::Regular => SizeTag::Regular,
            Size::Ack => SizeTag::Ack,
            Size::Extended8 => SizeTag::Extended8,
            Size::Extended16 => SizeTag::Extended16,
            Size::Extended32 => SizeTag::Extended32,
        }
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    args.json |= args.output == OutputFormat::Json;
    let duration_ok = args.duration.is_finite() && args.duration > 0.5;
    let rate_ok = args.rate.is_none_or(|r| r.is_finite() && r > 0.0);
    if args.hop_processor.is_empty() {
        eprintln!("error: --hop-processor needs \"fast\", \"crate\" or both");
        return ExitCode::FAILURE;
    }
    if args.cores.contains(&0) || !duration_ok || !rate_ok {
        eprintln!("error: --cores must be at least 1, --duration above 0.5 s, and --rate positive");
        return ExitCode::FAILURE;
    }
    let options = BenchOptions {
        cores: args.cores.clone(),
        duration: Duration::from_secs_f64(args.duration),
        rate: args.rate,
        delay: Duration::from_millis(args.delay_ms),
        size: args.size.into(),
        hop_processors: args.hop_processor.clone(),
        keys: args.keys.clone(),
        unnamed_key: args.unnamed_key,
        noise: if args.noise {
            vec![false, true]
        } else {
            vec![false]
        },
        progress: !args.json,
    };
    let mut result = match bench::run(&options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.held_packets > 0 {
        match bench::held::measure(args.held_packets, release_free_memory) {
            Ok(held) => result.held_bytes = held,
            Err(e) => {
                eprintln!("error: measuring bytes per held packet: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.json {
        match serde_json::to_string(&result) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_text(&result);
        print_held_bytes(&result);
    }
    if let Some(path) = args.report {
        if let Err(e) = bench::report::write(&result, &path) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        if !args.json {
            println!("report written to {}", path.display());
        }
    }
    ExitCode::SUCCESS
}

// mimalloc's own entry point (in the library the `mimalloc` crate links; its Rust wrapper is
// behind a feature this crate does not enable).
extern "C" {
    fn mi_collect(force: bool);
}

/// Return the memory mimalloc holds free to the system, on every thread's heap this one can
/// reach, so that resident memory measured next grows only with what is allocated.
fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called at any time.
    unsafe { mi_collect(true) }
}

fn print_held_bytes(result: &BenchResult) {
    if result.held_bytes.is_empty() {
        return;
    }
    println!();
    println!("bytes per held packet (one shard core, packets held in its wheel):");
    println!(
        "  {:<12} {:>8} {:>8} {:>14} {:>14} {:>18}",
        "size", "packet", "held", "budget counts", "resident grew", "resident / budget"
    );
    for h in &result.held_bytes {
        let resident = h.resident_bytes_per_packet;
        println!(
            "  {:<12} {:>8} {:>8} {:>14.0} {:>14} {:>18}",
            h.size,
            h.packet_bytes,
            h.packets,
            h.budget_bytes_per_packet,
            resident.map_or("-".to_string(), |b| format!("{b:.0}")),
            resident.map_or("-".to_string(), |b| format!(
                "{:.2}",
                b / h.budget_bytes_per_packet.max(1.0)
            ))
        );
    }
}

/// Microseconds as a person reads them: µs below a millisecond, ms below ten seconds, else s.
fn duration(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=9_999_999 => format!("{:.2} ms", us as f64 / 1000.0),
        _ => format!("{:.1} s", us as f64 / 1e6),
    }
}

fn print_text(result: &BenchResult) {
    println!(
        "packet size {}, requested delay {} ms",
        result.size, result.delay_ms
    );
    for r in &result.runs {
        println!();
        println!(
            "shards: {}   hop processor: {}   keys: {} (rotation byte {})   links: {}   window: {:.1} s{}",
            r.cores,
            r.hop_processor,
            r.keys,
            r.rotation_byte,
            if r.noise {
                format!(
                    "Noise ({} handshakes in, {} out, {} failed)",
                    r.noise_handshakes[0], r.noise_handshakes[1], r.noise_failures
                )
            } else {
                "plain TCP".to_string()
            },
            r.window_s,
            r.rate_asked
                .map_or(String::new(), |x| format!("   open-loop rate: {x:.0}/s"))
        );
        let per_shard: Vec<String> = r
            .forwarded_per_s_by_shard
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect();
        println!(
            "  forwarded:   {:.0} packets/s (per shard: {})",
            r.forwarded_per_s,
            per_shard.join(", ")
        );
        println!(
            "  ceiling:     {:.0} packets/s (sphinx process(), one thread; {:.0} before, {:.0} after the run)",
            r.ceiling_per_s, r.ceiling_before_after_per_s.0, r.ceiling_before_after_per_s.1
        );
        println!(
            "  vs crate:    {:.2}x the Sphinx crate's process() per shard (forwarded / (ceiling x {})); above 1 means faster than the crate",
            r.efficiency, r.cores
        );
        println!(
            "  hop step:    {:.0} packets/s = {:.2}x the crate (the node's own expand+finish, one thread, no I/O)",
            r.hop_step_per_s,
            r.hop_step_per_s / r.ceiling_per_s.max(1.0)
        );
        println!(
            "  crossings:   {:.3} handoffs in {:.3} batches and {:.3} doorbells per forwarded packet (the node's counters, in the window)",
            r.handoffs_per_packet, r.batches_per_packet, r.doorbells_per_packet
        );
        match r.syscalls_per_packet {
            Some(calls) => println!(
                "  syscalls:    {calls:.3} per forwarded packet (the kernel's count for the shards' threads)"
            ),
            None => println!(
                "  syscalls:    not counted (the node may not count a kernel tracepoint here: run as root or with CAP_PERFMON)"
            ),
        }
        println!(
            "  CPU (cores): node {:.2}, generator {:.2}, receiver {:.2}",
            r.cpu.node, r.cpu.generator, r.cpu.receiver
        );
        if r.rate_asked.is_none() {
            println!(
                "  added latency: not shown for a saturated run: packets queue in front of a node kept busy on purpose, so it measures the queue, not the node. Use --rate R for latency"
            );
        } else {
            println!(
                "  added latency: p50 {}, p99 {}, p99.9 {}, max {} ({} packets; generator write to sink read)",
                duration(r.latency.p50_us),
                duration(r.latency.p99_us),
                duration(r.latency.p999_us),
                duration(r.latency.max_us),
                r.latency.count
            );
        }
        println!(
            "  in node:       p50 {}, p99 {}, p99.9 {}, max {} ({} packets; the node's own measure, frame read to written)",
            duration(r.latency_in_node.p50_us),
            duration(r.latency_in_node.p99_us),
            duration(r.latency_in_node.p999_us),
            duration(r.latency_in_node.max_us),
            r.latency_in_node.count
        );
        println!(
            "  sent {}, arrived {}, unrecognised {}",
            r.sent, r.arrived, r.unknown
        );
        let drops: Vec<String> = r.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "  drops: {}",
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(", ")
            }
        );
        println!(
            "  memory: idle {:.1} MiB, peak {:.1} MiB, held peak {} packets{}",
            r.rss_idle_bytes as f64 / 1048576.0,
            r.rss_peak_bytes as f64 / 1048576.0,
            r.held_peak,
            r.bytes_per_held_packet
                .map_or(String::new(), |b| format!(", {b:.0} bytes per held packet"))
        );
    }
    if let Some(s) = result.scaling {
        println!();
        println!("scaling: {s:.2}x forwarded/s, largest over smallest shard count");
    }
    for ratio in &result.hop_processor_ratios {
        println!();
        println!(
            "fast over crate, {} shard(s): forwarded/s {:.2}x, forwarded per node core {:.2}x, hop step {:.2}x",
            ratio.cores, ratio.forwarded, ratio.forwarded_per_node_core, ratio.hop_step
        );
    }
    for ratio in &result.noise_ratios {
        println!();
        println!(
            "Noise over plain TCP, {} shard(s), {}, {} key(s): forwarded/s {:.3}x, forwarded per node core {:.3}x",
            ratio.cores,
            ratio.hop_processor,
            ratio.keys,
            ratio.forwarded,
            ratio.forwarded_per_node_core
        );
    }
    for ratio in &result.key_ratios {
        println!();
        println!(
            "two keys over one, {} shard(s), {}, rotation byte {}: forwarded/s {:.2}x, forwarded per node core {:.2}x",
            ratio.cores,
            ratio.hop_processor,
            ratio.rotation_byte,
            ratio.forwarded,
            ratio.forwarded_per_node_core
        );
    }
}
