//! Retry delays shared by everything that retries: message retries, redials.

/// The delay before try number `attempt` (1 = the first retry): exponential
/// from `min` to `max`, with jitter so that many nodes retrying after the
/// same event do not retry in step.
pub fn backoff_delay(
    min: std::time::Duration,
    max: std::time::Duration,
    attempt: u32,
) -> std::time::Duration {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempt.saturating_sub(1).min(64) as usize)
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_grows_to_its_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let first = backoff_delay(min, max, 1);
        assert!(first >= min && first <= 2 * min, "{first:?}");
        let late = backoff_delay(min, max, 30);
        assert!(late >= max && late <= 2 * max, "{late:?}");
        assert!(backoff_delay(min, max, u32::MAX) <= 2 * max);
    }
}
