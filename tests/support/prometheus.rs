//! A strict parser for the Prometheus text format the exporter emits, shared by the metrics
//! unit tests (`#[path]`-included) and the daemon tests.

use std::collections::HashMap;

/// One parsed sample line: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// A strict parser for the Prometheus text format subset the exporter emits: `# HELP`,
/// `# TYPE` and `name{label="value",...} number` lines. Panics (fails the test) on any
/// other line.
pub fn parse(
    text: &str,
) -> (
    HashMap<String, String>,
    HashMap<String, String>,
    Vec<Sample>,
) {
    let (mut help, mut types, mut samples) = (HashMap::new(), HashMap::new(), Vec::new());
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has text");
            assert!(valid_name(name), "{line}");
            help.insert(name.to_string(), doc.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_string(), kind.to_string());
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, Vec::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels close");
                    let labels = body
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label k=v");
                            assert!(valid_name(k), "{line}");
                            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                            (k.to_string(), v.expect("quoted label").to_string())
                        })
                        .collect();
                    (name, labels)
                }
            };
            assert!(valid_name(name), "{line}");
            samples.push((name.to_string(), labels, value));
        }
    }
    (help, types, samples)
}

pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
}
