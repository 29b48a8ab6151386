//! Reading the relay's `/metrics` (Prometheus text format).

/// The value of the sample named exactly `name`, labels included as the relay
/// prints them: `hookrelay_spool_parked`, or
/// `hookrelay_webhook_requests_total{outcome="accepted"}`.
pub(crate) fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `/metrics` text of the admin listener at `admin` (`http://host:port`),
/// or `None` while it does not answer.
pub(crate) async fn scrape(http: &reqwest::Client, admin: &str) -> Option<String> {
    http.get(format!("{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

#[test]
fn a_sample_is_found_by_its_whole_name_and_labels() {
    let text = "# TYPE x counter\nx_total{outcome=\"accepted\"} 3\nx_total{outcome=\"accepted_late\"} 9\nx 1.5\n";
    assert_eq!(sample(text, "x_total{outcome=\"accepted\"}"), Some(3.0));
    assert_eq!(sample(text, "x"), Some(1.5));
    assert_eq!(sample(text, "x_total"), None);
}
