//! Prometheus text exposition (format 0.0.4) for the handful of series this server keeps.
//! Written here rather than with a metrics crate: five series, no labels beyond route and
//! status, and the text format is a few lines of formatting.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Everything /metrics reports. Shared by the HTTP layer and the model worker.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batch_images: Mutex<Histogram>,
    pub images_generated: AtomicU64,
    /// Requests whose client left before their batch ran.
    pub jobs_skipped: AtomicU64,
    /// Jobs waiting for the model worker.
    pub queue_depth: Arc<AtomicUsize>,
    /// TCP connections being served (at most `max_connections`).
    pub open_connections: AtomicUsize,
    /// Mean seconds per batch (exponentially weighted), in microseconds, for Retry-After.
    batch_micros: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            latency: Mutex::default(),
            batch_images: Mutex::new(Histogram::new(BATCH_BUCKETS)),
            images_generated: AtomicU64::new(0),
            jobs_skipped: AtomicU64::new(0),
            queue_depth: Arc::new(AtomicUsize::new(0)),
            open_connections: AtomicUsize::new(0),
            batch_micros: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((route.to_string(), status)).or_insert(0) += 1;
        }
        if let Ok(mut latency) = self.latency.lock() {
            latency
                .entry(route.to_string())
                .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
                .observe(seconds);
        }
    }

    pub fn record_batch(&self, images: usize, seconds: f64) {
        if let Ok(mut batches) = self.batch_images.lock() {
            batches.observe(images as f64);
        }
        self.images_generated
            .fetch_add(images as u64, Ordering::Relaxed);
        let micros = (seconds * 1e6) as u64;
        let old = self.batch_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            micros
        } else {
            (old * 7 + micros) / 8
        };
        self.batch_micros.store(new, Ordering::Relaxed);
    }

    /// Mean seconds one batch takes (0 before the first).
    pub fn batch_seconds(&self) -> f64 {
        self.batch_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP unclip_http_requests_total HTTP requests answered, by route and status.\n# TYPE unclip_http_requests_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((route, status), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "unclip_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP unclip_http_request_duration_seconds Time from request to response, by route.\n# TYPE unclip_http_request_duration_seconds histogram\n");
        if let Ok(latency) = self.latency.lock() {
            for (route, histogram) in latency.iter() {
                histogram.render(
                    &mut out,
                    "unclip_http_request_duration_seconds",
                    &format!("route=\"{}\"", escape(route)),
                );
            }
        }
        out.push_str("# HELP unclip_queue_depth Requests waiting for the model worker.\n# TYPE unclip_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "unclip_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out.push_str("# HELP unclip_open_connections TCP connections being served.\n# TYPE unclip_open_connections gauge\n");
        let _ = writeln!(
            out,
            "unclip_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        out.push_str("# HELP unclip_batch_images Images per batched model pass.\n# TYPE unclip_batch_images histogram\n");
        if let Ok(batches) = self.batch_images.lock() {
            batches.render(&mut out, "unclip_batch_images", "");
        }
        out.push_str("# HELP unclip_images_generated_total Images produced by the model.\n# TYPE unclip_images_generated_total counter\n");
        let _ = writeln!(
            out,
            "unclip_images_generated_total {}",
            self.images_generated.load(Ordering::Relaxed)
        );
        out.push_str("# HELP unclip_jobs_skipped_total Requests dropped before their batch ran because the client had gone.\n# TYPE unclip_jobs_skipped_total counter\n");
        let _ = writeln!(
            out,
            "unclip_jobs_skipped_total {}",
            self.jobs_skipped.load(Ordering::Relaxed)
        );
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: counts every response by its route template (not the raw path, so that
/// random file ids and probes of unknown paths do not grow the label set).
pub async fn record(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.record_request(
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.record_batch(3, 0.1);
        m.record_batch(1, 0.1);
        let text = m.render();
        assert!(
            text.contains("unclip_batch_images_bucket{le=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("unclip_batch_images_bucket{le=\"4\"} 2"),
            "{text}"
        );
        assert!(text.contains("unclip_batch_images_count 2"), "{text}");
        assert!(text.contains("unclip_images_generated_total 4"), "{text}");
    }

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let m = Metrics::default();
        m.record_request("/healthz", 200, 0.001);
        m.record_request("/healthz", 200, 0.001);
        m.record_request("/v1/models", 401, 0.001);
        let text = m.render();
        assert!(text.contains("unclip_http_requests_total{route=\"/healthz\",status=\"200\"} 2"));
        assert!(text.contains("unclip_http_requests_total{route=\"/v1/models\",status=\"401\"} 1"));
    }
}
