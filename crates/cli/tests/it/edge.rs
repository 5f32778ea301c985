//! The gateway's edge: process limits, and how it treats careless and hostile clients.

use std::time::Duration;

use crate::ssw;

/// The soft and hard "Max open files" of a process, from /proc.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].parse().unwrap(), fields[4].parse().unwrap())
}

#[tokio::test]
async fn a_process_raises_its_open_files_soft_limit_to_the_hard_limit() {
    // Started the way systemd starts a unit without LimitNOFILE: soft 256, hard 8192.
    let mut child = tokio::process::Command::new("prlimit")
        .arg("--nofile=256:8192")
        .arg(ssw())
        .args(["stub", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) runs ssw");
    let pid = child.id().unwrap();
    let mut seen = (0, 0);
    for _ in 0..100 {
        seen = open_files_limits(pid);
        if seen.0 == 8192 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    assert_eq!(
        seen,
        (8192, 8192),
        "soft limit not raised to the hard limit"
    );
}
