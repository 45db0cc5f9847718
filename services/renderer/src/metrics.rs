//! The renderer's Prometheus metrics. No campaign, template or contact id on these.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct RendererMetrics {
    /// Jobs by channel, lane (`bulk`, `triggered`) and outcome (`rendered`, `expired`,
    /// `cancelled`, or the refusal's class: `template_not_found`, `missing_field`,
    /// `too_long`, ...).
    pub renders: IntCounterVec,
    pub duration: HistogramVec,
    /// SMS parts produced, by encoding: what the providers will bill.
    pub sms_parts: IntCounterVec,
    /// Template versions read from Redis (a cache miss).
    pub template_loads: IntCounter,
}

impl RendererMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let renders = IntCounterVec::new(
            Opts::new(
                "tocsin_renderer_jobs_total",
                "Send jobs handled, by channel, lane and outcome.",
            ),
            &["channel", "lane", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "tocsin_renderer_render_duration_seconds",
                "Time to render one message, compliance parts included.",
            )
            .buckets(vec![
                0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                0.025, 0.1,
            ]),
            &["channel"],
        )?;
        let sms_parts = IntCounterVec::new(
            Opts::new(
                "tocsin_renderer_sms_parts_total",
                "SMS parts rendered, by encoding (gsm7, ucs2).",
            ),
            &["encoding"],
        )?;
        let template_loads = IntCounter::new(
            "tocsin_renderer_template_loads_total",
            "Template versions loaded from Redis and compiled (cache misses).",
        )?;
        registry.register(Box::new(renders.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(sms_parts.clone()))?;
        registry.register(Box::new(template_loads.clone()))?;
        // Started at zero, so that dashboards show 0 rather than no data, and increase()
        // counts the first one (a series that appears at 1 has nothing to count from).
        for channel in ["email", "sms"] {
            for lane in ["bulk", "triggered"] {
                for outcome in ["rendered", "expired", "cancelled"] {
                    renders.with_label_values(&[channel, lane, outcome]);
                }
            }
        }
        for encoding in ["gsm7", "ucs2"] {
            sms_parts.with_label_values(&[encoding]);
        }
        Ok(RendererMetrics {
            renders,
            duration,
            sms_parts,
            template_loads,
        })
    }
}
