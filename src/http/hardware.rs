//! `/hardware`: memory, cores and CPU crypto features, in the shape the Nym mixnode served
//! (`{"ram","num_cores","crypto_hardware":{..}|null}`). Read once at start: none of it
//! changes while the node runs.

use serde::Serialize;

/// The `/hardware` body.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Hardware {
    /// Total memory, as `"<n>KB"` (the Nym mixnode's unit).
    pub ram: String,
    /// Logical cores available to this process.
    pub num_cores: usize,
    /// CPU features (x86 only; `null` elsewhere).
    pub crypto_hardware: Option<CryptoHardware>,
}

/// CPU features that matter for crypto speed.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CryptoHardware {
    /// AES-NI instructions.
    pub aesni: bool,
    /// AVX2 instructions (used by the X25519 backend).
    pub avx2: bool,
    /// The CPU's name.
    pub brand_string: String,
    /// Logical processors per core at the SMT level of the CPU topology.
    pub smt_logical_processor_count: Vec<u32>,
    /// The OS enabled XSAVE.
    pub osxsave: bool,
    /// Intel SGX.
    pub sgx: bool,
    /// XSAVE instructions.
    pub xsave: bool,
}

/// `MemTotal` from the text of `/proc/meminfo`, in kB.
pub fn mem_total_kb(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The first `model name` in the text of `/proc/cpuinfo`.
pub fn brand_string(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
        .unwrap_or_default()
}

/// Read this machine's hardware.
pub fn read() -> Hardware {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Hardware {
        ram: format!("{}KB", mem_total_kb(&meminfo).unwrap_or(0)),
        num_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        crypto_hardware: crypto_hardware(brand_string(&cpuinfo)),
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn crypto_hardware(brand_string: String) -> Option<CryptoHardware> {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86_64 CPU; leaves above the maximum are not queried.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    let leaf1 = unsafe { __cpuid(1) };
    let leaf7 = if max_leaf >= 7 {
        Some(unsafe { __cpuid_count(7, 0) })
    } else {
        None
    };
    let mut smt = Vec::new();
    if max_leaf >= 0xB {
        for level in 0..8 {
            let l = unsafe { __cpuid_count(0xB, level) };
            let level_type = (l.ecx >> 8) & 0xff;
            if level_type == 0 {
                break;
            }
            if level_type == 1 {
                smt.push(l.ebx & 0xffff);
            }
        }
    }
    Some(CryptoHardware {
        aesni: leaf1.ecx & (1 << 25) != 0,
        avx2: leaf7.is_some_and(|l| l.ebx & (1 << 5) != 0),
        brand_string,
        smt_logical_processor_count: smt,
        osxsave: leaf1.ecx & (1 << 27) != 0,
        sgx: leaf7.is_some_and(|l| l.ebx & (1 << 2) != 0),
        xsave: leaf1.ecx & (1 << 26) != 0,
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn crypto_hardware(_brand_string: String) -> Option<CryptoHardware> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total_kb(meminfo), Some(24_576_000));
        assert_eq!(mem_total_kb("junk"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: Example CPU @ 3.00GHz\n";
        assert_eq!(brand_string(cpuinfo), "Example CPU @ 3.00GHz");
        let h = read();
        assert!(h.num_cores >= 1);
        assert!(h.ram.ends_with("KB"));
    }
}
