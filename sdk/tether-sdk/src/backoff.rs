//! Capped exponential backoff and its jitter, shared by the app client's
//! retries and the agent's reconnects. Pure functions: the caller passes the
//! random source.

use std::time::Duration;

use rand::Rng;

/// The ceiling of attempt `n` (0-based): `base * 2^n`, capped at `max`.
pub(crate) fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// "Full jitter": uniform in `[0, ceiling]`.
pub(crate) fn full_jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    uniform(Duration::ZERO, ceiling, rng)
}

/// "Equal jitter": uniform in `[ceiling / 2, ceiling]`, so that a retry always
/// waits a little.
pub(crate) fn equal_jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    uniform(ceiling / 2, ceiling, rng)
}

/// Uniform in `[low, high]` at millisecond-or-finer resolution.
pub(crate) fn uniform(low: Duration, high: Duration, rng: &mut impl Rng) -> Duration {
    if high <= low {
        return low;
    }
    let span = u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX);
    low + Duration::from_nanos(rng.random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_and_caps() {
        let (base, max) = (100 * MS, 2000 * MS);
        let c: Vec<_> = (0..7).map(|n| ceiling(base, max, n)).collect();
        assert_eq!(c, [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1600 * MS, 2000 * MS, 2000 * MS]);
        // No overflow however many attempts.
        assert_eq!(ceiling(base, max, u32::MAX), max);
        assert_eq!(ceiling(Duration::from_secs(u64::MAX / 2), Duration::MAX, 40), Duration::MAX);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let full = full_jitter(400 * MS, &mut rng);
            assert!(full <= 400 * MS);
            let equal = equal_jitter(400 * MS, &mut rng);
            assert!(equal >= 200 * MS && equal <= 400 * MS, "{equal:?}");
        }
        assert_eq!(uniform(5 * MS, 5 * MS, &mut rng), 5 * MS);
        assert_eq!(full_jitter(Duration::ZERO, &mut rng), Duration::ZERO);
    }
}
