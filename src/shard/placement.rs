//! Which CPU each shard is pinned to: distinct physical cores first, hyperthread siblings
//! only once every physical core has a shard. Two shards on siblings share one core's
//! execution units and caches, so with fewer shards than CPUs they go to separate cores.
//!
//! The order is pure ([`physical_cores_first`]); [`cpus_in_order`] reads the topology from
//! sysfs (`/sys/devices/system/cpu/cpuN/topology/{physical_package_id,core_id}`). Where a
//! CPU's topology cannot be read, it counts as a core of its own.

/// `cpus` (in the order the system lists them) reordered: the first CPU of each physical core
/// (`core_of` gives its package and core id), in order, then the others in order.
pub fn physical_cores_first(
    cpus: &[usize],
    core_of: impl Fn(usize) -> Option<(u32, u32)>,
) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    let (mut first, mut siblings) = (Vec::new(), Vec::new());
    for &cpu in cpus {
        let fresh = match core_of(cpu) {
            Some(core) => seen.insert(core),
            None => true,
        };
        if fresh {
            first.push(cpu);
        } else {
            siblings.push(cpu);
        }
    }
    first.extend(siblings);
    first
}

fn read_id(cpu: usize, name: &str) -> Option<u32> {
    let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/{name}");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The CPUs this process may use, physical cores first: where shard `i` is pinned.
pub fn cpus_in_order() -> Vec<core_affinity::CoreId> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let cpus: Vec<usize> = ids.iter().map(|c| c.id).collect();
    physical_cores_first(&cpus, |cpu| {
        Some((
            read_id(cpu, "physical_package_id")?,
            read_id(cpu, "core_id")?,
        ))
    })
    .into_iter()
    .map(|id| core_affinity::CoreId { id })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_come_after_every_physical_core() {
        let cpus: Vec<usize> = (0..8).collect();
        // Linux's usual numbering: cpu i and i + 4 share a core.
        assert_eq!(
            physical_cores_first(&cpus, |cpu| Some((0, (cpu % 4) as u32))),
            [0, 1, 2, 3, 4, 5, 6, 7]
        );
        // Siblings numbered next to each other: (0, 1), (2, 3), ...
        assert_eq!(
            physical_cores_first(&cpus, |cpu| Some((0, (cpu / 2) as u32))),
            [0, 2, 4, 6, 1, 3, 5, 7]
        );
        // Two packages with the same core ids are different cores.
        assert_eq!(
            physical_cores_first(&[0, 1, 2, 3], |cpu| Some(((cpu / 2) as u32, 0))),
            [0, 2, 1, 3]
        );
        // Unknown topology: every CPU its own core, in order.
        assert_eq!(physical_cores_first(&[3, 1, 2], |_| None), [3, 1, 2]);
        // This machine: every CPU once.
        let mut here: Vec<usize> = cpus_in_order().iter().map(|c| c.id).collect();
        let count = here.len();
        here.sort_unstable();
        here.dedup();
        assert_eq!(here.len(), count);
    }
}
