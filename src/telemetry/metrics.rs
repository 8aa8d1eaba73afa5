//! Prometheus metrics, served as text at `GET /metrics` on the status port (`status`).
//!
//! Built once per [`crate::run`] (no global registry: several servers can run in one process,
//! each with its own numbers). Two kinds of numbers:
//!
//! - recorded per Check by the boundary (`envoy`) through [`Metrics::record_check`], from what
//!   the [`Outcome`] already carries: the Check's decision, reason and duration, and, when an
//!   identity source was actually asked (not on a cache hit, not when another Check's call was
//!   shared), the source's answer and, for sources that call out, the call's duration. Every
//!   label value is resolved at start-up into a handle: a Check does no hashing, no allocation,
//!   no lock, only atomic adds (a few tens of nanoseconds; `benches/hot_path.rs`);
//! - read at scrape time from the counters the components keep anyway: the identity cache's
//!   hits, misses and coalesced lookups and its size, each JWT source's key fetches, key
//!   count and whether it refuses its stale keys, the decision log's dropped lines, the trace
//!   spans dropped.
//!
//! A Check answered with a stale user (`stale_if_error`) counts in
//! `checkpoint_identity_stale_answers_total{source}`, and its source's answer as `unavailable`.
//!
//! Labels are bounded by construction: decision, reason ([`Reason::as_str`]), identity answer
//! ([`IdentityAnswer::as_str`]), cache result, and the configured names of identity sources.
//! Never a path, a rule key, a user id or a header value.
//!
//! `checkpoint_trace_spans_dropped_total` is read at scrape time from the trace exporter
//! ([`super::traces::dropped_spans`]); it stays at 0 with tracing off.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::check::{IdentityAnswer, Outcome, Reason};
use crate::identity::{Lookup, Resolver};

/// Histogram buckets in seconds: 10 µs to 10 s, 1-2.5-5 steps. A Check answered from the cache
/// takes tens of microseconds; an outbound identity call, milliseconds to its timeout.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The identity cache's `result` label values, in [`CacheCounters`] order.
const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "coalesced"];

/// Every metric checkpoint exposes, and the handles the hot path uses.
pub struct Metrics {
    registry: Registry,
    /// Indexed by `reason as usize`: `checkpoint_checks_total{decision,reason}` for the
    /// reason (and the one decision it implies), and the duration histogram of that decision.
    checks: Vec<(IntCounter, Histogram)>,
    /// One per identity source that identifies users, in configuration order.
    sources: Vec<SourceMetrics>,
    cache_requests: [IntCounter; 3],
    cache_entries: IntGauge,
    jwks_refreshes: IntCounterVec,
    jwks_keys: IntGaugeVec,
    decision_log_dropped: IntCounter,
    trace_spans_dropped: IntCounter,
    /// For identity sources a reload added (not among `sources`): resolved by name.
    identity_requests: IntCounterVec,
    identity_stale: IntCounterVec,
    jwks_stale: IntGaugeVec,
    /// `checkpoint_config_reloads_total{result}`: success, failure.
    reloads: [IntCounter; 2],
    reload_success_time: Gauge,
    /// `checkpoint_shadow_disagreements_total{enforced,shadow}`: enforced allow and shadow
    /// deny, then enforced deny and shadow allow.
    shadow_disagreements: [IntCounter; 2],
    /// Held while the scrape-time counters are brought up to date, so that two concurrent
    /// scrapes do not both add the same difference.
    pulling: Mutex<()>,
}

struct SourceMetrics {
    name: String,
    /// Indexed by `answer as usize`.
    requests: Vec<IntCounter>,
    /// Only for sources whose answer is an outbound call.
    duration: Option<Histogram>,
    /// `checkpoint_identity_stale_answers_total{source}`.
    stale: IntCounter,
}

impl Metrics {
    /// Registers every metric. `sources` are the identity sources that identify users: each
    /// one's configured name and whether asking it is an outbound call
    /// ([`Resolver::user_sources`]).
    pub fn new<'a>(
        sources: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
            let vec = HistogramVec::new(opts, labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };

        let checks_total = counter_vec(
            "checkpoint_checks_total",
            "Checks answered, by decision and reason.",
            &["decision", "reason"],
        )?;
        let check_duration = histogram_vec(
            "checkpoint_check_duration_seconds",
            "Time from a Check's arrival to its encoded answer, by decision.",
            &["decision"],
        )?;
        let checks = Reason::ALL
            .iter()
            .map(|reason| {
                let decision = if reason.allows() { "allow" } else { "deny" };
                Ok((
                    checks_total.get_metric_with_label_values(&[decision, reason.as_str()])?,
                    check_duration.get_metric_with_label_values(&[decision])?,
                ))
            })
            .collect::<Result<Vec<_>, prometheus::Error>>()?;

        let identity_requests = counter_vec(
            "checkpoint_identity_requests_total",
            "Answers of identity sources that were asked (cache hits and shared calls are not \
             counted), by source and outcome.",
            &["source", "outcome"],
        )?;
        let identity_duration = histogram_vec(
            "checkpoint_identity_request_duration_seconds",
            "Duration of outbound calls to identity sources (user-info, introspection), by source.",
            &["source"],
        )?;
        let identity_stale = counter_vec(
            "checkpoint_identity_stale_answers_total",
            "Checks answered with a user whose cache entry had expired, because the source was \
             unavailable (stale_if_error), by source.",
            &["source"],
        )?;
        let sources = sources
            .into_iter()
            .map(|(name, outbound)| {
                let requests = IdentityAnswer::ALL
                    .iter()
                    .map(|answer| {
                        identity_requests.get_metric_with_label_values(&[name, answer.as_str()])
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let duration = outbound
                    .then(|| identity_duration.get_metric_with_label_values(&[name]))
                    .transpose()?;
                Ok(SourceMetrics {
                    name: name.to_owned(),
                    requests,
                    duration,
                    stale: identity_stale.get_metric_with_label_values(&[name])?,
                })
            })
            .collect::<Result<Vec<_>, prometheus::Error>>()?;

        let cache = counter_vec(
            "checkpoint_identity_cache_requests_total",
            "Identity cache lookups, by result (coalesced: waited for another Check's call).",
            &["result"],
        )?;
        let cache_requests = [
            cache.get_metric_with_label_values(&[CACHE_RESULTS[0]])?,
            cache.get_metric_with_label_values(&[CACHE_RESULTS[1]])?,
            cache.get_metric_with_label_values(&[CACHE_RESULTS[2]])?,
        ];
        let cache_entries = IntGauge::new(
            "checkpoint_identity_cache_entries",
            "Answers the identity cache holds.",
        )?;
        registry.register(Box::new(cache_entries.clone()))?;
        let jwks_refreshes = counter_vec(
            "checkpoint_jwks_refreshes_total",
            "Fetches of a JWT source's signing keys (timer and unknown key), by source and \
             result (success, failure).",
            &["source", "result"],
        )?;
        let jwks_keys = gauge_vec(
            "checkpoint_jwks_keys",
            "Signing keys a JWT source holds.",
            &["source"],
        )?;
        let jwks_stale = gauge_vec(
            "checkpoint_jwks_stale",
            "1 while a JWT source refuses tokens because its key fetches have failed for longer \
             than max_key_staleness, else 0.",
            &["source"],
        )?;
        let decision_log_dropped = counter(
            "checkpoint_decision_log_dropped_total",
            "Decision log lines dropped because stdout did not keep up.",
        )?;
        let trace_spans_dropped = counter(
            "checkpoint_trace_spans_dropped_total",
            "Trace spans dropped before export: the queue was full, or the collector did not take them.",
        )?;
        let build_info = gauge_vec(
            "checkpoint_build_info",
            "Always 1; the version of the running build is its label.",
            &["version"],
        )?;
        build_info
            .get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?
            .set(1);
        let reloads_total = counter_vec(
            "checkpoint_config_reloads_total",
            "Reloads of the configuration (file change, SIGHUP, poll), by result (success, \
             failure: the last good configuration kept serving).",
            &["result"],
        )?;
        let reloads = [
            reloads_total.get_metric_with_label_values(&["success"])?,
            reloads_total.get_metric_with_label_values(&["failure"])?,
        ];
        let reload_success_time = Gauge::new(
            "checkpoint_config_last_reload_success_timestamp_seconds",
            "When the configuration serving now was loaded (start-up or the last successful \
             reload), in seconds since the epoch.",
        )?;
        registry.register(Box::new(reload_success_time.clone()))?;
        reload_success_time.set(now_seconds());
        let disagreements = counter_vec(
            "checkpoint_shadow_disagreements_total",
            "Checks whose shadow rules decided otherwise than the enforced rules, by the \
             enforced and the shadow decision (allow, deny).",
            &["enforced", "shadow"],
        )?;
        let shadow_disagreements = [
            disagreements.get_metric_with_label_values(&["allow", "deny"])?,
            disagreements.get_metric_with_label_values(&["deny", "allow"])?,
        ];

        Ok(Metrics {
            registry,
            checks,
            sources,
            cache_requests,
            cache_entries,
            jwks_refreshes,
            jwks_keys,
            decision_log_dropped,
            trace_spans_dropped,
            identity_requests,
            identity_stale,
            jwks_stale,
            reloads,
            reload_success_time,
            shadow_disagreements,
            pulling: Mutex::new(()),
        })
    }

    /// Records one Check: called once per Check with its outcome and how long it took.
    #[inline]
    pub fn record_check(&self, outcome: &Outcome<'_>, took: Duration) {
        if let Some((total, duration)) = self.checks.get(outcome.reason as usize) {
            total.inc();
            duration.observe(took.as_secs_f64());
        }
        // A stale answer stands in for a source that was unavailable: that is what it answered.
        let stale = outcome.identity_cache == Some(Lookup::Stale);
        if stale {
            match self
                .sources
                .iter()
                .find(|s| s.name == outcome.identity_source)
            {
                Some(source) => source.stale.inc(),
                None => {
                    if let Ok(counter) = self
                        .identity_stale
                        .get_metric_with_label_values(&[outcome.identity_source])
                    {
                        counter.inc();
                    }
                }
            }
        }
        let answer = if stale {
            IdentityAnswer::Unavailable
        } else {
            outcome.identity_answer()
        };
        // A latency is there only when the deciding source was asked for this Check.
        if let Some(latency) = outcome.identity_latency {
            if let Some(source) = self
                .sources
                .iter()
                .find(|s| s.name == outcome.identity_source)
            {
                if let Some(requests) = source.requests.get(answer as usize) {
                    requests.inc();
                }
                if let Some(duration) = &source.duration {
                    duration.observe(latency.as_secs_f64());
                }
            } else {
                // A source a reload added: its answers are found by name (hashing; only for
                // such sources); its call durations are timed from the next restart.
                if let Ok(requests) = self
                    .identity_requests
                    .get_metric_with_label_values(&[outcome.identity_source, answer.as_str()])
                {
                    requests.inc();
                }
            }
        }
    }

    /// Records a reload's result; a success also sets the time of the last success.
    pub fn record_reload(&self, success: bool) {
        self.reloads[usize::from(!success)].inc();
        if success {
            self.reload_success_time.set(now_seconds());
        }
    }

    /// Records a Check whose shadow rules decided otherwise than the enforced ones.
    #[inline]
    pub fn record_shadow_disagreement(&self, enforced_allows: bool) {
        self.shadow_disagreements[usize::from(!enforced_allows)].inc();
    }

    /// The text exposition of every metric, the scrape-time ones read from `identity` and the
    /// decision log now.
    pub async fn render(&self, identity: &Resolver) -> String {
        identity.settle_cache().await;
        self.pull(identity);
        let mut out = Vec::with_capacity(16 * 1024);
        // Writing into a Vec fails only on a malformed family, which `Registry` rules out.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%error, "metrics could not be encoded");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Brings the scrape-time numbers up to date.
    fn pull(&self, identity: &Resolver) {
        let _pulling = self.pulling.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = identity.cache_stats() {
            let (hits, misses, coalesced) = stats.snapshot();
            for (counter, now) in self.cache_requests.iter().zip([hits, misses, coalesced]) {
                catch_up(counter, now);
            }
        }
        self.cache_entries
            .set(i64::try_from(identity.cache_entries()).unwrap_or(i64::MAX));
        for (name, keys) in identity.key_sets() {
            let (fetched, failed) = keys.fetches();
            for (result, now) in [("success", fetched), ("failure", failed)] {
                if let Ok(counter) = self
                    .jwks_refreshes
                    .get_metric_with_label_values(&[name, result])
                {
                    catch_up(&counter, now);
                }
            }
            if let Ok(gauge) = self.jwks_keys.get_metric_with_label_values(&[name]) {
                gauge.set(i64::try_from(keys.key_count()).unwrap_or(i64::MAX));
            }
            if let Ok(gauge) = self.jwks_stale.get_metric_with_label_values(&[name]) {
                gauge.set(i64::from(keys.stale_at(tokio::time::Instant::now())));
            }
        }
        catch_up(&self.decision_log_dropped, super::dropped_lines());
        catch_up(&self.trace_spans_dropped, super::traces::dropped_spans());
    }
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Raises `counter` to `now`, a count kept elsewhere that only grows.
fn catch_up(counter: &IntCounter, now: u64) {
    let have = counter.get();
    if now > have {
        counter.inc_by(now - have);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_answers_index_their_handles() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
        for (i, answer) in IdentityAnswer::ALL.iter().enumerate() {
            assert_eq!(*answer as usize, i, "{answer:?}");
        }
    }

    #[test]
    fn buckets_resolve_ten_microseconds_to_ten_seconds() {
        assert_eq!(DURATION_BUCKETS.first(), Some(&0.000_01));
        assert_eq!(DURATION_BUCKETS.last(), Some(&10.0));
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    /// Each Check lands in the series of its reason, the decision that reason implies, and
    /// (when the source was asked) its source's answer; other sources and cache hits add
    /// nothing.
    #[tokio::test]
    async fn a_check_moves_its_own_series() {
        let metrics = Metrics::new([("userinfo", true), ("trusted", false)]).expect("metrics");
        let resolver = Resolver::new(Vec::new(), None);
        let outcome = |reason, source, latency: Option<u64>| Outcome {
            decision: if reason == Reason::Allowed {
                crate::check::Decision::Allow
            } else {
                crate::check::Decision::Deny(crate::check::Denial::Unauthenticated)
            },
            reason,
            rule: None,
            user: None,
            identity_source: source,
            failure: None,
            identity_cache: None,
            identity_latency: latency.map(Duration::from_millis),
            rbac: None,
            location: None,
        };
        let took = Duration::from_micros(40);
        metrics.record_check(&outcome(Reason::Allowed, "userinfo", Some(3)), took);
        metrics.record_check(&outcome(Reason::Allowed, "userinfo", None), took);
        metrics.record_check(&outcome(Reason::LoginRequired, "trusted", Some(0)), took);
        metrics.record_check(&outcome(Reason::NoRule, "none", None), took);
        let text = metrics.render(&resolver).await;
        for line in [
            "checkpoint_checks_total{decision=\"allow\",reason=\"allowed\"} 2",
            "checkpoint_checks_total{decision=\"deny\",reason=\"login_required\"} 1",
            "checkpoint_checks_total{decision=\"deny\",reason=\"no_rule\"} 1",
            "checkpoint_checks_total{decision=\"deny\",reason=\"invalid_path\"} 0",
            "checkpoint_check_duration_seconds_count{decision=\"allow\"} 2",
            "checkpoint_check_duration_seconds_bucket{decision=\"deny\",le=\"0.00005\"} 2",
            "checkpoint_identity_requests_total{outcome=\"anonymous\",source=\"userinfo\"} 1",
            "checkpoint_identity_requests_total{outcome=\"anonymous\",source=\"trusted\"} 1",
            "checkpoint_identity_requests_total{outcome=\"user\",source=\"userinfo\"} 0",
            "checkpoint_identity_request_duration_seconds_count{source=\"userinfo\"} 1",
            "checkpoint_identity_request_duration_seconds_bucket{source=\"userinfo\",le=\"0.0025\"} 0",
            "checkpoint_identity_request_duration_seconds_bucket{source=\"userinfo\",le=\"0.005\"} 1",
            "checkpoint_identity_cache_requests_total{result=\"hit\"} 0",
            "checkpoint_identity_cache_entries 0",
            "checkpoint_trace_spans_dropped_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(
            !text
                .contains("checkpoint_identity_request_duration_seconds_count{source=\"trusted\"}"),
            "only outbound calls are timed: {text}"
        );
        assert!(text.contains(&format!(
            "checkpoint_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    /// A stale answer (`stale_if_error`) counts in its source's stale answers, and as what the
    /// source answered: unavailable, not a user.
    #[tokio::test]
    async fn a_stale_answer_is_counted_as_an_outage_bridged() {
        let metrics = Metrics::new([("userinfo", true)]).expect("metrics");
        let resolver = Resolver::new(Vec::new(), None);
        let user =
            crate::identity::User::new("alice".into(), vec![], vec![], "{}".into()).expect("user");
        let outcome = |source, cache| Outcome {
            decision: crate::check::Decision::Allow,
            reason: Reason::Allowed,
            rule: None,
            user: Some(std::sync::Arc::new(user.clone())),
            identity_source: source,
            failure: None,
            identity_cache: Some(cache),
            identity_latency: Some(Duration::from_millis(2)),
            rbac: None,
            location: None,
        };
        let took = Duration::from_micros(40);
        metrics.record_check(&outcome("userinfo", Lookup::Stale), took);
        metrics.record_check(&outcome("userinfo", Lookup::Miss), took);
        // A source a reload added is counted by name.
        metrics.record_check(&outcome("added", Lookup::Stale), took);
        let text = metrics.render(&resolver).await;
        for line in [
            "checkpoint_identity_stale_answers_total{source=\"userinfo\"} 1",
            "checkpoint_identity_stale_answers_total{source=\"added\"} 1",
            "checkpoint_identity_requests_total{outcome=\"unavailable\",source=\"userinfo\"} 1",
            "checkpoint_identity_requests_total{outcome=\"user\",source=\"userinfo\"} 1",
            "checkpoint_identity_requests_total{outcome=\"unavailable\",source=\"added\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn counters_kept_elsewhere_only_move_forward() {
        let counter = IntCounter::new("c_total", "c").expect("counter");
        catch_up(&counter, 5);
        catch_up(&counter, 3);
        catch_up(&counter, 7);
        assert_eq!(counter.get(), 7);
    }
}
