//! What the benchmark reads of the machine and this process: CPU time per
//! runtime, the hardware, peak RSS, and the file descriptor limit.

use anyhow::{bail, ensure};

use crate::report::bytes;

/// CPU time of this process's threads, by runtime (thread name).
pub(crate) struct Cpu {
    pub(crate) controller: f64,
    pub(crate) dataplanes: f64,
}

impl Cpu {
    pub(crate) fn read() -> Cpu {
        // /proc/<pid>/task/<tid>/stat counts in USER_HZ, which is 100 on Linux.
        const TICK: f64 = 0.01;
        let mut cpu = Cpu {
            controller: 0.0,
            dataplanes: 0.0,
        };
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return cpu;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            // After the name: state is field 3; utime and stime are fields 14 and 15.
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks: u64 = fields
                .get(11..13)
                .into_iter()
                .flatten()
                .filter_map(|f| f.parse::<u64>().ok())
                .sum();
            let seconds = ticks as f64 * TICK;
            if name.starts_with("ctl-worker") {
                cpu.controller += seconds;
            } else if name.starts_with("dp-worker") {
                cpu.dataplanes += seconds;
            }
        }
        cpu
    }

    pub(crate) fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            controller: self.controller - before.controller,
            dataplanes: self.dataplanes - before.dataplanes,
        }
    }
}

pub(crate) struct Machine {
    cpus: usize,
    kernel: String,
    model: String,
    memory: String,
}

impl Machine {
    pub(crate) fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_string(), |(_, m)| m.trim().to_string());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| kib_field(&m, "MemTotal:"))
            .map_or_else(|| "unknown".to_string(), bytes);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_string(), |k| k.trim().to_string()),
            model,
            memory,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nproc {}, Linux {} ({}, {} RAM); controller and simulated dataplanes share these CPUs",
            self.cpus, self.kernel, self.model, self.memory
        )
    }
}

fn kib_field(text: &str, field: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: usize = line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

pub(crate) fn machine_peak_rss() -> Option<usize> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM:")
}

pub(crate) enum FdLimit {
    Enough(libc::rlim_t),
    Raised(libc::rlim_t, libc::rlim_t),
}

/// Both ends of every stream live in this process: two sockets per stream.
#[allow(unsafe_code)]
pub(crate) fn raise_fd_limit(streams: usize) -> anyhow::Result<FdLimit> {
    let needed = (2 * streams + 256) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur >= needed {
        return Ok(FdLimit::Enough(limit.rlim_cur));
    }
    ensure!(
        limit.rlim_max >= needed,
        "{streams} streams need {needed} file descriptors; the hard limit is {}",
        limit.rlim_max
    );
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        bail!("setrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    Ok(FdLimit::Raised(limit.rlim_cur, needed))
}
