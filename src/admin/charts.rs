//! The console's charts, drawn on the server as inline SVG: no script, no
//! chart library, no build chain; they scale to a phone's width, and each
//! bar carries its label and count (`data-label`, `data-count`, a
//! `<title>` for a tooltip) so a reader, a screen reader or a test can
//! read the numbers behind it.

use maud::{Markup, html};

/// One bar: its label, and its parts (a CSS class and a count each).
pub(super) struct Bar {
    pub label: String,
    pub parts: Vec<(&'static str, u64)>,
    /// Where the label links to, if anywhere.
    pub href: Option<String>,
}

impl Bar {
    fn total(&self) -> u64 {
        self.parts.iter().map(|(_, count)| count).sum()
    }
}

/// Horizontal bars, each split into its parts, scaled to the longest.
pub(super) fn horizontal(bars: &[Bar]) -> Markup {
    let longest = bars.iter().map(Bar::total).max().unwrap_or(0).max(1);
    html! {
        table .chart {
            @for bar in bars {
                tr .bar data-label=(bar.label) data-count=(bar.total()) {
                    th { @match &bar.href { Some(href) => a href=(href) { (bar.label) }, None => (bar.label) } }
                    td {
                        svg viewBox="0 0 1000 20" preserveAspectRatio="none" width="100%" height="18" role="img" {
                            title { (bar.label) ": " (bar.total()) }
                            @for (class, count, x, width) in laid_out(&bar.parts, longest, 1000) {
                                rect class=(class) x=(x) y="0" width=(width) height="20" data-part=(class) data-count=(count) {
                                    title { (class) ": " (count) }
                                }
                            }
                        }
                    }
                    td .count { (bar.total()) }
                }
            }
        }
    }
}

/// The parts that are not empty, one after the other along `length`
/// (scaled so that `longest` fills it): each its class, count, start and
/// length (at least 2, so that a small part still shows).
fn laid_out(
    parts: &[(&'static str, u64)],
    longest: u64,
    length: u64,
) -> Vec<(&'static str, u64, u64, u64)> {
    let mut at = 0;
    parts
        .iter()
        .filter(|(_, count)| *count > 0)
        .map(|&(class, count)| {
            let size = (count * length / longest).max(2);
            let part = (class, count, at, size);
            at += size;
            part
        })
        .collect()
}

/// Vertical bars over time, oldest first, each split into its parts;
/// `labels` are the first and last columns' captions.
pub(super) fn columns(columns: &[Vec<(&'static str, u64)>], labels: (&str, &str)) -> Markup {
    let total = |parts: &[(&'static str, u64)]| parts.iter().map(|(_, count)| count).sum::<u64>();
    let highest = columns.iter().map(|c| total(c)).max().unwrap_or(0).max(1);
    let count = u64::try_from(columns.len()).unwrap_or(1).max(1);
    let width = 1000 / count;
    html! {
        figure .columns {
            svg viewBox={ "0 0 " (width * count) " 120" } preserveAspectRatio="none" width="100%" height="90" role="img" {
                @for (n, parts) in columns.iter().enumerate() {
                    g .column data-count=(total(parts)) {
                        title { (total(parts)) }
                        @for (class, count, from_bottom, height) in laid_out(parts, highest, 120) {
                            rect class=(class) x=(n as u64 * width) y=(120u64.saturating_sub(from_bottom + height))
                                width=(width.saturating_sub(1).max(1)) height=(height) data-part=(class) data-count=(count) {}
                        }
                    }
                }
            }
            figcaption { span { (labels.0) } span { "highest " (highest) } span { (labels.1) } }
        }
    }
}

/// The error codes the charts tell apart (the sender's spec's), and `other`.
pub(super) const CODES: [&str; 6] = [
    "LoginFailedError",
    "SecurityQuestionError",
    "TemporaryFailureError",
    "UnhandledConnectorError",
    "UnknownConnectorError",
    "other",
];

/// The class of an error code's part of a bar: the code, when the spec
/// names it; `other` for a code it does not.
pub(super) fn code_class(code: &str) -> &'static str {
    CODES[..5]
        .iter()
        .find(|known| **known == code)
        .copied()
        .unwrap_or("other")
}

/// The chart's colours: by account state, by request outcome, by error code.
pub(super) const STYLE: &str = "
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(26em,1fr));gap:0 1.5em}
.charts h2{font-size:1.05em}
.chart th{width:12em;font-weight:normal}.chart td.count{width:4em;text-align:right}
.chart td,.chart th{border:0;padding:.1em .3em}
figure.columns{margin:0}figcaption{display:flex;justify-content:space-between;font-size:12px;color:#666}
rect.ok,rect.accepted{fill:#4a9a5b}rect.needs_reconnect{fill:#e08a1e}rect.contact_provider{fill:#c83a3a}
rect.retrying{fill:#e6c229}rect.unknown{fill:#8a5cc2}rect.silent{fill:#999}
rect.spooled,rect.refused{fill:#e08a1e}rect.quarantined,rect.superseded{fill:#8a5cc2}
rect.LoginFailedError{fill:#e08a1e}rect.SecurityQuestionError{fill:#f0b060}
rect.TemporaryFailureError{fill:#e6c229}rect.UnhandledConnectorError{fill:#c83a3a}
rect.UnknownConnectorError{fill:#8e2020}rect.other{fill:#8a5cc2}
rect{fill:#c83a3a}
.legend span{display:inline-block;margin-right:1em;font-size:12px}
.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
";
