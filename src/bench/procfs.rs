//! Reading a local server's CPU time and resident memory from `/proc`, and finding the
//! process that listens on a loopback port. Linux only; elsewhere every answer is `None`.

use std::net::IpAddr;

/// `/proc/PID/stat` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100
/// on every architecture it exports to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// A sample of one process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// User plus system CPU time so far, in seconds.
    pub cpu_s: f64,
    /// Resident memory, in KiB.
    pub rss_kib: u64,
}

/// CPU time and resident memory of `pid`, if it exists and can be read.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        cpu_s: parse_cpu_ticks(&stat)? as f64 / TICKS_PER_SECOND,
        rss_kib: parse_rss_kib(&status)?,
    })
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, so utime (14) is the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of a `/proc/PID/status`, in KiB.
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process listening on TCP `port` of a loopback address, when it is this user's to
/// read (its `/proc/PID/fd` names the listening socket's inode).
pub fn listener_pid(ip: IpAddr, port: u16) -> Option<u32> {
    if !ip.is_loopback() && !ip.is_unspecified() {
        return None;
    }
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Inodes of the sockets listening (state 0A) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *fields.get(3)? == "0A")
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_are_read() {
        let stat = "4242 (wschat (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let status = "Name:\twschat\nVmPeak:\t  9000 kB\nVmRSS:\t  12345 kB\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0\n\
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 6666 1 0\n";
        assert_eq!(listening_inodes(table, 8080), vec![5555]);
        assert!(listening_inodes(table, 8081).is_empty());
    }

    #[test]
    fn this_process_can_be_sampled() {
        if cfg!(target_os = "linux") {
            let s = sample(std::process::id()).unwrap();
            assert!(s.rss_kib > 0);
        }
    }
}
