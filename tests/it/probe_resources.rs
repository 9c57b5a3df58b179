//! The `resources` probe on this machine and on cgroup directories made up
//! for the test.

use std::time::Duration;

use backstop_probes::resources::{ResourcesConfig, ResourcesProbe};
use backstop_probes::{Context, Report};

fn probe(edit: impl FnOnce(&mut ResourcesConfig)) -> ResourcesProbe {
    let mut cfg = ResourcesConfig {
        cgroup_root: "/sys/fs/cgroup".into(),
        disk_path: "/".into(),
        process_pid_file: None,
        pid: None,
    };
    edit(&mut cfg);
    ResourcesProbe::new(
        &cfg,
        Context {
            timeout: Duration::from_secs(2),
        },
    )
    .expect("valid probe")
}

fn cgroup(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// MemTotal of /proc/meminfo, in bytes.
fn host_memory() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024.0
}

fn within(report: &Report, signal: &str, low: f64, high: f64) {
    let v = report
        .get(signal)
        .unwrap_or_else(|| panic!("no {signal} in {report:?}"));
    assert!(
        (low..=high).contains(&v),
        "{signal} = {v}, not in {low}..={high}"
    );
}

#[tokio::test]
async fn measures_memory_and_cpu_against_the_limits_of_a_cgroup() {
    const MIB: u64 = 1 << 20;
    let dir = cgroup(&[
        ("memory.current", &format!("{}\n", 600 * MIB)),
        ("memory.max", &format!("{}\n", 1024 * MIB)),
        (
            "memory.stat",
            &format!("anon 1\ninactive_file {}\n", 88 * MIB),
        ),
        ("cpu.max", "200000 100000\n"),
        (
            "cpu.stat",
            "usage_usec 5000000\nnr_periods 1000\nnr_throttled 0\n",
        ),
    ]);
    let probe = probe(|c| c.cgroup_root = dir.path().into());

    let first = probe.check().await.expect("readable");
    assert_eq!(first.get("memory_bytes"), Some((512 * MIB) as f64));
    assert_eq!(first.get("memory_limit_bytes"), Some((1024 * MIB) as f64));
    assert_eq!(first.get("memory_percent"), Some(50.0));
    assert_eq!(first.get("cpu_limit_cores"), Some(2.0));
    assert_eq!(
        first.get("cpu_percent"),
        None,
        "the first check has no delta"
    );
    within(&first, "disk_percent", 0.0, 100.0);

    // 0.1 CPU-second over at least 0.2 s of wall time: at most a quarter of
    // the two cores.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(
        dir.path().join("cpu.stat"),
        "usage_usec 5100000\nnr_periods 1010\nnr_throttled 5\n",
    )
    .unwrap();
    let second = probe.check().await.expect("readable");
    within(&second, "cpu_percent", 0.1, 25.0);
    assert_eq!(second.get("cpu_throttled_percent"), Some(50.0));
}

#[tokio::test]
async fn falls_back_to_the_host_when_the_cgroup_sets_no_memory_limit() {
    let dir = cgroup(&[("memory.current", "1048576\n"), ("memory.max", "max\n")]);
    let report = probe(|c| c.cgroup_root = dir.path().into())
        .check()
        .await
        .expect("readable");
    assert_eq!(report.get("memory_limit_bytes"), Some(host_memory()));
    within(&report, "memory_percent", 0.01, 100.0);
}

#[tokio::test]
async fn reports_sane_values_for_this_machine() {
    let me = std::process::id();
    let probe = probe(|c| c.pid = Some(me));
    let first = probe.check().await.expect("readable");
    within(&first, "memory_percent", 0.01, 100.0);
    within(&first, "disk_percent", 0.01, 100.0);
    within(&first, "cpu_limit_cores", 1.0, 4096.0);
    within(&first, "process_rss_bytes", 1e6, 1e11);
    assert_eq!(first.get("process_running"), Some(1.0));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = probe.check().await.expect("readable");
    within(&second, "cpu_percent", 0.0, 100.0);
}

#[tokio::test]
async fn follows_the_pid_file_and_reports_a_process_that_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("service.pid");
    let probe = probe(|c| c.process_pid_file = Some(file.clone()));

    let missing = probe.check().await.expect("other signals still read");
    assert_eq!(missing.get("process_running"), Some(0.0));
    assert_eq!(missing.get("process_rss_bytes"), None);

    std::fs::write(&file, format!("{}\n", std::process::id())).unwrap();
    let running = probe.check().await.unwrap();
    assert_eq!(running.get("process_running"), Some(1.0));
    within(&running, "process_rss_bytes", 1e6, 1e11);

    // A pid no process has: above the kernel's highest (4194304).
    std::fs::write(&file, "4194305\n").unwrap();
    let gone = probe.check().await.unwrap();
    assert_eq!(gone.get("process_running"), Some(0.0));
}

#[tokio::test]
async fn measures_the_filesystem_holding_the_disk_path() {
    let dir = tempfile::tempdir().unwrap();
    let report = probe(|c| c.disk_path = dir.path().into())
        .check()
        .await
        .unwrap();
    within(&report, "disk_percent", 0.01, 100.0);
    assert!(report.get("disk_free_bytes").unwrap() > 0.0);
}
