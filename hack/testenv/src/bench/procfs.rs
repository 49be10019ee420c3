//! Resource use of processes and the machine, read from /proc.

use std::collections::BTreeMap;

use super::report::{Machine, OPERATOR, ProcStats};
use crate::ControlPlane;

/// CPU seconds, peak RSS (VmHWM) and RSS of a running process.
pub(super) fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcStats {
        cpu_seconds: cpu_seconds(pid)?,
        peak_rss_kib: field_kib(&status, "VmHWM:").unwrap_or(0),
        rss_kib: field_kib(&status, "VmRSS:").unwrap_or(0),
    })
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// The number of a `Key:   123 kB` line of a /proc file.
fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// CPU seconds of every component, the operator (if running) and this process, right now.
pub(super) fn cpu_snapshot(plane: &ControlPlane, operator: Option<u32>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, pid) in plane.component_pids() {
        if let Some(s) = cpu_seconds(pid) {
            *out.entry(name.to_owned()).or_insert(0.0) += s;
        }
    }
    if let Some(s) = operator.and_then(cpu_seconds) {
        out.insert(OPERATOR.into(), s);
    }
    // SAFETY: getrusage on RUSAGE_SELF with a valid out pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        out.insert(
            "bench (this process)".into(),
            secs(usage.ru_utime) + secs(usage.ru_stime),
        );
    }
    out
}

/// CPU seconds spent between two snapshots, per process.
pub(super) fn cpu_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| {
            // A restarted process starts from zero.
            let base = before.get(k).copied().unwrap_or(0.0);
            (k.clone(), if *v >= base { v - base } else { *v })
        })
        .collect()
}

/// Cores, memory and kernel of this machine.
pub(super) fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    Machine {
        cores: read("/proc/cpuinfo")
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count(),
        memory_mib: field_kib(&read("/proc/meminfo"), "MemTotal:").unwrap_or(0) / 1024,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
    }
}
