//! The soak's load generator: mixed traffic through Envoy, every answer checked against what that
//! request must get, checkpoint's resident memory sampled all along.
//!
//! Shared by `examples/soak_load.rs` (driven by `scripts/soak.sh`, the 10-minute soak) and
//! `tests/soak.rs` (the 60-second version in the test command). Plain HTTP/2 (prior knowledge) on
//! a few connections to Envoy's listener, built on the `h2` crate already in the tree.
//!
//! The mix, by the request's sequence number `n` (so each class keeps its share at any rate):
//! - `n % 100 == 0`: a cold credential, `cold-<run>-<n>`, never seen before: checkpoint asks the
//!   user-info server (bench/userinfo.js `--soak`), which answers it as the user of that name;
//!   expected 200 with `x-seen-user: cold-<run>-<n>` (Envoy's route echoes `miauserid`);
//! - `n % 100 == 50`: an identity-provider error, `fail-<run>-<n>` (a new one each time, so no
//!   cache hides it): the user-info server answers 500; expected 503 from checkpoint;
//! - `n % 10 == 5` (ten in a hundred), denies: a warm identity on `GET /api/orders`, which its
//!   permissions do not allow (403, four in a hundred); no credential (401, three); a credential
//!   the user-info server rejects, `reject-<k>` among eight (401, three);
//! - everything else (88 in a hundred): one of the warm identities `warm-<i>` on
//!   `GET /api/users/42`; expected 200 with `x-seen-user: warm-<i>`.
//!
//! Every deny must carry `x-checkpoint-decision-id`, which only checkpoint's answers have: Envoy's
//! own 503 (ext_authz call failed or timed out) or 403 is unexpected. So is any transport error or
//! an answer slower than [`ANSWER_TIMEOUT`].
//!
//! Open loop: at a fixed rate, requests leave at their scheduled times whatever the answers do,
//! and a latency counts from the scheduled time (a stall is not hidden by the generator waiting
//! for it). With rate 0, closed loop: `connections x streams` requests in flight, back to back,
//! to measure the peak.
//!
//! Beside checkpoint, the report describes the machine: the host's steal time and a probe of the
//! machine's speed, once a second ([`probe_us`]). Neither is part of the verdict; they say when a
//! shared virtual machine, not checkpoint, changed under the run.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test helpers: a broken set-up should stop loudly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// An answer slower than this is unexpected (Envoy's ext_authz deadline is 0.5 s).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many requests in flight in the open loop; past it a request is not sent and
/// counts as unexpected (the gateway has stalled).
pub const MAX_IN_FLIGHT: u64 = 20_000;

#[derive(Debug, Clone)]
pub struct Options {
    /// Envoy's plain-HTTP listener.
    pub target: SocketAddr,
    /// Requests per second; 0: closed loop (peak).
    pub rate: f64,
    pub duration: Duration,
    /// Memory growth is measured after this.
    pub warmup: Duration,
    pub connections: usize,
    /// Closed loop only: requests in flight per connection.
    pub streams: usize,
    pub warm_users: usize,
    /// checkpoint's process, whose VmRSS is sampled every second.
    pub pid: Option<u32>,
    /// Latency statistics per window of this length (a minute in the 10-minute soak).
    pub window: Duration,
    /// Distinguishes the cold credentials of separate runs against the same user-info server.
    pub run: String,
    /// Prints each window's line to stderr as it closes.
    pub progress: bool,
}

/// What a request is, and so what its answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Warm,
    Cold,
    Forbidden,
    NoCredential,
    Rejected,
    IdpError,
}

pub const CLASSES: [Class; 6] = [
    Class::Warm,
    Class::Cold,
    Class::Forbidden,
    Class::NoCredential,
    Class::Rejected,
    Class::IdpError,
];

impl Class {
    pub fn of(n: u64) -> Class {
        match n % 100 {
            0 => Class::Cold,
            50 => Class::IdpError,
            5 | 15 | 25 | 35 => Class::Forbidden,
            45 | 55 | 65 => Class::NoCredential,
            75 | 85 | 95 => Class::Rejected,
            _ => Class::Warm,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Warm => "warm identity (200)",
            Class::Cold => "cold credential (200)",
            Class::Forbidden => "forbidden (403)",
            Class::NoCredential => "no credential (401)",
            Class::Rejected => "rejected credential (401)",
            Class::IdpError => "identity-provider error (503)",
        }
    }

    fn index(self) -> usize {
        CLASSES.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// Request `n`: its path, credential, expected status and, for an allow, the expected user.
struct Planned {
    class: Class,
    path: &'static str,
    token: Option<String>,
    status: u16,
    user: Option<String>,
}

fn plan(n: u64, options: &Options) -> Planned {
    let class = Class::of(n);
    let warm = || format!("warm-{}", (n / 2) % options.warm_users.max(1) as u64);
    let (path, token, status, user) = match class {
        Class::Warm => {
            let t = warm();
            ("/api/users/42", Some(t.clone()), 200, Some(t))
        }
        Class::Cold => {
            let t = format!("cold-{}-{n}", options.run);
            ("/api/users/42", Some(t.clone()), 200, Some(t))
        }
        Class::Forbidden => ("/api/orders", Some(warm()), 403, None),
        Class::NoCredential => ("/api/users/42", None, 401, None),
        Class::Rejected => (
            "/api/users/42",
            Some(format!("reject-{}", n % 8)),
            401,
            None,
        ),
        Class::IdpError => (
            "/api/users/42",
            Some(format!("fail-{}-{n}", options.run)),
            503,
            None,
        ),
    };
    Planned {
        class,
        path,
        token,
        status,
        user,
    }
}

/// One answer, as the collector gets it.
struct Done {
    class: Class,
    /// Since the start of the run, when the answer came.
    at: Duration,
    latency_us: u32,
    /// Why the answer was not the expected one.
    unexpected: Option<String>,
}

/// Latencies and counts of one window.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Window {
    pub start_s: u64,
    pub answers: u64,
    pub unexpected: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    /// checkpoint's VmRSS at the window's end, kB.
    pub rss_kb: Option<u64>,
    /// CPU time the host took from this virtual machine during the window (steal, all CPUs), and
    /// in its worst second; ms. None where /proc/stat has no steal column.
    pub steal_ms: Option<u64>,
    pub worst_steal_ms: Option<u64>,
    /// The machine's speed during the window: the median and the slowest CPU time of the fixed
    /// probe work (see [`Report::probe`]), µs.
    pub probe_median_us: Option<u64>,
    pub probe_slowest_us: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub sent: u64,
    pub answers: u64,
    pub elapsed_s: f64,
    pub rate: f64,
    /// Answers per class, in the order of [`CLASSES`].
    pub by_class: Vec<(String, u64)>,
    pub unexpected: u64,
    /// The first few unexpected answers, described.
    pub unexpected_examples: Vec<String>,
    pub windows: Vec<Window>,
    /// (seconds since the start, VmRSS kB), one a second.
    pub rss: Vec<(u64, u64)>,
    /// Mean VmRSS over the first 10 s after the warm-up, and over the last 10 s; kB.
    pub rss_after_warmup_kb: Option<u64>,
    pub rss_end_kb: Option<u64>,
    pub rss_max_after_warmup_kb: Option<u64>,
    /// (end - after warm-up) / after warm-up, in per cent.
    pub rss_growth_pct: Option<f64>,
    /// Latency over the whole run after the warm-up.
    pub p50_us: u32,
    pub p99_us: u32,
    /// (seconds since the start, steal in that second over all CPUs, ms), one a second.
    pub steal: Vec<(u64, u64)>,
    /// Per second since the start: (answers, unexpected answers, slowest latency µs).
    pub seconds: Vec<(u64, u64, u32)>,
    /// The median of `probe`, µs.
    pub probe_median_us: Option<u64>,
    /// (seconds since the start, CPU time of a fixed piece of work, µs), one a second: the same
    /// work on the load generator's core, so that a machine whose speed changes under the run (a
    /// shared or nested virtual machine) shows it. A constant rate is a varying share of such a
    /// machine's capacity.
    pub probe: Vec<(u64, u64)>,
}

impl Report {
    /// The soak's verdict on correctness and memory (never on timings): zero unexpected answers
    /// and resident memory growing less than `max_growth_pct` after the warm-up.
    pub fn failures(&self, max_growth_pct: f64) -> Vec<String> {
        let mut failures = Vec::new();
        if self.answers == 0 {
            failures.push("no answers at all".to_owned());
        }
        if self.unexpected > 0 {
            failures.push(format!(
                "{} unexpected answers, e.g. {:?}",
                self.unexpected, self.unexpected_examples
            ));
        }
        match self.rss_growth_pct {
            Some(g) if g >= max_growth_pct => failures.push(format!(
                "resident memory grew {g:.1}% after the warm-up ({} -> {} kB), limit {max_growth_pct}%",
                self.rss_after_warmup_kb.unwrap_or(0),
                self.rss_end_kb.unwrap_or(0)
            )),
            Some(_) => {}
            None if !self.rss.is_empty() => {
                failures.push("too few memory samples after the warm-up".to_owned())
            }
            None => {}
        }
        failures
    }

    /// A human-readable summary, one window a line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "sent {} answered {} in {:.1} s ({:.0} req/s), unexpected {}\n",
            self.sent, self.answers, self.elapsed_s, self.rate, self.unexpected
        ));
        for (name, count) in &self.by_class {
            out.push_str(&format!("  {name}: {count}\n"));
        }
        out.push_str(
            "window  answers  unexpected  p50 µs  p99 µs  max µs  VmRSS kB  steal ms (worst s)  probe µs (slowest)\n",
        );
        let or_dash = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        for w in &self.windows {
            out.push_str(&format!(
                "{:>5}s {:>8} {:>11} {:>7} {:>7} {:>7} {:>9} {:>9} ({}) {:>9} ({})\n",
                w.start_s,
                w.answers,
                w.unexpected,
                w.p50_us,
                w.p99_us,
                w.max_us,
                or_dash(w.rss_kb),
                or_dash(w.steal_ms),
                or_dash(w.worst_steal_ms),
                or_dash(w.probe_median_us),
                or_dash(w.probe_slowest_us),
            ));
        }
        if let (Some(a), Some(e), Some(m), Some(g)) = (
            self.rss_after_warmup_kb,
            self.rss_end_kb,
            self.rss_max_after_warmup_kb,
            self.rss_growth_pct,
        ) {
            out.push_str(&format!(
                "VmRSS after warm-up {a} kB, at the end {e} kB ({g:+.2}%), highest after warm-up {m} kB\n"
            ));
        }
        out.push_str(&format!(
            "after warm-up: p50 {} µs, p99 {} µs\n",
            self.p50_us, self.p99_us
        ));
        if let Some(stalls) = self.stalls() {
            out.push_str(&stalls);
        }
        if let Some(speed) = self.speed() {
            out.push_str(&speed);
        }
        out
    }

    /// The probe's median over the run, µs: the machine's typical speed while it ran.
    pub fn median_probe_us(&self) -> Option<u64> {
        let mut times: Vec<u64> = self.probe.iter().map(|(_, us)| *us).collect();
        times.sort_unstable();
        times.get(times.len() / 2).copied()
    }

    /// How much the machine's speed moved during the run: the probe's fastest, median and
    /// slowest CPU time for the same work. A diagnosis, never part of the verdict.
    pub fn speed(&self) -> Option<String> {
        let mut times: Vec<u64> = self.probe.iter().map(|(_, us)| *us).collect();
        times.sort_unstable();
        let (fastest, slowest) = (*times.first()?, *times.last()?);
        let median = self.median_probe_us()?;
        let slow = times.iter().filter(|us| **us * 4 > median * 5).count();
        Some(format!(
            "machine speed: the same work took {fastest} µs of CPU time at best, {median} µs \
             (median), {slowest} µs at worst; {slow} of {} seconds more than 25% slower than the \
             median\n",
            times.len()
        ))
    }

    /// Whether the bad seconds (an unexpected answer, or an answer slower than 500 ms) came with
    /// the host taking the machine's CPUs (100 ms or more of steal in that second or the one
    /// before): a diagnosis printed with the report, never part of the verdict.
    pub fn stalls(&self) -> Option<String> {
        if self.steal.is_empty() {
            return None;
        }
        let stolen = |t: u64| {
            self.steal
                .iter()
                .filter(|(s, _)| *s == t || *s + 1 == t)
                .map(|(_, ms)| *ms)
                .max()
                .unwrap_or(0)
        };
        let stealing = self.steal.iter().filter(|(_, ms)| *ms >= 100).count();
        let bad: Vec<u64> = self
            .seconds
            .iter()
            .enumerate()
            .filter(|(_, (_, unexpected, max_us))| *unexpected > 0 || *max_us > 500_000)
            .map(|(t, _)| t as u64)
            .collect();
        let with_steal = bad.iter().filter(|t| stolen(**t) >= 100).count();
        Some(format!(
            "host steal: {stealing} of {} seconds with 100 ms or more; seconds with an unexpected \
             answer or one slower than 500 ms: {}, {with_steal} of them with 100 ms or more of \
             steal in that second or the one before\n",
            self.steal.len(),
            bad.len()
        ))
    }
}

/// VmRSS of `pid` in kB.
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Steal time of the whole machine so far (the `cpu` line of /proc/stat), in ms. /proc/stat
/// counts in USER_HZ, which is 100 on Linux whatever the kernel's own tick.
pub fn steal_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks * 10)
}

/// CPU time of the calling thread so far, ns (/proc/thread-self/schedstat, first field).
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// A fixed piece of CPU work (about 10 ms on the machines this was written on) and the CPU time
/// it took, µs. CPU time, not wall time: waiting for the core is not counted, a slower core is.
pub fn probe_us() -> Option<u64> {
    let before = thread_cpu_ns()?;
    let mut x: u64 = std::hint::black_box(0x9e37_79b9_7f4a_7c15);
    for _ in 0..std::hint::black_box(5_000_000u32) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    Some((thread_cpu_ns()?.saturating_sub(before)) / 1_000)
}

async fn connect(target: SocketAddr) -> anyhow::Result<SendRequest<Bytes>> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        // The connection's end shows up in the requests that use it.
        let _ = connection.await;
    });
    Ok(send)
}

/// Sends request `n` on `send` and checks the answer.
async fn one(
    send: SendRequest<Bytes>,
    options: &Options,
    n: u64,
    scheduled: Instant,
    start: Instant,
) -> Done {
    let planned = plan(n, options);
    let result = tokio::time::timeout(ANSWER_TIMEOUT, exchange(send, options, &planned)).await;
    let now = Instant::now();
    let unexpected = match result {
        Err(_) => Some(format!(
            "request {n} ({}): no answer within {ANSWER_TIMEOUT:?}",
            planned.class.name()
        )),
        Ok(Err(e)) => Some(format!("request {n} ({}): {e:#}", planned.class.name())),
        Ok(Ok((status, user, decision_id))) => {
            let right = status == planned.status
                && match &planned.user {
                    Some(u) => user.as_deref() == Some(u.as_str()),
                    None => decision_id,
                };
            (!right).then(|| {
                format!(
                    "request {n} ({}): got {status}, x-seen-user {user:?}, decision id {decision_id}; expected {} {:?}",
                    planned.class.name(),
                    planned.status,
                    planned.user
                )
            })
        }
    };
    Done {
        class: planned.class,
        at: now.duration_since(start),
        latency_us: u32::try_from(now.duration_since(scheduled).as_micros()).unwrap_or(u32::MAX),
        unexpected,
    }
}

/// The HTTP status, `x-seen-user`, and whether `x-checkpoint-decision-id` was there.
async fn exchange(
    send: SendRequest<Bytes>,
    options: &Options,
    planned: &Planned,
) -> anyhow::Result<(u16, Option<String>, bool)> {
    let mut send = send.ready().await?;
    let mut request = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}{}", options.target, planned.path))
        // Asks Envoy's route (bench/envoy-ext-authz.yaml) to echo the user it saw.
        .header("x-bench-echo", "1");
    if let Some(token) = &planned.token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let (response, _) = send.send_request(request.body(())?, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let user = response
        .headers()
        .get("x-seen-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let decision_id = response.headers().contains_key("x-checkpoint-decision-id");
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok((status, user, decision_id))
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the soak (or, with rate 0, the closed-loop peak measurement) and reports.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let options = Arc::new(options);
    let mut connections = Vec::new();
    for _ in 0..options.connections.max(1) {
        connections.push(connect(options.target).await?);
    }
    let start = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();

    // checkpoint's memory and the host's steal, once a second.
    let rss = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let steal = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let probe = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let (probe, probing) = (probe.clone(), probing.clone());
        std::thread::spawn(move || {
            while probing.load(Ordering::Relaxed) {
                let t = start.elapsed().as_secs();
                if let Some(us) = probe_us() {
                    probe.lock().unwrap().push((t, us));
                }
                // Sleeps in small steps, so that the run's end does not wait a second for it.
                let next = start + Duration::from_secs(t + 1);
                while probing.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    let sampler = options.pid.map(|pid| {
        let (rss, steal) = (rss.clone(), steal.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut stolen_before = steal_ms();
            loop {
                tick.tick().await;
                let t = start.elapsed().as_secs();
                if let Some(kb) = vm_rss_kb(pid) {
                    rss.lock().unwrap().push((t, kb));
                }
                let stolen = steal_ms();
                if let (Some(before), Some(now)) = (stolen_before, stolen) {
                    // The second that just ended.
                    steal
                        .lock()
                        .unwrap()
                        .push((t.saturating_sub(1), now.saturating_sub(before)));
                }
                stolen_before = stolen;
            }
        })
    });

    // The collector: counts and latencies per window.
    let collector = {
        let options = options.clone();
        let rss = rss.clone();
        tokio::spawn(async move {
            let mut report = Report::default();
            let mut counts = [0u64; CLASSES.len()];
            let mut window_latencies: Vec<u32> = Vec::new();
            let mut after_warmup: Vec<u32> = Vec::new();
            let mut window = Window::default();
            let window_s = options.window.as_secs().max(1);
            let close = |window: &mut Window, lat: &mut Vec<u32>, report: &mut Report| {
                lat.sort_unstable();
                window.p50_us = percentile(lat, 50.0);
                window.p99_us = percentile(lat, 99.0);
                window.max_us = lat.last().copied().unwrap_or(0);
                window.rss_kb = rss.lock().unwrap().last().map(|(_, kb)| *kb);
                if options.progress {
                    eprintln!(
                        "soak: {:>5}s answers {:>7} unexpected {} p50 {} µs p99 {} µs max {} µs VmRSS {:?} kB",
                        window.start_s,
                        window.answers,
                        window.unexpected,
                        window.p50_us,
                        window.p99_us,
                        window.max_us,
                        window.rss_kb
                    );
                }
                report.windows.push(std::mem::take(window));
                lat.clear();
            };
            while let Some(done) = done_rx.recv().await {
                let at = done.at.as_secs();
                while at >= window.start_s + window_s {
                    let next = window.start_s + window_s;
                    close(&mut window, &mut window_latencies, &mut report);
                    window.start_s = next;
                }
                report.answers += 1;
                window.answers += 1;
                let second = at as usize;
                if report.seconds.len() <= second {
                    report.seconds.resize(second + 1, (0, 0, 0));
                }
                let slot = &mut report.seconds[second];
                slot.0 += 1;
                slot.1 += u64::from(done.unexpected.is_some());
                slot.2 = slot.2.max(done.latency_us);
                counts[done.class.index()] += 1;
                window_latencies.push(done.latency_us);
                if done.at >= options.warmup {
                    after_warmup.push(done.latency_us);
                }
                if let Some(why) = done.unexpected {
                    report.unexpected += 1;
                    window.unexpected += 1;
                    if report.unexpected_examples.len() < 10 {
                        report.unexpected_examples.push(why);
                    }
                }
            }
            if window.answers > 0 {
                close(&mut window, &mut window_latencies, &mut report);
            }
            after_warmup.sort_unstable();
            report.p50_us = percentile(&after_warmup, 50.0);
            report.p99_us = percentile(&after_warmup, 99.0);
            report.by_class = CLASSES
                .iter()
                .map(|c| (c.name().to_owned(), counts[c.index()]))
                .collect();
            report
        })
    };

    let end = start + options.duration;
    if options.rate > 0.0 {
        // Open loop: every millisecond, send what the schedule says is due.
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let interval = Duration::from_secs_f64(1.0 / options.rate);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            let now = Instant::now();
            if now >= end {
                break;
            }
            loop {
                let scheduled = start + interval.mul_f64(n as f64);
                if scheduled > now {
                    break;
                }
                let send = connections[(n as usize) % connections.len()].clone();
                let i = n;
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                    let _ = done_tx.send(Done {
                        class: Class::of(i),
                        at: now.duration_since(start),
                        latency_us: 0,
                        unexpected: Some(format!(
                            "request {i}: not sent, {MAX_IN_FLIGHT} requests already in flight"
                        )),
                    });
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (options, done_tx, in_flight) =
                    (options.clone(), done_tx.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let done = one(send, &options, i, scheduled, start).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let _ = done_tx.send(done);
                });
            }
        }
    } else {
        // Closed loop: `connections x streams` workers, each sending its share back to back.
        let workers = connections.len() * options.streams.max(1);
        let next = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for w in 0..workers {
            let send = connections[w % connections.len()].clone();
            let (options, done_tx, next, sent) =
                (options.clone(), done_tx.clone(), next.clone(), sent.clone());
            handles.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    sent.fetch_add(1, Ordering::Relaxed);
                    let done = one(send.clone(), &options, i, Instant::now(), start).await;
                    let _ = done_tx.send(done);
                }
            }));
        }
        for h in handles {
            h.await?;
        }
    }
    // Wait (bounded) for the answers still in flight.
    let drain = Instant::now() + ANSWER_TIMEOUT + Duration::from_secs(1);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    if let Some(s) = sampler {
        s.abort();
    }
    probing.store(false, Ordering::Relaxed);
    let _ = prober.join();
    drop(done_tx);
    let mut report = collector.await?;
    report.sent = sent.load(Ordering::Relaxed);
    report.elapsed_s = elapsed.as_secs_f64();
    report.rate = report.answers as f64 / options.duration.as_secs_f64();
    let lost = report.sent.saturating_sub(report.answers);
    if lost > 0 {
        report.unexpected += lost;
        report
            .unexpected_examples
            .push(format!("{lost} requests still unanswered at the end"));
    }
    report.rss = rss.lock().unwrap().clone();
    report.steal = steal.lock().unwrap().clone();
    report.probe = probe.lock().unwrap().clone();
    report.probe_median_us = report.median_probe_us();
    let window_s = options.window.as_secs().max(1);
    for window in &mut report.windows {
        let mut probed: Vec<u64> = report
            .probe
            .iter()
            .filter(|(t, _)| *t >= window.start_s && *t < window.start_s + window_s)
            .map(|(_, us)| *us)
            .collect();
        probed.sort_unstable();
        if !probed.is_empty() {
            window.probe_median_us = Some(probed[probed.len() / 2]);
            window.probe_slowest_us = probed.last().copied();
        }
        let stolen: Vec<u64> = report
            .steal
            .iter()
            .filter(|(t, _)| *t >= window.start_s && *t < window.start_s + window_s)
            .map(|(_, ms)| *ms)
            .collect();
        if !stolen.is_empty() {
            window.steal_ms = Some(stolen.iter().sum());
            window.worst_steal_ms = stolen.iter().max().copied();
        }
    }
    memory_verdict(&mut report, options.warmup, options.duration);
    Ok(report)
}

/// Mean VmRSS over the first 10 s after the warm-up and over the last 10 s of the run.
fn memory_verdict(report: &mut Report, warmup: Duration, duration: Duration) {
    let (w, d) = (warmup.as_secs(), duration.as_secs());
    let mean = |from: u64, to: u64| {
        let v: Vec<u64> = report
            .rss
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, kb)| *kb)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<u64>() / v.len() as u64)
    };
    if d < w + 20 {
        return;
    }
    report.rss_after_warmup_kb = mean(w, w + 10);
    report.rss_end_kb = mean(d - 10, d + 1);
    report.rss_max_after_warmup_kb = report
        .rss
        .iter()
        .filter(|(t, _)| *t >= w)
        .map(|(_, kb)| *kb)
        .max();
    if let (Some(a), Some(e)) = (report.rss_after_warmup_kb, report.rss_end_kb) {
        report.rss_growth_pct = Some((e as f64 - a as f64) * 100.0 / a as f64);
    }
}
