//! Structured logs through `tracing`: JSON lines on stdout, filtered by `LOG_LEVEL`; the
//! Prometheus metrics ([`metrics`]); the decision id ([`decision_id`]).
//!
//! Called once by `main`; it also makes every panic one error line of that log
//! ([`PANIC_TARGET`]). The decision log line is written by `envoy`; no module logs a token, a
//! cookie or a whole header map.
//!
//! The decision line is the one line written for every Check, so it does not go through
//! `tracing`'s JSON formatter (a visitor per field, a serde map, a formatted timestamp: about a
//! tenth of a Check's whole cost). [`decision`] writes the same JSON by hand into a thread-local
//! buffer and appends it to a bounded in-memory queue; a dedicated writer thread empties the
//! queue to stdout in batches. The request path never waits for stdout: when the queue is full
//! (stdout blocked, a slow log collector), the line is dropped and counted, and the writer
//! reports the count in a warning once it can write again. Every other event is written
//! synchronously by the `tracing` JSON layer, after whatever decision lines are queued, so the
//! order of lines is the order of events and a shutdown's last lines ("stopped") come after
//! every decision.
//!
//! `LOG_LEVEL` keeps its meaning: the decision line is written when the filter enables `info`
//! for the target `checkpoint::decision` (`LOG_LEVEL=warn` turns it off,
//! `warn,checkpoint::decision=info` keeps only it). Without [`init`] (tests, embedders), the
//! decision is an ordinary `tracing` event with the same fields.

pub mod decision_id;
pub mod metrics;
pub mod traces;

pub use decision_id::DecisionId;
pub use metrics::Metrics;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The target of the decision event, as `LOG_LEVEL` directives name it.
pub const DECISION_TARGET: &str = "checkpoint::decision";

/// Checks a `LOG_LEVEL` value (`info`, `debug`, or full `tracing` directives).
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("invalid log level \"{level}\": {e}"))
}

/// Installs the JSON subscriber and the decision line writer. Fails if a subscriber is already
/// installed.
pub fn init(level: &str) -> Result<(), String> {
    init_with_traces(level, &crate::config::telemetry::TraceSettings::default()).map(drop)
}

/// [`init`], and the trace exporter when `traces` names an endpoint ([`traces::layer`]): the
/// returned [`traces::Traces`] is shut down before the process exits, to send the last spans.
pub fn init_with_traces(
    level: &str,
    traces: &crate::config::telemetry::TraceSettings,
) -> Result<Option<traces::Traces>, String> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // Each layer has its own filter: the log takes what `LOG_LEVEL` asks for and never the
    // spans that become OpenTelemetry spans; the OpenTelemetry layer takes only those. With
    // per-layer filters only, `tracing::enabled!` (the decision line's check) still answers for
    // the log.
    let filter = filter(level)?.add_directive(
        format!("{}=off", traces::TARGET)
            .parse()
            .map_err(|e| format!("{e}"))?,
    );
    let sink = SINK.get_or_init(Sink::start);
    let log = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_writer(sink)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(log);
    // No `Option` layer: a `None` layer claims interest in every callsite, which makes the
    // per-layer filters skip their check and drop events (tracing-subscriber 0.3).
    let exporter = match traces::layer(traces)? {
        Some((layer, exporter)) => {
            registry.with(layer).try_init().map_err(|e| e.to_string())?;
            Some(exporter)
        }
        None => {
            registry.try_init().map_err(|e| e.to_string())?;
            None
        }
    };
    log_panics();
    let on = tracing::enabled!(target: DECISION_TARGET, tracing::Level::INFO);
    DECISION_LINE.store(
        if on {
            DECISION_LINE_ON
        } else {
            DECISION_LINE_OFF
        },
        Ordering::Relaxed,
    );
    Ok(exporter)
}

/// The target of the event a panic writes ([`log_panics`]).
pub const PANIC_TARGET: &str = "checkpoint::panic";

/// Replaces the default panic hook (plain text on stderr) with one error event on the JSON log:
/// `location` (file:line:column), `thread`, `error` (the panic's message) and, when
/// `RUST_BACKTRACE` asks for one, `backtrace`. A log collector that reads JSON lines gets the
/// panic as one more line it can alert on, in order with the Check's other lines.
///
/// The message is written as the panic made it. The product's code cannot format request text
/// into one: `unwrap`, `expect`, `panic!` and slicing a string at a byte index are refused by
/// its lints, and what remains (an index out of bounds, a `RefCell` borrowed twice) names
/// numbers and places, not values.
///
/// When the log's filter leaves that event out (`LOG_LEVEL=off`), the default hook writes the
/// panic to stderr as before.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !tracing::enabled!(target: PANIC_TARGET, tracing::Level::ERROR) {
            return default(info);
        }
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic without a message)");
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("(unnamed)");
        let captured = std::backtrace::Backtrace::capture();
        // `None` leaves the field out of the line.
        let backtrace = (captured.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| tracing::field::display(&captured));
        tracing::error!(
            target: PANIC_TARGET,
            location,
            thread,
            error = message,
            backtrace,
            "a thread panicked"
        );
    }));
}

/// Writes every queued decision line to stdout now. Lines are otherwise written within
/// [`BATCH_WINDOW`]; call this before the process exits if no other event is logged after the
/// last Check (any other event flushes the queue before it is written).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        drop(sink.flush());
    }
}

/// How many decision lines were dropped because the queue was full, since start.
pub fn dropped_lines() -> u64 {
    SINK.get()
        .map(|sink| sink.dropped_total.load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// The fields of one decision line; `None` fields are left out of the line, as `tracing` does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decision<'a> {
    pub request_id: &'a str,
    /// The id the client (on a deny) and, when configured, the upstream got ([`DecisionId`]).
    pub decision_id: &'a str,
    pub rule: &'a str,
    pub method: &'a str,
    /// When no rule matched: the request's method and normalised path (never the query
    /// string), so that a 404 or a 400 can be understood.
    pub request_method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub decision: &'a str,
    pub reason: &'a str,
    pub identity_source: &'a str,
    pub identity_cache: Option<&'a str>,
    pub identity_latency_us: Option<u64>,
    pub identity_failure: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub latency_us: u64,
    /// When shadow rules are configured and decided otherwise: their decision and reason.
    pub shadow_decision: Option<&'a str>,
    pub shadow_reason: Option<&'a str>,
}

/// Whether `LOG_LEVEL` asks for the decision line; check before gathering its fields.
#[inline]
pub fn decision_enabled() -> bool {
    match DECISION_LINE.load(Ordering::Relaxed) {
        DECISION_LINE_OFF => false,
        DECISION_LINE_ON => true,
        _ => tracing::enabled!(target: DECISION_TARGET, tracing::Level::INFO),
    }
}

/// [`decision_enabled`]'s answer, taken once when [`init_with_traces`] has installed the
/// subscriber: its filter never changes afterwards. With per-layer filters `tracing` asks the
/// subscriber again at every `enabled!`, which walks the filter's directives on every Check.
/// Without [`init_with_traces`] (tests, embedders with their own subscriber) `tracing` is asked.
static DECISION_LINE: AtomicU8 = AtomicU8::new(DECISION_LINE_ASK);
const DECISION_LINE_ASK: u8 = 0;
const DECISION_LINE_OFF: u8 = 1;
const DECISION_LINE_ON: u8 = 2;

/// Logs one decision at `info`, target `checkpoint::decision`. The caller checks
/// [`decision_enabled`] first.
pub fn decision(line: &Decision<'_>) {
    match SINK.get() {
        Some(sink) => LINE.with(|buf| match buf.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                write_decision(&mut buf, SystemTime::now(), line);
                sink.push(&buf);
            }
            // Only reachable if writing a line re-entered this function; never in practice.
            Err(_) => {
                let mut buf = Vec::with_capacity(LINE_CAPACITY);
                write_decision(&mut buf, SystemTime::now(), line);
                sink.push(&buf);
            }
        }),
        None => tracing::info!(
            target: DECISION_TARGET,
            request_id = line.request_id,
            decision_id = line.decision_id,
            rule = line.rule,
            method = line.method,
            decision = line.decision,
            reason = line.reason,
            identity_source = line.identity_source,
            identity_cache = line.identity_cache,
            identity_latency_us = line.identity_latency_us,
            identity_failure = line.identity_failure,
            detail = line.detail,
            user_id = line.user_id,
            latency_us = line.latency_us,
            shadow_decision = line.shadow_decision,
            shadow_reason = line.shadow_reason,
            "decision"
        ),
    }
}

/// The decision line, exactly as `tracing`'s JSON formatter writes the event (flattened
/// fields, `None` fields left out, the target last), with its trailing newline.
pub fn write_decision(out: &mut Vec<u8>, now: SystemTime, line: &Decision<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    write_timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"decision\"");
    string_field(out, "request_id", line.request_id);
    string_field(out, "decision_id", line.decision_id);
    string_field(out, "rule", line.rule);
    string_field(out, "method", line.method);
    if let Some(value) = line.request_method {
        string_field(out, "request_method", value);
    }
    if let Some(value) = line.path {
        string_field(out, "path", value);
    }
    string_field(out, "decision", line.decision);
    string_field(out, "reason", line.reason);
    string_field(out, "identity_source", line.identity_source);
    if let Some(value) = line.identity_cache {
        string_field(out, "identity_cache", value);
    }
    if let Some(value) = line.identity_latency_us {
        number_field(out, "identity_latency_us", value);
    }
    if let Some(value) = line.identity_failure {
        string_field(out, "identity_failure", value);
    }
    if let Some(value) = line.detail {
        string_field(out, "detail", value);
    }
    if let Some(value) = line.user_id {
        string_field(out, "user_id", value);
    }
    number_field(out, "latency_us", line.latency_us);
    if let Some(value) = line.shadow_decision {
        string_field(out, "shadow_decision", value);
    }
    if let Some(value) = line.shadow_reason {
        string_field(out, "shadow_reason", value);
    }
    out.extend_from_slice(b",\"target\":\"checkpoint::decision\"}\n");
}

/// `,"name":"value"`; `name` is one of ours and needs no escaping.
fn string_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":\"");
    escape_into(out, value);
    out.push(b'"');
}

fn number_field(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    write_u64(out, value);
}

/// JSON string contents, escaped the way serde_json escapes them: `"`, `\` and the control
/// characters below U+0020 (short forms where JSON has them, `\u00XX` otherwise); everything
/// else, non-ASCII included, as it is.
fn escape_into(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = value.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any byte is `"`, `\\` or below 0x20, eight bytes at a time (the common answer is no).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero: (x - 1) & !x has its high bit set (exact for the lowest such
    // byte, which is all a yes/no answer needs).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    // A byte below 0x20: (x - 0x20) & !x has its high bit set.
    let has_control = |x: u64| x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if has_control(x)
            || has_zero(x ^ (ONES * u64::from(b'"')))
            || has_zero(x ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `value` as `width` decimal digits, zero-padded (`value` has at most `width` digits).
fn write_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut v = value;
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits[..width]);
}

/// RFC 3339 in UTC with microseconds (`2026-01-31T09:05:00.123456Z`), as `tracing`'s default
/// timer writes it. The date and time to the second come from [`SECOND`] when this thread
/// wrote a line in the same second.
fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    // Before 1970 only with a broken clock; written as the epoch rather than failing.
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    match SECOND.get() {
        (second, text) if second == secs => out.extend_from_slice(&text),
        _ => write_second(out, secs),
    }
    out.push(b'.');
    write_padded(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a line written in `SECOND.0`.
type SecondText = [u8; 19];

thread_local! {
    /// The second this thread last wrote a timestamp for, and its text: it changes once a second
    /// and a line is written for every Check. Never a second with a five-digit year.
    static SECOND: Cell<(u64, SecondText)> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// The date and time of `secs` since the epoch, to the second; remembered in [`SECOND`]. Out
/// of line: it runs once a second, and its code would otherwise be walked by every Check.
#[cold]
#[inline(never)]
fn write_second(out: &mut Vec<u8>, secs: u64) {
    let start = out.len();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    if year > 9999 {
        out.push(b'+');
        write_u64(out, year);
    } else {
        write_padded(out, year, 4);
    }
    out.push(b'-');
    write_padded(out, month, 2);
    out.push(b'-');
    write_padded(out, day, 2);
    out.push(b'T');
    write_padded(out, of_day / 3600, 2);
    out.push(b':');
    write_padded(out, of_day / 60 % 60, 2);
    out.push(b':');
    write_padded(out, of_day % 60, 2);
    if let Some(Ok(text)) = out.get(start..).map(SecondText::try_from) {
        SECOND.set((secs, text));
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

// ---- the queue and its writer thread ------------------------------------------------------

/// Most bytes of decision lines waiting for stdout; beyond it lines are dropped and counted.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

/// How long the writer lets lines gather after the first one before writing them: at most
/// one write (and one wake-up of the writer) per window, whatever the request rate.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// A typical line is about 350 bytes.
const LINE_CAPACITY: usize = 512;

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(LINE_CAPACITY));
}

static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    /// Lines waiting for the writer. Held only to append one line or to swap the buffer out.
    queued: Mutex<Vec<u8>>,
    /// The buffer being written; its lock orders writers (the thread and synchronous events).
    writing: Mutex<Vec<u8>>,
    /// Lines dropped since the writer last reported them.
    dropped: AtomicU64,
    dropped_total: AtomicU64,
    /// The writer thread, woken when the queue goes from empty to not empty. `None` when the
    /// thread could not be started: every line is then written synchronously.
    writer: Option<Thread>,
}

impl Sink {
    fn start() -> Sink {
        let writer = std::thread::Builder::new()
            .name("checkpoint-log".into())
            .spawn(writer_loop)
            .ok()
            .map(|handle| handle.thread().clone());
        Sink {
            queued: Mutex::new(Vec::with_capacity(QUEUE_BASE_CAPACITY)),
            writing: Mutex::new(Vec::with_capacity(QUEUE_BASE_CAPACITY)),
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            writer,
        }
    }

    /// Queues one line; never waits on stdout.
    fn push(&self, line: &[u8]) {
        let Some(writer) = &self.writer else {
            let mut writing = self.flush();
            let _ = std::io::stdout().lock().write_all(line);
            writing.clear();
            return;
        };
        let mut queued = lock(&self.queued);
        if queued.len() + line.len() > MAX_QUEUED_BYTES {
            drop(queued);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = queued.is_empty();
        queued.extend_from_slice(line);
        drop(queued);
        if was_empty {
            writer.unpark();
        }
    }

    /// Writes every queued line; returns the writing lock, so that a synchronous event is
    /// written before any line queued after this point.
    fn flush(&self) -> MutexGuard<'_, Vec<u8>> {
        let mut writing = lock(&self.writing);
        std::mem::swap(&mut *lock(&self.queued), &mut *writing);
        if !writing.is_empty() {
            let _ = std::io::stdout().lock().write_all(&writing);
            let written = writing.len();
            writing.clear();
            if let Some(keep) = capacity_to_keep(writing.capacity(), written) {
                writing.shrink_to(keep);
            }
        }
        writing
    }
}

/// What each of the two queue buffers holds at least: a batch window of lines at a few thousand
/// Checks a second.
const QUEUE_BASE_CAPACITY: usize = 64 << 10;

/// The capacity to shrink a queue buffer to after it held `written` bytes, when it holds far
/// more than that: a stall (the writer thread starved, stdout slow) grows the buffers up to
/// [`MAX_QUEUED_BYTES`], and capacity kept after the stall is memory the process never gives
/// back. At a steady rate the buffer keeps about one window's worth (the next power of two), so
/// it is not reallocated at every window.
fn capacity_to_keep(capacity: usize, written: usize) -> Option<usize> {
    let target = written.next_power_of_two().max(QUEUE_BASE_CAPACITY);
    (capacity > 2 * target).then_some(target)
}

fn writer_loop() {
    // The sink is set right after this thread starts.
    let sink = loop {
        match SINK.get() {
            Some(sink) => break sink,
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    loop {
        std::thread::park();
        std::thread::sleep(BATCH_WINDOW);
        drop(sink.flush());
        let dropped = sink.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                target: "checkpoint::telemetry",
                dropped,
                "decision log lines dropped: stdout did not keep up"
            );
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `tracing` layer's writer: every other event, written after the queued decision lines.
impl<'a> MakeWriter<'a> for &'static Sink {
    type Writer = SyncWriter;

    fn make_writer(&'a self) -> SyncWriter {
        SyncWriter { sink: self }
    }
}

struct SyncWriter {
    sink: &'static Sink,
}

impl Write for SyncWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _writing = self.sink.flush();
        std::io::stdout().lock().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue buffers give back what a stall grew them to, and keep a steady rate's window.
    #[test]
    fn queue_buffers_shrink_after_a_stall_but_not_at_a_steady_rate() {
        const K: usize = 1 << 10;
        let cases = [
            // (capacity, bytes just written, shrunk to)
            (64 * K, 20 * K, None),
            (64 * K, 64 * K, None),
            // a steady 530 KB a window: the buffer grew to 1 MiB and stays
            (1024 * K, 530 * K, None),
            (1024 * K, 500 * K, None),
            // the window after a stall: 4 MiB held, 49 KB written
            (4096 * K, 49 * K, Some(64 * K)),
            (1024 * K, 49 * K, Some(64 * K)),
            (256 * K, 49 * K, Some(64 * K)),
            (4096 * K, 300 * K, Some(512 * K)),
            // twice the target is kept
            (128 * K, 49 * K, None),
        ];
        for (capacity, written, want) in cases {
            assert_eq!(
                capacity_to_keep(capacity, written),
                want,
                "capacity {capacity}, written {written}"
            );
        }
    }

    fn line(decision: &Decision<'_>, at: SystemTime) -> String {
        let mut out = Vec::new();
        write_decision(&mut out, at, decision);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn the_line_is_what_the_tracing_formatter_writes() {
        let at = UNIX_EPOCH + Duration::new(1_795_858_163, 931_723_456);
        let got = line(
            &Decision {
                request_id: "6f1c2b1e",
                decision_id: "6f1c2b1e",
                rule: "/api/users",
                method: "GET",
                request_method: None,
                path: None,
                decision: "allow",
                reason: "allowed",
                identity_source: "userinfo",
                identity_cache: Some("miss"),
                identity_latency_us: Some(147_282),
                identity_failure: None,
                detail: None,
                user_id: Some("alice"),
                latency_us: 183_226,
                shadow_decision: None,
                shadow_reason: None,
            },
            at,
        );
        assert_eq!(
            got,
            "{\"timestamp\":\"2026-11-28T09:29:23.931723Z\",\"level\":\"INFO\",\"message\":\"decision\",\
             \"request_id\":\"6f1c2b1e\",\"decision_id\":\"6f1c2b1e\",\"rule\":\"/api/users\",\"method\":\"GET\",\"decision\":\"allow\",\
             \"reason\":\"allowed\",\"identity_source\":\"userinfo\",\"identity_cache\":\"miss\",\
             \"identity_latency_us\":147282,\"user_id\":\"alice\",\"latency_us\":183226,\
             \"target\":\"checkpoint::decision\"}\n"
        );
    }

    #[test]
    fn every_field_is_valid_json_and_matches_serde_json_escaping() {
        let nasty = "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j\u{7f}k é 🦀";
        let got = line(
            &Decision {
                request_id: nasty,
                decision_id: "0123456789abcdef0123456789abcdef",
                rule: "",
                method: "",
                request_method: Some("GET"),
                path: Some(nasty),
                decision: "deny",
                reason: "identity_unavailable",
                identity_source: "none",
                identity_cache: None,
                identity_latency_us: None,
                identity_failure: Some("userinfo_timeout"),
                detail: Some(nasty),
                user_id: None,
                latency_us: 0,
                shadow_decision: None,
                shadow_reason: None,
            },
            UNIX_EPOCH,
        );
        let value: serde_json::Value = serde_json::from_str(&got).expect("valid JSON");
        assert_eq!(value["request_id"], nasty);
        assert_eq!(value["detail"], nasty);
        assert_eq!(value["latency_us"], 0);
        assert_eq!(value["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert!(value.get("user_id").is_none());
        assert!(value.get("identity_cache").is_none());
        let escaped = serde_json::to_string(nasty).expect("serialises");
        assert!(got.contains(&format!("\"request_id\":{escaped},")));
    }

    #[test]
    fn the_fast_escape_check_agrees_with_a_byte_by_byte_one() {
        let slow = |b: &[u8]| b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        let mut text = b"0123456789abcdefghijklmnopqrstuv".to_vec();
        assert!(!needs_escape(&text));
        for at in 0..text.len() {
            for special in [
                0u8, 0x1f, b'"', b'\\', b'\n', 0x20, 0x7f, 0x80, 0xff, b'!', b'#',
            ] {
                let saved = text[at];
                text[at] = special;
                for end in at..=text.len() {
                    assert_eq!(
                        needs_escape(&text[..end]),
                        slow(&text[..end]),
                        "{at} {special} {end}"
                    );
                }
                text[at] = saved;
            }
        }
    }

    #[test]
    fn timestamps_match_the_civil_calendar() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (4_107_542_399, "2100-02-28T23:59:59.000000Z"),
            (4_107_542_400, "2100-03-01T00:00:00.000000Z"),
            (1_767_225_599, "2025-12-31T23:59:59.000000Z"),
            (253_402_300_800, "+10000-01-01T00:00:00.000000Z"),
            (1_767_225_599, "2025-12-31T23:59:59.000000Z"),
        ] {
            let mut out = Vec::new();
            write_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(String::from_utf8(out).expect("UTF-8"), want, "{secs}");
            // The same second again, as the next line in it writes it: from the thread's
            // remembered second when it has one, with its own microseconds.
            let mut out = Vec::new();
            write_timestamp(&mut out, UNIX_EPOCH + Duration::new(secs, 123_456_789));
            let want = want.replace(".000000Z", ".123456Z");
            assert_eq!(String::from_utf8(out).expect("UTF-8"), want, "{secs} again");
        }
        let mut out = Vec::new();
        write_u64(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }
}
