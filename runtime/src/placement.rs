//! Which core each shard runs on.
//!
//! Placement is decided once, here, before any shard starts, and logged.
//! The topology comes from hwloc (feature `hwloc`); without it, or if hwloc
//! fails, from `/sys/devices/system/cpu` and `/sys/devices/system/node`, with
//! a warning. Only CPUs in the process's affinity mask are used, so
//! `taskset`, cgroups and systemd's `CPUAffinity=` are honoured.
//!
//! Policy: one shard per physical core before any hyperthread sibling is
//! used, and consecutive shards alternate between NUMA nodes so that N
//! shards on a multi-socket machine spread over the sockets' memory
//! controllers. More shards than CPUs wrap around (allowed, logged): useful
//! for testing multi-shard behaviour on a small machine.

use crate::error::{Error, ErrorCode, Result};

/// One logical CPU as the topology describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// OS index, as in `taskset` and `/proc/cpuinfo`.
    pub os_index: usize,
    /// Physical core the CPU belongs to (unique per machine).
    pub core_id: usize,
    /// NUMA node whose memory is local to this CPU.
    pub numa_node: usize,
}

/// Where one shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlacement {
    /// Shard number, `0..shards`.
    pub shard: usize,
    /// OS index of the CPU the shard's executor is pinned to.
    pub cpu: usize,
    /// NUMA node of that CPU.
    pub numa_node: usize,
}

/// The CPUs this process may run on, with their cores and NUMA nodes.
pub fn discover_cpus() -> Result<Vec<Cpu>> {
    let allowed = allowed_cpus();
    #[cfg(feature = "hwloc")]
    {
        match hwloc_cpus() {
            Ok(cpus) if !cpus.is_empty() => return Ok(filter_allowed(cpus, &allowed)),
            Ok(_) => log::warn!("hwloc reported no CPUs; falling back to sysfs"),
            Err(e) => log::warn!("hwloc topology failed ({e}); falling back to sysfs"),
        }
    }
    #[cfg(not(feature = "hwloc"))]
    log::warn!("built without hwloc: reading the CPU topology from sysfs");
    let cpus = sysfs_cpus()?;
    Ok(filter_allowed(cpus, &allowed))
}

fn filter_allowed(cpus: Vec<Cpu>, allowed: &Option<Vec<usize>>) -> Vec<Cpu> {
    match allowed {
        Some(allowed) => cpus
            .into_iter()
            .filter(|c| allowed.contains(&c.os_index))
            .collect(),
        None => cpus,
    }
}

/// Keeps only the CPUs listed in `wanted` (OS indices, as in `taskset`),
/// so that engines sharing a machine (the server's pipelines) can be given
/// cores of their own. A listed CPU this process may not use is an error,
/// not a silent shortfall.
pub fn restrict(cpus: Vec<Cpu>, wanted: &[usize]) -> Result<Vec<Cpu>> {
    if let Some(missing) = wanted
        .iter()
        .find(|w| !cpus.iter().any(|c| c.os_index == **w))
    {
        let available: Vec<String> = cpus.iter().map(|c| c.os_index.to_string()).collect();
        return Err(Error::new(
            ErrorCode::InvalidConfig,
            format!(
                "CPU {missing} is not available to this process (available: {})",
                available.join(",")
            ),
        ));
    }
    Ok(cpus
        .into_iter()
        .filter(|c| wanted.contains(&c.os_index))
        .collect())
}

/// Plans where `shards` shards run. `shards = None` means one per allowed
/// physical core.
pub fn plan(shards: Option<usize>, cpus: &[Cpu]) -> Result<Vec<ShardPlacement>> {
    if cpus.is_empty() {
        return Err(Error::new(
            ErrorCode::RuntimeStart,
            "no CPU is available to this process",
        ));
    }
    let order = spread_order(cpus);
    let physical_cores = {
        let mut cores: Vec<usize> = cpus.iter().map(|c| c.core_id).collect();
        cores.sort_unstable();
        cores.dedup();
        cores.len()
    };
    let shards = shards.unwrap_or(physical_cores);
    if shards == 0 {
        return Err(Error::new(
            ErrorCode::InvalidConfig,
            "shards must be at least 1",
        ));
    }
    if shards > order.len() {
        log::warn!(
            "{shards} shards on {} CPUs: several shards will share a CPU",
            order.len()
        );
    }
    Ok((0..shards)
        .map(|shard| {
            let cpu = order[shard % order.len()];
            ShardPlacement {
                shard,
                cpu: cpu.os_index,
                numa_node: cpu.numa_node,
            }
        })
        .collect())
}

/// Orders CPUs so that taking a prefix gives distinct physical cores first,
/// alternating NUMA nodes.
fn spread_order(cpus: &[Cpu]) -> Vec<Cpu> {
    let mut sorted = cpus.to_vec();
    sorted.sort_by_key(|c| (c.numa_node, c.core_id, c.os_index));
    // Rank of each CPU within its core (0 = first hyperthread).
    let mut ranked: Vec<(usize, usize, Cpu)> = Vec::with_capacity(sorted.len());
    let mut nodes: Vec<usize> = sorted.iter().map(|c| c.numa_node).collect();
    nodes.dedup();
    for (i, cpu) in sorted.iter().enumerate() {
        let sibling_rank = sorted[..i]
            .iter()
            .filter(|c| c.core_id == cpu.core_id)
            .count();
        let core_rank_in_node = sorted[..i]
            .iter()
            .filter(|c| c.numa_node == cpu.numa_node && c.core_id != cpu.core_id)
            .map(|c| c.core_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        ranked.push((sibling_rank, core_rank_in_node, *cpu));
    }
    ranked.sort_by_key(|&(sibling, core_rank, cpu)| (sibling, core_rank, cpu.numa_node));
    ranked.into_iter().map(|(_, _, cpu)| cpu).collect()
}

fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect(),
        )
    }
}

#[cfg(feature = "hwloc")]
fn hwloc_cpus() -> std::result::Result<Vec<Cpu>, String> {
    use hwlocality::object::types::ObjectType;
    use hwlocality::Topology;

    let topology = Topology::new().map_err(|e| e.to_string())?;
    let mut cpus = Vec::new();
    for pu in topology.objects_with_type(ObjectType::PU) {
        let Some(os_index) = pu.os_index() else {
            continue;
        };
        let core_id = pu
            .first_ancestor_with_type(ObjectType::Core)
            .map(|core| core.global_persistent_index() as usize)
            .unwrap_or(os_index);
        let numa_node = pu
            .nodeset()
            .and_then(|nodes| nodes.iter_set().next())
            .map(usize::from)
            .unwrap_or(0);
        cpus.push(Cpu {
            os_index,
            core_id,
            numa_node,
        });
    }
    Ok(cpus)
}

fn sysfs_cpus() -> Result<Vec<Cpu>> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").map_err(|e| {
        Error::new(
            ErrorCode::RuntimeStart,
            format!("cannot read /sys/devices/system/cpu/online: {e}"),
        )
    })?;
    let mut cpus = Vec::new();
    for os_index in parse_cpu_list(&online) {
        let core_id = std::fs::read_to_string(format!(
            "/sys/devices/system/cpu/cpu{os_index}/topology/core_id"
        ))
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
        let package = std::fs::read_to_string(format!(
            "/sys/devices/system/cpu/cpu{os_index}/topology/physical_package_id"
        ))
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(0);
        cpus.push(Cpu {
            os_index,
            // core_id repeats across packages; make it unique per machine.
            core_id: core_id.map_or(os_index, |c| package * 4096 + c),
            numa_node: 0,
        });
    }
    if let Ok(nodes) = std::fs::read_dir("/sys/devices/system/node") {
        for entry in nodes.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(node) = name.strip_prefix("node").and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Ok(list) = std::fs::read_to_string(entry.path().join("cpulist")) {
                for os_index in parse_cpu_list(&list) {
                    if let Some(cpu) = cpus.iter_mut().find(|c| c.os_index == os_index) {
                        cpu.numa_node = node;
                    }
                }
            }
        }
    }
    Ok(cpus)
}

/// Parses the kernel's CPU list format: `0-3,8,10-11`.
fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(os_index: usize, core_id: usize, numa_node: usize) -> Cpu {
        Cpu {
            os_index,
            core_id,
            numa_node,
        }
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("0"), vec![0]);
    }

    #[test]
    fn physical_cores_first_then_siblings_alternating_nodes() {
        // 2 nodes x 2 cores x 2 hyperthreads; siblings are os_index + 4.
        let cpus = vec![
            cpu(0, 0, 0),
            cpu(1, 1, 0),
            cpu(2, 2, 1),
            cpu(3, 3, 1),
            cpu(4, 0, 0),
            cpu(5, 1, 0),
            cpu(6, 2, 1),
            cpu(7, 3, 1),
        ];
        let placed: Vec<usize> = plan(Some(8), &cpus)
            .unwrap()
            .iter()
            .map(|p| p.cpu)
            .collect();
        assert_eq!(placed, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        // Default: one shard per physical core.
        assert_eq!(plan(None, &cpus).unwrap().len(), 4);
        // Restricted to a CPU list: only those, one shard per core in it.
        let two = restrict(cpus.clone(), &[2, 3, 6]).unwrap();
        let placed: Vec<usize> = plan(None, &two).unwrap().iter().map(|p| p.cpu).collect();
        assert_eq!(placed, vec![2, 3]);
        let error = restrict(cpus, &[1, 9]).unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidConfig);
        assert!(error.message().contains("CPU 9"), "{error}");
    }

    #[test]
    fn more_shards_than_cpus_wrap_around() {
        let cpus = vec![cpu(0, 0, 0)];
        let placed = plan(Some(2), &cpus).unwrap();
        assert_eq!(placed[1].cpu, 0);
        assert!(plan(Some(0), &cpus).is_err());
    }

    #[test]
    fn this_machine_has_cpus() {
        assert!(!discover_cpus().unwrap().is_empty());
    }
}
