//! `resources`: memory, CPU and disk use as the service feels them. Inside a
//! cgroup v2 with limits, memory and CPU are measured against those limits,
//! not the host's; without a limit, or without cgroup v2, the host's figures
//! are used. The probe reports and never judges: rules decide what is too
//! much. It fails only when it cannot read anything at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;
use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind,
    ProcessesToUpdate, System,
};

use crate::{ConfigProblem, Context, ProbeError, Report, SignalInfo};

/// The signals a `resources` probe yields; `process_running` and
/// `process_rss_bytes` only with `pid` or `process_pid_file` (see
/// [`ResourcesConfig::signals`]).
const SIGNALS: [SignalInfo; 12] = [
    SignalInfo::fixed("latency_ms", "milliseconds reading every figure took"),
    SignalInfo::fixed(
        "memory_bytes",
        "memory in use: the cgroup's without reclaimable page cache under a limit, else the host's",
    ),
    SignalInfo::fixed(
        "memory_limit_bytes",
        "the cgroup's `memory.max`, else the host's memory",
    ),
    SignalInfo::fixed(
        "memory_percent",
        "`memory_bytes` against `memory_limit_bytes`, 0-100",
    ),
    SignalInfo::fixed(
        "cpu_limit_cores",
        "the cgroup's CPU quota in cores, else the host's CPUs",
    ),
    SignalInfo::fixed(
        "cpu_cores_used",
        "cores the cgroup used since the previous check; cgroup v2 only",
    ),
    SignalInfo::fixed(
        "cpu_percent",
        "CPU used since the previous check against `cpu_limit_cores`, 0-100",
    ),
    SignalInfo::fixed(
        "cpu_throttled_percent",
        "share of the cgroup's CPU periods throttled since the previous check, 0-100; with a CPU quota",
    ),
    SignalInfo::fixed("disk_percent", "use of the filesystem holding `disk_path`, 0-100"),
    SignalInfo::fixed("disk_free_bytes", "bytes free for use on that filesystem"),
    SignalInfo::fixed(
        "process_running",
        "1 while the process of `pid` or `process_pid_file` runs, else 0",
    ),
    SignalInfo::fixed(
        "process_rss_bytes",
        "that process's resident memory; while it runs",
    ),
];

/// The names only a probe with a process to watch yields.
const PROCESS_ONLY: [&str; 2] = ["process_running", "process_rss_bytes"];

pub(crate) fn type_signals() -> Vec<SignalInfo> {
    SIGNALS.to_vec()
}

/// Settings of a `resources` probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// The cgroup v2 directory whose `memory.*` and `cpu.*` files are read:
    /// in a container, its own cgroup; on a VM, point it at the service's
    /// unit (`/sys/fs/cgroup/system.slice/web.service`) to measure against
    /// that unit's limits. Default `/sys/fs/cgroup`.
    #[serde(default = "default_cgroup_root")]
    pub cgroup_root: PathBuf,
    /// A path on the filesystem whose use is `disk_percent`. Default `/`.
    #[serde(default = "default_disk_path")]
    pub disk_path: PathBuf,
    /// A file holding the pid of one process whose resident memory is
    /// `process_rss_bytes`; read at every check, so a restarted process is
    /// followed. Default none; exclusive with `pid`.
    #[serde(default)]
    pub process_pid_file: Option<PathBuf>,
    /// The pid of one process whose resident memory is `process_rss_bytes`.
    /// Default none; exclusive with `process_pid_file`.
    #[serde(default)]
    pub pid: Option<u32>,
}

impl crate::ProbeType for ResourcesConfig {
    fn levels() -> &'static [u8] {
        &[2]
    }
}

impl ResourcesConfig {
    /// What a check can yield: the process's figures only with a process
    /// to watch.
    pub fn signals(&self) -> Vec<SignalInfo> {
        let process = self.pid.is_some() || self.process_pid_file.is_some();
        SIGNALS
            .iter()
            .filter(|s| process || !PROCESS_ONLY.contains(&&*s.name))
            .cloned()
            .collect()
    }
}

fn default_cgroup_root() -> PathBuf {
    "/sys/fs/cgroup".into()
}
fn default_disk_path() -> PathBuf {
    "/".into()
}

#[derive(Debug, Clone)]
enum ProcessSource {
    Pid(u32),
    PidFile(PathBuf),
}

#[derive(Debug)]
pub struct ResourcesProbe {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cgroup: PathBuf,
    disk_path: PathBuf,
    process: Option<ProcessSource>,
    /// What the next check compares with. Checks of one probe never overlap,
    /// so the lock is never contended.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    system: System,
    /// The cgroup's CPU counters at the previous check.
    cgroup_cpu: Option<(Instant, CpuStat)>,
    /// Whether the host's CPU times were read once: usage needs two reads.
    host_cpu_primed: bool,
}

impl ResourcesProbe {
    pub fn new(cfg: &ResourcesConfig, _ctx: Context) -> Result<Self, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        if !cfg.cgroup_root.is_absolute() {
            problems.push(ConfigProblem::new(
                "cgroup_root",
                format!("{:?} is not an absolute path", cfg.cgroup_root),
            ));
        }
        if !cfg.disk_path.is_absolute() {
            problems.push(ConfigProblem::new(
                "disk_path",
                format!("{:?} is not an absolute path", cfg.disk_path),
            ));
        }
        let process = match (&cfg.pid, &cfg.process_pid_file) {
            (Some(_), Some(_)) => {
                problems.push(ConfigProblem::new(
                    "pid",
                    "set either pid or process_pid_file, not both",
                ));
                None
            }
            (Some(0), None) => {
                problems.push(ConfigProblem::new("pid", "0 is not a process id"));
                None
            }
            (Some(pid), None) => Some(ProcessSource::Pid(*pid)),
            (None, Some(file)) if !file.is_absolute() => {
                problems.push(ConfigProblem::new(
                    "process_pid_file",
                    format!("{file:?} is not an absolute path"),
                ));
                None
            }
            (None, Some(file)) => Some(ProcessSource::PidFile(file.clone())),
            (None, None) => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cgroup: cfg.cgroup_root.clone(),
                disk_path: cfg.disk_path.clone(),
                process,
                state: Mutex::new(State {
                    system: System::new(),
                    cgroup_cpu: None,
                    host_cpu_primed: false,
                }),
            }),
        })
    }

    pub async fn check(&self) -> Result<Report, ProbeError> {
        // Reading /proc, /sys and filesystem statistics blocks; a hung
        // network mount must not stall the agent's other probes.
        let inner = self.inner.clone();
        let start = Instant::now();
        let mut report = tokio::task::spawn_blocking(move || inner.sample(Instant::now()))
            .await
            .map_err(|e| ProbeError::cannot_run(format!("reading resources failed: {e}")))?;
        if report.signals.is_empty() {
            return Err(ProbeError::cannot_run(format!(
                "could read neither the cgroup at {} nor the host's memory, CPU or disks",
                self.inner.cgroup.display()
            )));
        }
        report.push("latency_ms", crate::redact::ms(start.elapsed()));
        Ok(report)
    }
}

impl Inner {
    fn sample(&self, now: Instant) -> Report {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = Report::new();
        self.memory(&mut state, &mut report);
        self.cpu(&mut state, now, &mut report);
        self.disk(&mut report);
        if let Some(source) = &self.process {
            process(source, &mut state.system, &mut report);
        }
        report
    }

    fn memory(&self, state: &mut State, report: &mut Report) {
        if let Some(m) = CgroupMemory::read(&self.cgroup) {
            if let Some(limit) = m.max {
                let used = m.working_set();
                report.push("memory_bytes", used as f64);
                report.push("memory_limit_bytes", limit as f64);
                report.push("memory_percent", percent(used as f64, limit as f64));
                return;
            }
        }
        // No limit of its own: the host's memory is the limit.
        let system = &mut state.system;
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let total = system.total_memory();
        if total > 0 {
            let used = total.saturating_sub(system.available_memory());
            report.push("memory_bytes", used as f64);
            report.push("memory_limit_bytes", total as f64);
            report.push("memory_percent", percent(used as f64, total as f64));
        }
    }

    fn cpu(&self, state: &mut State, now: Instant, report: &mut Report) {
        if let Some(stat) = CpuStat::read(&self.cgroup) {
            let quota = read_cpu_max(&self.cgroup);
            let limit = quota.unwrap_or_else(|| host_cpus(&mut state.system));
            if limit > 0.0 {
                report.push("cpu_limit_cores", limit);
            }
            if let Some((then, before)) = state.cgroup_cpu.replace((now, stat)) {
                let wall = now.saturating_duration_since(then).as_micros() as f64;
                if wall > 0.0 && stat.usage_usec >= before.usage_usec {
                    let cores = (stat.usage_usec - before.usage_usec) as f64 / wall;
                    report.push("cpu_cores_used", cores);
                    if limit > 0.0 {
                        report.push("cpu_percent", percent(cores, limit));
                    }
                }
                if let (Some(p), Some(t), Some(p0), Some(t0)) = (
                    stat.nr_periods,
                    stat.nr_throttled,
                    before.nr_periods,
                    before.nr_throttled,
                ) {
                    if p > p0 && t >= t0 {
                        report.push(
                            "cpu_throttled_percent",
                            percent((t - t0) as f64, (p - p0) as f64),
                        );
                    }
                }
            }
            return;
        }
        // No cgroup v2: the host's CPUs, busy since the previous check.
        let system = &mut state.system;
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_cpu_usage());
        if !system.cpus().is_empty() {
            report.push("cpu_limit_cores", system.cpus().len() as f64);
            if state.host_cpu_primed {
                report.push("cpu_percent", f64::from(system.global_cpu_usage()));
            }
            state.host_cpu_primed = true;
        }
    }

    fn disk(&self, report: &mut Report) {
        let disks =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
        let target =
            std::fs::canonicalize(&self.disk_path).unwrap_or_else(|_| self.disk_path.clone());
        let mounts: Vec<(&Path, u64, u64)> = disks
            .list()
            .iter()
            .map(|d| (d.mount_point(), d.total_space(), d.available_space()))
            .collect();
        match containing_mount(&target, &mounts) {
            Some((_, total, available)) if total > 0 => {
                report.push(
                    "disk_percent",
                    percent(total.saturating_sub(available) as f64, total as f64),
                );
                report.push("disk_free_bytes", available as f64);
            }
            _ => tracing::debug!(
                path = %self.disk_path.display(),
                "no mounted filesystem found for disk_path"
            ),
        }
    }
}

/// The mount whose mount point is the longest prefix of `path`.
fn containing_mount<'a>(
    path: &Path,
    mounts: &[(&'a Path, u64, u64)],
) -> Option<(&'a Path, u64, u64)> {
    mounts
        .iter()
        .filter(|(mount, ..)| path.starts_with(mount))
        .max_by_key(|(mount, ..)| mount.components().count())
        .copied()
}

/// The process's resident memory, and whether it runs at all. A pid file
/// that cannot be read for another reason than its absence says nothing.
fn process(source: &ProcessSource, system: &mut System, report: &mut Report) {
    let pid = match source {
        ProcessSource::Pid(pid) => Some(*pid),
        ProcessSource::PidFile(file) => match std::fs::read_to_string(file) {
            Ok(text) => text.trim().parse::<u32>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::debug!(file = %file.display(), error = %e, "cannot read the pid file");
                return;
            }
        },
    };
    let rss = pid.and_then(|pid| {
        let pid = Pid::from_u32(pid);
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        system.process(pid).map(|p| p.memory())
    });
    report.push("process_running", if rss.is_some() { 1.0 } else { 0.0 });
    if let Some(bytes) = rss {
        report.push("process_rss_bytes", bytes as f64);
    }
}

/// `memory.current`, `memory.max` and the reclaimable page cache of a
/// cgroup v2.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CgroupMemory {
    current: u64,
    /// `None` when `memory.max` is `max`.
    max: Option<u64>,
    inactive_file: Option<u64>,
}

impl CgroupMemory {
    fn read(dir: &Path) -> Option<Self> {
        let current = read_u64(&dir.join("memory.current"))?;
        let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
        let max = match max.trim() {
            "max" => None,
            v => Some(v.parse().ok()?),
        };
        let inactive_file = std::fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .and_then(|s| stat_field(&s, "inactive_file"));
        Some(Self {
            current,
            max,
            inactive_file,
        })
    }

    /// Usage without the page cache the kernel can drop at once, as the
    /// kubelet counts it: what counts toward an out-of-memory kill.
    fn working_set(&self) -> u64 {
        self.current.saturating_sub(self.inactive_file.unwrap_or(0))
    }
}

/// The counters of `cpu.stat` the probe uses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuStat {
    usage_usec: u64,
    nr_periods: Option<u64>,
    nr_throttled: Option<u64>,
}

impl CpuStat {
    fn read(dir: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(dir.join("cpu.stat")).ok()?)
    }

    fn parse(text: &str) -> Option<Self> {
        Some(Self {
            usage_usec: stat_field(text, "usage_usec")?,
            nr_periods: stat_field(text, "nr_periods"),
            nr_throttled: stat_field(text, "nr_throttled"),
        })
    }
}

/// The CPU quota in cores from `cpu.max` (`"200000 100000"` is 2 cores);
/// `None` when unlimited or unreadable.
fn read_cpu_max(dir: &Path) -> Option<f64> {
    parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)
}

fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next().unwrap_or("100000").parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

fn host_cpus(system: &mut System) -> f64 {
    if system.cpus().is_empty() {
        system.refresh_cpu_list(CpuRefreshKind::nothing());
    }
    system.cpus().len() as f64
}

/// A `key value` line of a flat-keyed cgroup file.
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn percent(part: f64, whole: f64) -> f64 {
    part / whole * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ctx() -> Context {
        Context {
            timeout: Duration::from_secs(1),
        }
    }

    fn config(cgroup: &Path) -> ResourcesConfig {
        ResourcesConfig {
            cgroup_root: cgroup.into(),
            disk_path: "/".into(),
            process_pid_file: None,
            pid: None,
        }
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn reads_the_cpu_quota_in_cores() {
        let cases = [
            ("max 100000\n", None),
            ("200000 100000\n", Some(2.0)),
            ("50000 100000", Some(0.5)),
            ("150000", Some(1.5)),
            ("", None),
            ("garbage", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_cpu_max(text), want, "{text:?}");
        }
    }

    #[test]
    fn reads_cpu_stat_counters() {
        let text = "usage_usec 123\nuser_usec 100\nsystem_usec 23\nnr_periods 7\nnr_throttled 2\nthrottled_usec 9\n";
        assert_eq!(
            CpuStat::parse(text),
            Some(CpuStat {
                usage_usec: 123,
                nr_periods: Some(7),
                nr_throttled: Some(2),
            })
        );
        // Without a cpu controller the periods are absent.
        assert_eq!(
            CpuStat::parse("usage_usec 5\n").map(|s| s.nr_periods),
            Some(None)
        );
        assert_eq!(CpuStat::parse("user_usec 5\n"), None);
    }

    #[test]
    fn counts_memory_without_reclaimable_cache_against_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "memory.current", "1000\n");
        write(dir.path(), "memory.max", "4000\n");
        write(
            dir.path(),
            "memory.stat",
            "anon 700\nfile 300\ninactive_file 200\nactive_file 100\n",
        );
        let m = CgroupMemory::read(dir.path()).unwrap();
        assert_eq!(m.max, Some(4000));
        assert_eq!(m.working_set(), 800);

        write(dir.path(), "memory.max", "max\n");
        assert_eq!(CgroupMemory::read(dir.path()).unwrap().max, None);
        std::fs::remove_file(dir.path().join("memory.current")).unwrap();
        assert_eq!(CgroupMemory::read(dir.path()), None);
    }

    #[test]
    fn reports_cpu_use_between_two_checks_against_the_quota() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "cpu.max", "200000 100000\n");
        write(
            dir.path(),
            "cpu.stat",
            "usage_usec 1000000\nnr_periods 100\nnr_throttled 10\n",
        );
        let probe = ResourcesProbe::new(&config(dir.path()), ctx()).unwrap();
        let t0 = Instant::now();

        let first = probe.inner.sample(t0);
        assert_eq!(first.get("cpu_limit_cores"), Some(2.0));
        assert_eq!(first.get("cpu_percent"), None, "no delta yet");

        // One core busy for two seconds: half of a two-core quota.
        write(
            dir.path(),
            "cpu.stat",
            "usage_usec 3000000\nnr_periods 120\nnr_throttled 15\n",
        );
        let second = probe.inner.sample(t0 + Duration::from_secs(2));
        assert_eq!(second.get("cpu_cores_used"), Some(1.0));
        assert_eq!(second.get("cpu_percent"), Some(50.0));
        assert_eq!(second.get("cpu_throttled_percent"), Some(25.0));
    }

    #[tokio::test]
    async fn every_signal_a_check_reports_is_declared() {
        // A cgroup with limits, and this test's own process to watch: two
        // samples yield every figure there is.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "memory.current", "1000\n");
        write(dir.path(), "memory.max", "4000\n");
        write(dir.path(), "memory.stat", "inactive_file 100\n");
        write(dir.path(), "cpu.max", "200000 100000\n");
        write(
            dir.path(),
            "cpu.stat",
            "usage_usec 100\nnr_periods 1\nnr_throttled 0\n",
        );
        let mut cfg = config(dir.path());
        cfg.pid = Some(std::process::id());
        let probe = ResourcesProbe::new(&cfg, ctx()).unwrap();
        probe.check().await.unwrap();
        write(
            dir.path(),
            "cpu.stat",
            "usage_usec 900\nnr_periods 3\nnr_throttled 1\n",
        );
        let report = probe.check().await.unwrap();
        let n = crate::testing::assert_declared(&report, &cfg.signals());
        assert!(n >= 10, "{report:?}");
        assert_eq!(report.get("process_running"), Some(1.0));

        // The host's figures, where there is no cgroup.
        let cfg = config(&dir.path().join("none"));
        let probe = ResourcesProbe::new(&cfg, ctx()).unwrap();
        probe.check().await.unwrap();
        let report = probe.check().await.unwrap();
        assert!(crate::testing::assert_declared(&report, &cfg.signals()) >= 3);
        assert!(report.get("latency_ms").is_some());
    }

    #[test]
    fn finds_the_mount_holding_a_path_by_longest_prefix() {
        let mounts = [
            (Path::new("/"), 100, 50),
            (Path::new("/var"), 200, 20),
            (Path::new("/var/lib/data"), 300, 30),
            (Path::new("/va"), 400, 40),
        ];
        let cases = [
            ("/etc/hosts", "/"),
            ("/var/log", "/var"),
            ("/var/lib/data/x", "/var/lib/data"),
            ("/var/lib/database", "/var"),
            ("/vat", "/"),
        ];
        for (path, want) in cases {
            let got = containing_mount(Path::new(path), &mounts).unwrap().0;
            assert_eq!(got, Path::new(want), "{path}");
        }
    }

    #[test]
    fn rejects_conflicting_or_relative_settings() {
        type Edit = fn(&mut ResourcesConfig);
        let cases: [(Edit, &str); 5] = [
            (|c| c.cgroup_root = "sys/fs/cgroup".into(), "cgroup_root"),
            (|c| c.disk_path = "data".into(), "disk_path"),
            (|c| c.pid = Some(0), "pid"),
            (
                |c| {
                    c.pid = Some(1);
                    c.process_pid_file = Some("/run/web.pid".into());
                },
                "pid",
            ),
            (
                |c| c.process_pid_file = Some("web.pid".into()),
                "process_pid_file",
            ),
        ];
        for (edit, key) in cases {
            let mut cfg = config(Path::new("/sys/fs/cgroup"));
            edit(&mut cfg);
            let problems = ResourcesProbe::new(&cfg, ctx()).unwrap_err();
            assert_eq!(problems[0].key, key);
        }
    }

    #[test]
    fn defaults_to_the_root_cgroup_and_filesystem() {
        let cfg: ResourcesConfig = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(cfg.cgroup_root, Path::new("/sys/fs/cgroup"));
        assert_eq!(cfg.disk_path, Path::new("/"));
        assert!(
            serde_json::from_value::<ResourcesConfig>(serde_json::json!({"url": "x"})).is_err()
        );
    }
}
