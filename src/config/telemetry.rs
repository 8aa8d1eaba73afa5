//! Traces: where spans go and which are kept. Configured by OpenTelemetry's standard variables
//! and by the native file's `telemetry` section; with no endpoint, tracing is off.
//!
//! The native file's fields win; each field it leaves out is taken from the variable, so a
//! deployment that injects the standard `OTEL_*` variables works with either front end. Like
//! every other setting, the variables come in as a map (`Config::load`); `telemetry` reads
//! nothing else.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::Deserialize;

pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
pub const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
pub const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";

pub const DEFAULT_SERVICE_NAME: &str = "checkpoint";
pub const DEFAULT_SAMPLER: &str = "parentbased_always_on";
/// Spans waiting for export; past it, new spans are dropped and counted.
pub const DEFAULT_QUEUE_SIZE: usize = 2048;
pub const MAX_QUEUE_SIZE: u64 = 1 << 20;

/// The `telemetry` section of the native file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// OTLP/gRPC endpoint of the trace collector (`http://otel-collector:4317`). Default:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`; with none,
    /// tracing is off.
    pub endpoint: Option<String>,
    /// `service.name` of the spans. Default: `OTEL_SERVICE_NAME`, then `checkpoint`.
    pub service_name: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio`. Default: `OTEL_TRACES_SAMPLER`,
    /// then `parentbased_always_on`.
    pub sampler: Option<String>,
    /// The ratio of the `traceidratio` samplers, 0 to 1. Default: `OTEL_TRACES_SAMPLER_ARG`,
    /// then 1.
    pub sampler_arg: Option<f64>,
    /// More resource attributes (`deployment.environment: prod`); added to those of
    /// `OTEL_RESOURCE_ATTRIBUTES`, and winning over them.
    pub resource_attributes: BTreeMap<String, String>,
    /// Spans that may wait for export; more are dropped and counted
    /// (`checkpoint_trace_spans_dropped_total`). Default: `OTEL_BSP_MAX_QUEUE_SIZE`, then 2048.
    pub queue_size: Option<u64>,
}

/// Which traces are recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Follow the parent's sampled flag when the Check has a parent.
    pub parent_based: bool,
    /// For a trace checkpoint starts (or any trace, when not parent based).
    pub root: Root,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Keep this share of trace ids, 0 to 1.
    Ratio(f64),
}

/// Validated trace settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The OTLP/gRPC endpoint; `None`: tracing is off.
    pub endpoint: Option<String>,
    pub service_name: String,
    pub sampler: Sampler,
    /// Resource attributes besides `service.name`, in order.
    pub resource: Vec<(String, String)>,
    pub queue_size: usize,
}

impl Default for TraceSettings {
    fn default() -> TraceSettings {
        TraceSettings {
            endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            sampler: Sampler {
                parent_based: true,
                root: Root::AlwaysOn,
            },
            resource: Vec::new(),
            queue_size: DEFAULT_QUEUE_SIZE,
        }
    }
}

impl TraceSettings {
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }
}

/// One problem: the variable or the file's field it is about, and what is wrong.
pub type Problem = (Where, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Variable(&'static str),
    /// A field of the file's `telemetry` section.
    Field(&'static str),
}

/// Every variable this module reads.
pub const ALL: &[&str] = &[
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_SERVICE_NAME,
    OTEL_TRACES_SAMPLER,
    OTEL_TRACES_SAMPLER_ARG,
    OTEL_RESOURCE_ATTRIBUTES,
    OTEL_BSP_MAX_QUEUE_SIZE,
];

/// The trace settings from the file's section (all empty for the environment front end) and
/// the variables; every problem found.
pub fn resolve(
    section: &TelemetrySection,
    vars: &HashMap<String, String>,
) -> Result<TraceSettings, Vec<Problem>> {
    let var = |name: &'static str| {
        vars.get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| (Where::Variable(name), v.to_owned()))
    };
    let mut problems = Vec::new();

    let endpoint = match section.endpoint.as_deref().map(str::trim) {
        Some(text) => Some((Where::Field("endpoint"), text.to_owned())),
        None => {
            var(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).or_else(|| var(OTEL_EXPORTER_OTLP_ENDPOINT))
        }
    };
    let endpoint = match endpoint {
        // An empty endpoint in the file turns tracing off whatever the variables say.
        Some((_, text)) if text.is_empty() => None,
        Some((at, text)) => match endpoint_problem(&text) {
            None => Some(text),
            Some(message) => {
                problems.push((at, message));
                None
            }
        },
        None => None,
    };

    let service_name = match &section.service_name {
        Some(name) if name.trim().is_empty() => {
            problems.push((Where::Field("service_name"), "is empty".to_owned()));
            String::new()
        }
        Some(name) => name.trim().to_owned(),
        None => var(OTEL_SERVICE_NAME).map_or_else(|| DEFAULT_SERVICE_NAME.to_owned(), |(_, v)| v),
    };

    let (sampler_at, sampler_name) = match &section.sampler {
        Some(name) => (Where::Field("sampler"), name.trim().to_owned()),
        None => var(OTEL_TRACES_SAMPLER).unwrap_or((
            Where::Variable(OTEL_TRACES_SAMPLER),
            DEFAULT_SAMPLER.to_owned(),
        )),
    };
    let ratio = match section.sampler_arg {
        Some(ratio) => Some((Where::Field("sampler_arg"), ratio)),
        None => match var(OTEL_TRACES_SAMPLER_ARG) {
            None => None,
            Some((at, text)) => match text.parse::<f64>() {
                Ok(ratio) => Some((at, ratio)),
                Err(_) => {
                    problems.push((at, format!("\"{text}\" is not a number from 0 to 1")));
                    None
                }
            },
        },
    };
    let ratio = match ratio {
        Some((at, ratio)) if !(0.0..=1.0).contains(&ratio) => {
            problems.push((at, format!("{ratio} is not a number from 0 to 1")));
            1.0
        }
        Some((_, ratio)) => ratio,
        None => 1.0,
    };
    let sampler = match sampler_name.to_ascii_lowercase().as_str() {
        "always_on" => Some((false, Root::AlwaysOn)),
        "always_off" => Some((false, Root::AlwaysOff)),
        "traceidratio" => Some((false, Root::Ratio(ratio))),
        "parentbased_always_on" => Some((true, Root::AlwaysOn)),
        "parentbased_always_off" => Some((true, Root::AlwaysOff)),
        "parentbased_traceidratio" => Some((true, Root::Ratio(ratio))),
        _ => {
            problems.push((
                sampler_at,
                format!(
                    "\"{sampler_name}\" is not a sampler checkpoint knows: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ),
            ));
            None
        }
    };

    let mut resource: Vec<(String, String)> = Vec::new();
    if let Some((at, text)) = var(OTEL_RESOURCE_ATTRIBUTES) {
        match parse_resource_attributes(&text) {
            Ok(pairs) => resource = pairs,
            Err(message) => problems.push((at, message)),
        }
    }
    for (key, value) in &section.resource_attributes {
        if key.trim().is_empty() {
            problems.push((
                Where::Field("resource_attributes"),
                "a key is empty".to_owned(),
            ));
            continue;
        }
        resource.retain(|(k, _)| k != key);
        resource.push((key.clone(), value.clone()));
    }
    // OTEL_SERVICE_NAME and `service_name` win over a `service.name` attribute.
    let service_name = match resource.iter().position(|(k, _)| k == "service.name") {
        Some(i) if section.service_name.is_none() && var(OTEL_SERVICE_NAME).is_none() => {
            resource.remove(i).1
        }
        Some(i) => {
            resource.remove(i);
            service_name
        }
        None => service_name,
    };

    let queue_size = match section.queue_size {
        Some(size) => Some((Where::Field("queue_size"), size)),
        None => match var(OTEL_BSP_MAX_QUEUE_SIZE) {
            None => None,
            Some((at, text)) => match text.parse::<u64>() {
                Ok(size) => Some((at, size)),
                Err(_) => {
                    problems.push((at, format!("\"{text}\" is not a whole number")));
                    None
                }
            },
        },
    };
    let queue_size = match queue_size {
        Some((at, size)) if size == 0 || size > MAX_QUEUE_SIZE => {
            problems.push((at, format!("{size} is not from 1 to {MAX_QUEUE_SIZE}")));
            DEFAULT_QUEUE_SIZE
        }
        Some((_, size)) => size as usize,
        None => DEFAULT_QUEUE_SIZE,
    };

    match sampler {
        Some((parent_based, root)) if problems.is_empty() => Ok(TraceSettings {
            endpoint,
            service_name,
            sampler: Sampler { parent_based, root },
            resource,
            queue_size,
        }),
        _ => Err(problems),
    }
}

/// Why an endpoint cannot be used, if it cannot: an `http://host[:port]` URL. TLS to the
/// collector is not built in: a collector on the same host or in the same pod, or a sidecar,
/// takes the spans in plain text.
fn endpoint_problem(text: &str) -> Option<String> {
    match reqwest::Url::parse(text) {
        Ok(url) if url.scheme() == "http" && url.has_host() => None,
        Ok(url) if url.scheme() == "https" => Some(format!(
            "\"{text}\": TLS to the collector is not supported; send to a collector on the same host or pod over http://"
        )),
        Ok(_) => Some(format!(
            "\"{text}\" is not an http URL such as http://otel-collector:4317"
        )),
        Err(e) => Some(format!("\"{text}\" is not a URL: {e}")),
    }
}

/// `key=value,key=value` (the W3C Baggage form of `OTEL_RESOURCE_ATTRIBUTES`): values are
/// percent-decoded; an entry without `=` or with an empty key is a problem.
pub fn parse_resource_attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!("\"{entry}\" is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("\"{entry}\" has an empty key"));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("\"{entry}\": the value is not percent-encoded UTF-8"))?;
        pairs.retain(|(k, _)| k != key);
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_endpoint_is_off_with_the_defaults() {
        let got = resolve(&TelemetrySection::default(), &vars(&[])).expect("valid");
        assert_eq!(got, TraceSettings::default());
        assert!(!got.enabled());
        assert_eq!(got.service_name, "checkpoint");
    }

    #[test]
    fn the_variables_configure_traces() {
        let got = resolve(
            &TelemetrySection::default(),
            &vars(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4317"),
                (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://traces:4317"),
                (OTEL_SERVICE_NAME, "edge-auth"),
                (OTEL_TRACES_SAMPLER, "parentbased_traceidratio"),
                (OTEL_TRACES_SAMPLER_ARG, "0.25"),
                (
                    OTEL_RESOURCE_ATTRIBUTES,
                    "deployment.environment=prod, team=a%20b,service.name=ignored",
                ),
                (OTEL_BSP_MAX_QUEUE_SIZE, "100"),
            ]),
        )
        .expect("valid");
        assert_eq!(got.endpoint.as_deref(), Some("http://traces:4317"));
        assert_eq!(got.service_name, "edge-auth");
        assert_eq!(
            got.sampler,
            Sampler {
                parent_based: true,
                root: Root::Ratio(0.25)
            }
        );
        assert_eq!(
            got.resource,
            [
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "a b".to_owned())
            ]
        );
        assert_eq!(got.queue_size, 100);
        let generic = resolve(
            &TelemetrySection::default(),
            &vars(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://generic:4317"),
                (OTEL_RESOURCE_ATTRIBUTES, "service.name=from-attributes"),
            ]),
        )
        .expect("valid");
        assert_eq!(generic.endpoint.as_deref(), Some("http://generic:4317"));
        assert_eq!(generic.service_name, "from-attributes");
        assert!(generic.resource.is_empty());
    }

    #[test]
    fn the_file_wins_field_by_field() {
        let section = TelemetrySection {
            endpoint: Some("http://file:4317".to_owned()),
            sampler: Some("always_off".to_owned()),
            resource_attributes: [("team".to_owned(), "file".to_owned())].into(),
            ..TelemetrySection::default()
        };
        let got = resolve(
            &section,
            &vars(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://env:4317"),
                (OTEL_SERVICE_NAME, "from-env"),
                (OTEL_TRACES_SAMPLER, "always_on"),
                (OTEL_RESOURCE_ATTRIBUTES, "team=env,zone=z1"),
            ]),
        )
        .expect("valid");
        assert_eq!(got.endpoint.as_deref(), Some("http://file:4317"));
        assert_eq!(got.service_name, "from-env");
        assert_eq!(got.sampler.root, Root::AlwaysOff);
        assert!(!got.sampler.parent_based);
        assert_eq!(
            got.resource,
            [
                ("zone".to_owned(), "z1".to_owned()),
                ("team".to_owned(), "file".to_owned())
            ]
        );
        let off = TelemetrySection {
            endpoint: Some(String::new()),
            ..TelemetrySection::default()
        };
        let got = resolve(
            &off,
            &vars(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://env:4317")]),
        )
        .expect("valid");
        assert!(
            !got.enabled(),
            "an empty endpoint in the file turns traces off"
        );
    }

    #[test]
    fn problems_name_the_variable_or_the_field() {
        let problems = resolve(
            &TelemetrySection::default(),
            &vars(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "https://collector:4317"),
                (OTEL_TRACES_SAMPLER, "jaeger_remote"),
                (OTEL_TRACES_SAMPLER_ARG, "half"),
                (OTEL_RESOURCE_ATTRIBUTES, "novalue"),
                (OTEL_BSP_MAX_QUEUE_SIZE, "0"),
            ]),
        )
        .expect_err("invalid");
        let at: Vec<Where> = problems.iter().map(|(at, _)| *at).collect();
        assert_eq!(
            at,
            [
                Where::Variable(OTEL_EXPORTER_OTLP_ENDPOINT),
                Where::Variable(OTEL_TRACES_SAMPLER_ARG),
                Where::Variable(OTEL_TRACES_SAMPLER),
                Where::Variable(OTEL_RESOURCE_ATTRIBUTES),
                Where::Variable(OTEL_BSP_MAX_QUEUE_SIZE),
            ],
            "{problems:?}"
        );
        let section = TelemetrySection {
            endpoint: Some("collector:4317".to_owned()),
            sampler_arg: Some(1.5),
            sampler: Some("traceidratio".to_owned()),
            ..TelemetrySection::default()
        };
        let problems = resolve(&section, &vars(&[])).expect_err("invalid");
        let at: Vec<Where> = problems.iter().map(|(at, _)| *at).collect();
        assert_eq!(
            at,
            [Where::Field("endpoint"), Where::Field("sampler_arg")],
            "{problems:?}"
        );
    }
}
