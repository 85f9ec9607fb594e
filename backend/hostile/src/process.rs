//! Services as separate processes on loopback, for the runners that measure them from outside
//! (`make hostile`, `make bench`): start with a fresh address, wait until ready, read resident
//! memory from `/proc`, drive a bounded closed-loop load, stop by pid (SIGTERM, then SIGKILL).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free loopback address (bound, then released for the service to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A started service, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    started: Instant,
    /// How it was started, for [`Self::restart`].
    command: Command,
}

impl Service {
    /// Starts `bin args` with `env`, its output appended to `<logs>/<name>.log`, listening on a
    /// fresh address handed over in the variable `addr_var`, or as `{addr}` in `args`.
    pub fn start(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        addr_var: Option<&str>,
        env: &[(&str, String)],
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))?;
        let mut command = Command::new(bin);
        command
            .args(args.iter().map(|a| a.replace("{addr}", &addr.to_string())))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(var) = addr_var {
            command.env(var, addr.to_string());
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        Ok(Self {
            name,
            addr,
            child,
            started,
            command,
        })
    }

    /// Stops the process and starts it again with the same command, on the same address (its
    /// log is appended to); [`Self::wait_ready`] then times the new start.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.started = Instant::now();
        self.child = self
            .command
            .spawn()
            .with_context(|| format!("restart {}", self.name))?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most 120 s) until `ready` answers 2xx; returns the time since the process was
    /// started (its cold start).
    pub async fn wait_ready<F>(&mut self, ready: F) -> anyhow::Result<Duration>
    where
        F: Fn(&Self) -> reqwest::RequestBuilder,
    {
        let deadline = self.started + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start-up: {status}", self.name);
            }
            if let Ok(r) = ready(self).send().await
                && r.status().is_success()
            {
                return Ok(self.started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("{} not ready after 120 s", self.name)
    }

    /// [`Self::wait_ready`] on the project's own `GET /health/ready`.
    pub async fn wait_healthy(&mut self, http: &reqwest::Client) -> anyhow::Result<Duration> {
        self.wait_ready(|s| http.get(s.url("/health/ready"))).await
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the process and its children (gunicorn's workers), in MB.
    pub fn rss_mb(&self) -> f64 {
        tree(self.pid())
            .into_iter()
            .map(|pid| mb(status_kb(pid, "VmRSS:")))
            .sum()
    }

    /// Resets the peak-RSS marks of the process and its children.
    pub fn reset_peak(&self) {
        tree(self.pid()).into_iter().for_each(reset_peak);
    }

    /// Peak resident memory since [`Self::reset_peak`], summed over the process and its children.
    pub fn peak_mb(&self) -> f64 {
        tree(self.pid())
            .into_iter()
            .map(|pid| mb(status_kb(pid, "VmHWM:")))
            .sum()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pid` and its direct children (from `/proc/<pid>/task/*/children`).
fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    pids
}

/// A kB figure from `/proc/<pid>/status` (0 when the process is gone).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
            })
        })
        .unwrap_or(0)
}

/// Resets the peak-RSS mark so `VmHWM` measures from now.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// What a closed-loop load measured (the default: nothing yet, to [`LoadStats::absorb`] into).
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    pub ok: usize,
    pub failed: usize,
    pub seconds: f64,
    /// Latencies of the successful requests, ascending, in seconds.
    pub latencies: Vec<f64>,
    /// The slowest requests: when each was sent (seconds into the measured part) and its
    /// latency, slowest first (at most [`SLOWEST_KEPT`]).
    pub slowest: Vec<(f64, f64)>,
}

/// How many of the slowest requests a load keeps ([`LoadStats::slowest`]).
pub const SLOWEST_KEPT: usize = 8;

impl LoadStats {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }

    /// Adds another measurement of the same load (e.g. a later round of an interleaved
    /// comparison): counts, time and latencies pooled; the slowest kept by latency (their send
    /// times stay relative to their own round).
    pub fn absorb(&mut self, other: LoadStats) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.seconds += other.seconds;
        self.latencies.extend(other.latencies);
        self.latencies.sort_by(f64::total_cmp);
        self.slowest.extend(other.slowest);
        self.slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.slowest.truncate(SLOWEST_KEPT);
    }

    /// The `p`th percentile (0-100) of the successful requests' latency (NaN when none).
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.latencies.len() as f64 - 1.0)).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// `clients` concurrent clients, each sending `request(i)` (i counts every request of the run)
/// and waiting for the whole answer before the next, until `requests` have been sent or `budget`
/// has passed (each client still sends at least one). A request counts as successful on 2xx.
pub async fn closed_loop<F>(
    clients: usize,
    requests: u64,
    budget: Duration,
    request: F,
) -> LoadStats
where
    F: Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    closed_loop_steady(clients, Duration::ZERO, requests, budget, request).await
}

/// [`closed_loop`] measured in its steady state: the clients first run for `warmup` under the
/// same load, and only the requests sent after it are counted (in `requests`, the latencies and
/// the rate). A burst of clients arriving at an idle server is not what "at 16 clients" means:
/// with a few hundred requests in all, the first ones' queueing alone would be the p99.
pub async fn closed_loop_steady<F>(
    clients: usize,
    warmup: Duration,
    requests: u64,
    budget: Duration,
    request: F,
) -> LoadStats
where
    F: Fn(u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let left = Arc::new(AtomicU64::new(requests.max(clients as u64)));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let measured_from = started + warmup;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (request, left, counter) = (request.clone(), left.clone(), counter.clone());
            tokio::spawn(async move {
                let (mut times, mut failed) = (Vec::new(), 0usize);
                loop {
                    let sent = Instant::now();
                    let measured = sent >= measured_from;
                    if measured
                        && left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                n.checked_sub(1)
                            })
                            .is_err()
                    {
                        break;
                    }
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let ok = match request(i).send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    if !measured {
                        failed += usize::from(!ok);
                        continue;
                    }
                    if ok {
                        times.push((
                            sent.duration_since(measured_from).as_secs_f64(),
                            sent.elapsed().as_secs_f64(),
                        ));
                    } else {
                        failed += 1;
                    }
                    if measured_from.elapsed() > budget && !times.is_empty() {
                        break;
                    }
                }
                (times, failed)
            })
        })
        .collect();
    let mut stats = LoadStats {
        ok: 0,
        failed: 0,
        seconds: 0.0,
        latencies: Vec::new(),
        slowest: Vec::new(),
    };
    for task in tasks {
        match task.await {
            Ok((times, failed)) => {
                stats.slowest.extend(times);
                stats.failed += failed;
            }
            Err(_) => stats.failed += 1,
        }
    }
    stats.seconds = measured_from.elapsed().as_secs_f64();
    stats.slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    stats.latencies = stats.slowest.iter().map(|(_, latency)| *latency).collect();
    stats.latencies.sort_by(f64::total_cmp);
    stats.ok = stats.latencies.len();
    stats.slowest.truncate(SLOWEST_KEPT);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(ok: usize, failed: usize, seconds: f64, latencies: &[f64]) -> LoadStats {
        LoadStats {
            ok,
            failed,
            seconds,
            latencies: latencies.to_vec(),
            slowest: latencies.iter().map(|&l| (0.0, l)).rev().collect(),
        }
    }

    #[test]
    fn rounds_pool_into_one_measurement() {
        let mut pooled = stats(2, 0, 1.0, &[0.1, 0.3]);
        pooled.absorb(stats(3, 1, 2.0, &[0.2, 0.4, 0.5]));
        assert_eq!((pooled.ok, pooled.failed), (5, 1));
        assert!((pooled.per_second() - 5.0 / 3.0).abs() < 1e-9);
        assert_eq!(pooled.latencies, [0.1, 0.2, 0.3, 0.4, 0.5]);
        assert_eq!(pooled.percentile(50.0), 0.3);
        assert_eq!(pooled.slowest[0].1, 0.5);
    }
}
