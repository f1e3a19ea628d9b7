//! A self-contained HTML report (no scripts, no external assets): inline SVG charts of latency
//! percentiles over time, throughput over time, the HDR percentile curve, CPU per host, and a
//! stage-by-stage comparison.

use std::fmt::Write;

use crate::report::Report;

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const W: f64 = 560.0;
const H: f64 = 240.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 36.0;
const PAD_T: f64 = 40.0;
const PAD_R: f64 = 12.0;

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Rounds an axis maximum up to 1, 2 or 5 times a power of ten.
fn nice(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if max <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 {
        format!("{:.0}", v)
    } else if v >= 1.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

/// Horizontal grid lines and their labels at 0, 1/4, ... of `y_max`, shared by both charts.
fn y_grid(svg: &mut String, y_max: f64) {
    let ph = H - PAD_T - PAD_B;
    for i in 0..=4 {
        let y = y_max * i as f64 / 4.0;
        let py = PAD_T + ph - y / y_max * ph;
        let _ = write!(
            svg,
            r#"<line x1="{PAD_L}" x2="{}" y1="{py}" y2="{py}" class="grid"/><text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"#,
            W - PAD_R,
            PAD_L - 4.0,
            py + 4.0,
            fmt_num(y)
        );
    }
}

/// A line chart. `x_log`: the x axis shows 1/(1-p) decades (for percentile curves, x in 0..100).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    percentile_x: bool,
) -> String {
    let tx = |x: f64| -> f64 {
        if percentile_x {
            let p = (x / 100.0).min(0.999_99);
            (1.0 / (1.0 - p)).log10() / 5.0
        } else {
            x
        }
    };
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| tx(p.0)))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .collect();
    let x_max = if percentile_x {
        1.0
    } else {
        nice(xs.iter().copied().fold(0.0, f64::max))
    };
    let y_max = nice(ys.iter().copied().fold(0.0, f64::max));
    let pw = W - PAD_L - PAD_R;
    let ph = H - PAD_T - PAD_B;
    let sx = |x: f64| PAD_L + tx(x) / x_max * pw;
    let sy = |y: f64| PAD_T + ph - (y / y_max).min(1.0) * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        esc(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{PAD_L}" y="16" class="title">{}</text>"#,
        esc(title)
    );
    y_grid(&mut svg, y_max);
    if percentile_x {
        for (label, p) in [
            ("0%", 0.0),
            ("90%", 90.0),
            ("99%", 99.0),
            ("99.9%", 99.9),
            ("99.99%", 99.99),
            ("99.999%", 99.999),
        ] {
            let px = sx(p);
            let _ = write!(
                svg,
                r#"<line x1="{px}" x2="{px}" y1="{PAD_T}" y2="{}" class="grid"/><text x="{px}" y="{}" class="tick" text-anchor="middle">{label}</text>"#,
                H - PAD_B,
                H - PAD_B + 14.0
            );
        }
    } else {
        for i in 0..=4 {
            let x = x_max * i as f64 / 4.0;
            let px = PAD_L + x / x_max * pw;
            let _ = write!(
                svg,
                r#"<text x="{px}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
                H - PAD_B + 14.0,
                fmt_num(x)
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text>"#,
        PAD_L + pw / 2.0,
        H - 4.0,
        esc(x_label)
    );
    let _ = write!(
        svg,
        r#"<text x="12" y="{}" class="axis" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"#,
        PAD_T + ph / 2.0,
        PAD_T + ph / 2.0,
        esc(y_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            path.join(" ")
        );
        let lx = PAD_L + 8.0 + i as f64 * 150.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{}" width="10" height="3" fill="{color}"/><text x="{}" y="{}" class="legend">{}</text>"#,
            PAD_T - 14.0,
            lx + 14.0,
            PAD_T - 10.0,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A bar chart of (label, value).
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let y_max = nice(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    let pw = W - PAD_L - PAD_R;
    let ph = H - PAD_T - PAD_B;
    let n = bars.len().max(1) as f64;
    let slot = pw / n;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        esc(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{PAD_L}" y="16" class="title">{}</text>"#,
        esc(title)
    );
    y_grid(&mut svg, y_max);
    for (i, (label, value)) in bars.iter().enumerate() {
        let h = value / y_max * ph;
        let x = PAD_L + i as f64 * slot + slot * 0.2;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text><text x="{:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            PAD_T + ph - h,
            slot * 0.6,
            COLORS[i % COLORS.len()],
            x + slot * 0.3,
            PAD_T + ph - h - 4.0,
            fmt_num(*value),
            x + slot * 0.3,
            H - PAD_B + 14.0,
            esc(label)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="12" y="{}" class="axis" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"#,
        PAD_T + ph / 2.0,
        PAD_T + ph / 2.0,
        esc(y_label)
    );
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg{background:#fff;border:1px solid #eee}.title{font-size:13px;font-weight:600}.tick{font-size:10px;fill:#555}
.axis{font-size:11px;fill:#333}.legend{font-size:10px}.grid{stroke:#eee}.warn{color:#a00;font-weight:600}
.prov{font-size:12px;color:#555}";

/// The ladder: per workload, capacity and capacity per core by stage (charts), and a row per
/// stage with its cost and its bottleneck.
fn ladder(reports: &[Report]) -> String {
    let mut out =
        String::from("<h2>The ladder: what each stage buys, what it costs, where it is stuck</h2>");
    let mut workloads: Vec<&str> = Vec::new();
    for r in reports.iter().filter(|r| r.capacity.is_some()) {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    for workload in workloads {
        let rows: Vec<(&Report, &crate::report::Capacity)> = reports
            .iter()
            .filter(|r| r.workload == workload)
            .filter_map(|r| r.capacity.as_ref().map(|c| (r, c)))
            .collect();
        let _ = write!(
            out,
            "<h3>Workload <code>{}</code></h3><div class=\"charts\">",
            esc(workload)
        );
        out.push_str(&bar_chart(
            &format!("Capacity at the target, {workload} (req/s)"),
            "req/s",
            &rows
                .iter()
                .map(|(r, c)| (stage_name(r), c.capacity_rps))
                .collect::<Vec<_>>(),
        ));
        out.push_str(&bar_chart(
            &format!("Capacity per core, {workload} (req/s per core)"),
            "req/s per core",
            &rows
                .iter()
                .map(|(r, c)| (stage_name(r), c.rps_per_core))
                .collect::<Vec<_>>(),
        ));
        out.push_str("</div><table><tr><th class=\"l\">stage</th><th>capacity (req/s)</th><th>cores</th><th>req/s per core</th><th class=\"l\">bottleneck</th><th>its use of its budget</th><th>knee runs met</th><th>hit ratio</th><th>DB CPU ms per request</th></tr>");
        for (r, c) in rows {
            let (host, share) =
                c.bottleneck
                    .as_ref()
                    .map_or(("-".to_owned(), "-".to_owned()), |b| {
                        (
                            format!("{} ({})", b.host, b.role),
                            format!(
                                "{:.2} of {} cores ({:.0} %) at {:.0} req/s",
                                b.cores_used,
                                b.cpu_budget,
                                b.utilization * 100.0,
                                b.at_rate_rps
                            ),
                        )
                    });
            let _ = write!(out, "<tr><td class=\"l\">{}</td><td><b>{:.0}</b></td><td>{}</td><td>{:.0}</td><td class=\"l\">{}</td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td></tr>",
                esc(&stage_name(r)), c.capacity_rps, c.total_cores, c.rps_per_core, esc(&host), esc(&share), c.knee_passed, c.knee_runs,
                r.cache.hit_ratio.map_or("-".into(), |h| format!("{:.1} %", h * 100.0)),
                c.database_cpu_ms_per_request.map_or("-".into(), |v| format!("{v:.3}")));
        }
        out.push_str("</table>");
    }
    out
}

fn stage_name(r: &Report) -> String {
    r.stage
        .map_or_else(|| "loadtest".to_owned(), |n| format!("stage {n}"))
}

/// The whole report for one or more runs (a tour: one per stage, in order).
pub fn render(title: &str, reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = write!(out, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>", esc(title), esc(title));
    let mixed = crate::report::mixed_provenance(reports);
    if !mixed.is_empty() {
        out.push_str("<p class=\"warn\">Mixed results, not one comparison:</p><ul>");
        for m in &mixed {
            let _ = write!(out, "<li>{}</li>", esc(m));
        }
        out.push_str("</ul>");
    }
    if reports.iter().any(|r| r.capacity.is_some()) {
        out.push_str(&ladder(reports));
    }
    let many_workloads = reports.iter().any(|r| r.workload != reports[0].workload);
    let label = |r: &Report| {
        if many_workloads {
            format!("{} {}", stage_name(r), r.workload)
        } else {
            stage_name(r)
        }
    };
    if reports.len() > 1 {
        out.push_str("<h2>Stage by stage</h2><table><tr><th class=\"l\">stage</th><th>mode</th><th>rate (req/s)</th><th>throughput (req/s)</th><th>p50 ms</th><th>p99 ms</th><th>errors</th><th>lost writes</th><th>hit ratio</th></tr>");
        for r in reports {
            let _ = write!(out, "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{:.3} %</td><td>{}</td><td>{}</td></tr>",
                esc(&label(r)), esc(&r.mode), r.rate_rps.map_or("-".into(), |v| format!("{v:.0}")), r.throughput_rps,
                r.latency_ms.corrected.p50, r.latency_ms.corrected.p99, r.error_rate() * 100.0, r.checks.lost_writes,
                r.cache.hit_ratio.map_or("-".into(), |h| format!("{:.1} %", h * 100.0)));
        }
        out.push_str("</table><div class=\"charts\">");
        out.push_str(&bar_chart(
            "Highest rate meeting the target (req/s)",
            "req/s",
            &reports
                .iter()
                .map(|r| (label(r), r.rate_rps.unwrap_or(r.throughput_rps)))
                .collect::<Vec<_>>(),
        ));
        out.push_str(&bar_chart(
            "Corrected p99 at that rate (ms)",
            "ms",
            &reports
                .iter()
                .map(|r| (label(r), r.latency_ms.corrected.p99))
                .collect::<Vec<_>>(),
        ));
        out.push_str("</div>");
    }
    for r in reports {
        let mode = if r.mode == "sweep" {
            "sweep for the highest rate meeting the p99 target".to_owned()
        } else {
            format!("{} loop", r.mode)
        };
        let _ = write!(
            out,
            "<h2>{} — workload <code>{}</code>, {}</h2>",
            esc(&stage_name(r)),
            esc(&r.workload),
            esc(&mode)
        );
        let l = &r.latency_ms;
        let c = &r.counts;
        let _ = write!(out, "<table><tr><th>throughput</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>uncorrected p99</th></tr><tr><td>{:.0} req/s</td><td>{} ms</td><td>{} ms</td><td>{} ms</td><td>{} ms</td><td>{} ms</td><td>{} ms</td></tr></table>",
            r.throughput_rps, l.corrected.p50, l.corrected.p90, l.corrected.p99, l.corrected.p999, l.corrected.max, l.uncorrected.p99);
        let _ = write!(out, "<p>scheduled {} = sent {} + dropped {}; ok {}, failed {}, unknown {}. Writes acknowledged {}, lost <b>{}</b>; read-your-writes violations {} of {}.</p>",
            c.scheduled, c.sent, c.dropped, c.ok, c.failed, c.unknown, r.checks.acknowledged_writes, r.checks.lost_writes, r.checks.ryw_violations, r.checks.ryw_checks);
        if r.provenance.machine_bound == Some(true) {
            out.push_str("<p class=\"warn\">Machine-bound: all cores of the machine were busy, so the result measures this machine, not a host budget.</p>");
        }
        out.push_str("<div class=\"charts\">");
        let series = |f: &dyn Fn(&crate::report::SeriesPoint) -> f64| {
            r.series
                .iter()
                .map(|p| (p.t as f64, f(p)))
                .collect::<Vec<_>>()
        };
        out.push_str(&line_chart(
            "Latency over time (corrected, ms)",
            "second",
            "ms",
            &[
                ("p50".into(), series(&|p| p.p50_ms)),
                ("p99".into(), series(&|p| p.p99_ms)),
                ("max".into(), series(&|p| p.max_ms)),
            ],
            false,
        ));
        out.push_str(&line_chart(
            "Throughput over time (per second)",
            "second",
            "responses/s",
            &[
                ("ok".into(), series(&|p| p.ok as f64)),
                ("errors".into(), series(&|p| p.errors as f64)),
            ],
            false,
        ));
        out.push_str(&line_chart(
            "Latency by percentile (HDR, corrected)",
            "percentile",
            "ms",
            &[("corrected".into(), r.curve.clone())],
            true,
        ));
        if !r.hosts.is_empty() {
            let host_series: Vec<(String, Vec<(f64, f64)>)> = r
                .hosts
                .iter()
                .map(|h| {
                    (
                        format!("{} ({} core budget)", h.name, h.cpu_budget),
                        h.cores_series
                            .iter()
                            .enumerate()
                            .map(|(i, v)| (i as f64, *v))
                            .collect(),
                    )
                })
                .collect();
            out.push_str(&line_chart(
                "CPU used per host (cores)",
                "second",
                "cores",
                &host_series,
                false,
            ));
        }
        if let Some(sweep) = &r.sweep {
            out.push_str(&line_chart(
                &format!(
                    "Sweep: p99 by offered rate (target {} ms)",
                    sweep.target_p99_ms
                ),
                "offered req/s",
                "p99 ms",
                &[("p99".into(), {
                    let mut s: Vec<(f64, f64)> =
                        sweep.steps.iter().map(|s| (s.rate_rps, s.p99_ms)).collect();
                    s.sort_by(|a, b| a.0.total_cmp(&b.0));
                    s
                })],
                false,
            ));
        }
        out.push_str("</div>");
        if !r.hosts.is_empty() {
            out.push_str("<table><tr><th class=\"l\">host</th><th class=\"l\">role</th><th class=\"l\">address</th><th>budget (cores)</th><th>enforced</th><th>CPU seconds</th><th>cores used</th></tr>");
            for h in &r.hosts {
                let _ = write!(out, "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.2}</td></tr>", esc(&h.name), esc(&h.role), esc(&h.address), h.cpu_budget, if h.enforced { "yes" } else { "no" }, h.cpu_seconds_used, h.cores_used);
            }
            out.push_str("</table>");
        }
        let p = &r.provenance;
        let _ = write!(out, "<p class=\"prov\">commit {}{} · {} × {} · {} · seed {} · {} s measured after {} s warm-up · {} connections · {}</p>",
            esc(p.git_commit.as_deref().unwrap_or("unknown")), if p.git_dirty == Some(true) { " (dirty)" } else { "" }, p.cores, esc(&p.cpu_model), esc(&p.os), p.seed, p.duration_s, p.warmup_s, p.connections, esc(&p.generated_at));
    }
    out.push_str("</body></html>\n");
    out
}
