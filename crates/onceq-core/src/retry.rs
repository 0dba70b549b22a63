//! The retry policy: exponential backoff, capped, with full, equal or no jitter.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::limits::{BACKOFF_MULTIPLIER_MAX, DELAY_MS_MAX};
use crate::{Error, Result};

/// How the computed delay is randomized, so that jobs failing together do not retry together
/// (see "Exponential Backoff And Jitter", AWS Architecture Blog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Jitter {
    /// Uniform in `[0, d]`.
    #[default]
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
    /// Exactly `d`.
    None,
}

/// Exponential backoff: attempt `n` (1-based) waits `min(max_ms, initial_ms * multiplier^(n-1))`,
/// then jitter applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial_ms: u64,
    /// Cap on the delay.
    pub max_ms: u64,
    /// Growth factor per attempt, at least 1.
    pub multiplier: f64,
    /// Randomization.
    pub jitter: Jitter,
}

/// A partial update of a [`Backoff`]: each field given replaces the current one, the others
/// stay (`{"initial_ms": 500}` changes the first delay alone). All four given replace the whole
/// policy. The policy that results is checked as a whole: `max_ms` below `initial_ms` is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackoffPatch {
    /// New delay after the first failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_ms: Option<u64>,
    /// New cap on the delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    /// New growth factor per attempt, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    /// New randomization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
}

impl BackoffPatch {
    /// `current` with the fields given replaced (not validated: see [`Backoff::validate`]).
    pub fn applied_to(&self, current: &Backoff) -> Backoff {
        Backoff {
            initial_ms: self.initial_ms.unwrap_or(current.initial_ms),
            max_ms: self.max_ms.unwrap_or(current.max_ms),
            multiplier: self.multiplier.unwrap_or(current.multiplier),
            jitter: self.jitter.unwrap_or(current.jitter),
        }
    }

    /// The whole policy, when every field is given.
    pub fn complete(&self) -> Option<Backoff> {
        Some(Backoff {
            initial_ms: self.initial_ms?,
            max_ms: self.max_ms?,
            multiplier: self.multiplier?,
            jitter: self.jitter?,
        })
    }
}

impl From<Backoff> for BackoffPatch {
    /// Every field given: the patch replaces the whole policy.
    fn from(backoff: Backoff) -> Self {
        BackoffPatch {
            initial_ms: Some(backoff.initial_ms),
            max_ms: Some(backoff.max_ms),
            multiplier: Some(backoff.multiplier),
            jitter: Some(backoff.jitter),
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial_ms: 1000, max_ms: 600_000, multiplier: 2.0, jitter: Jitter::Full }
    }
}

impl Backoff {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        if self.initial_ms > DELAY_MS_MAX || self.max_ms > DELAY_MS_MAX {
            return Err(Error::invalid(format!("backoff delays must be at most {DELAY_MS_MAX} ms")));
        }
        if self.max_ms < self.initial_ms {
            return Err(Error::invalid(format!(
                "backoff max_ms ({}) is below initial_ms ({})",
                self.max_ms, self.initial_ms
            )));
        }
        if !(self.multiplier.is_finite() && (1.0..=BACKOFF_MULTIPLIER_MAX).contains(&self.multiplier)) {
            return Err(Error::invalid(format!(
                "backoff multiplier is {}; it must be between 1 and {BACKOFF_MULTIPLIER_MAX}",
                self.multiplier
            )));
        }
        Ok(())
    }

    /// The delay before the next run, after attempt `attempt` (1-based) failed, without jitter.
    pub fn base_delay_ms(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let raw = self.initial_ms as f64 * self.multiplier.powi(exponent);
        if !raw.is_finite() || raw >= self.max_ms as f64 {
            self.max_ms
        } else {
            raw as u64
        }
    }

    /// The delay before the next run, after attempt `attempt` (1-based) failed, with jitter.
    pub fn delay_ms(&self, attempt: u32, rng: &mut impl Rng) -> u64 {
        let base = self.base_delay_ms(attempt);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => rng.gen_range(0..=base),
            Jitter::Equal => base / 2 + rng.gen_range(0..=base - base / 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn base_delay_grows_and_caps() {
        let b = Backoff { initial_ms: 100, max_ms: 1000, multiplier: 2.0, jitter: Jitter::None };
        let delays: Vec<u64> = (1..=6).map(|a| b.base_delay_ms(a)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.base_delay_ms(u32::MAX), 1000);
    }

    #[test]
    fn invalid_policies_are_rejected() {
        let mut b = Backoff { multiplier: 0.5, ..Backoff::default() };
        assert!(matches!(b.validate(), Err(Error::InvalidRequest(_))));
        b.multiplier = f64::NAN;
        assert!(matches!(b.validate(), Err(Error::InvalidRequest(_))));
        let b = Backoff { initial_ms: 10, max_ms: 5, ..Backoff::default() };
        assert!(matches!(b.validate(), Err(Error::InvalidRequest(_))));
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_in_its_band(initial in 0u64..10_000, extra in 0u64..100_000, attempt in 1u32..40, seed: u64) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for jitter in [Jitter::Full, Jitter::Equal, Jitter::None] {
                let b = Backoff { initial_ms: initial, max_ms: initial + extra, multiplier: 2.0, jitter };
                let base = b.base_delay_ms(attempt);
                prop_assert!(base <= b.max_ms);
                let d = b.delay_ms(attempt, &mut rng);
                match jitter {
                    Jitter::None => prop_assert_eq!(d, base),
                    Jitter::Full => prop_assert!(d <= base),
                    Jitter::Equal => prop_assert!(d >= base / 2 && d <= base),
                }
            }
        }
    }
}
