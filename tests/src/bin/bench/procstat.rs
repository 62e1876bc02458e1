//! What `/proc` says about a process: CPU time spent (utime + stime) and resident memory.

use std::collections::HashMap;

/// Clock ticks per second of `/proc/PID/stat`'s times (`getconf CLK_TCK`; 100 on Linux when it cannot be read).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A process's CPU time so far (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: the fields after it start past the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 counting from field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `/proc/PID/status` line in kB, as MB (`VmHWM`: peak resident, `VmRSS`: resident now, `RssAnon`: the part
/// of `VmRSS` that is the process's own memory, not pages of its binary and libraries, which copies share).
pub fn memory_mb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The processes whose command name (`/proc/PID/comm`) is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// CPU ticks of a changing set of processes over a span: the first and last figure seen of each process
/// (a process first seen during the span counts from 0 when `new_from_zero`).
#[derive(Default)]
pub struct CpuSpan {
    first: HashMap<u32, u64>,
    last: HashMap<u32, u64>,
}

impl CpuSpan {
    /// Records the current figures of `pids`.
    pub fn sample(&mut self, pids: &[u32], new_from_zero: bool) {
        for &pid in pids {
            if let Some(t) = cpu_ticks(pid) {
                self.first
                    .entry(pid)
                    .or_insert(if new_from_zero { 0 } else { t });
                self.last.insert(pid, t);
            }
        }
    }

    /// Ticks spent over the span, all processes together.
    pub fn ticks(&self) -> u64 {
        self.last
            .iter()
            .map(|(pid, t)| t.saturating_sub(*self.first.get(pid).unwrap_or(t)))
            .sum()
    }
}
