//! A bench's store and its floor taking turns, round after round, and the medians that make
//! their figures, so that a drift of a shared machine hits both sides alike.

use super::error::BenchError;
use super::report::progress;
use super::scenarios::Run;

/// jobs/s of one run of a scenario.
pub(super) fn jobs_per_s(run: &Run) -> f64 {
    run.jobs as f64 / run.elapsed.as_secs_f64().max(1e-9)
}

/// The median of `values` (the lower middle one of an even count); NaN if there are none.
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len().saturating_sub(1) / 2).copied().unwrap_or(f64::NAN)
}

/// Runs a scenario `rounds` times on the store and on its floor (jobs/s), taking turns; returns
/// the store's round of median jobs/s, the floor's median jobs/s, and each round's ratio.
pub(super) fn rounds_of(
    rounds: u32,
    mut store: impl FnMut() -> Result<Run, BenchError>,
    mut floor: impl FnMut() -> Result<f64, BenchError>,
) -> Result<(Run, f64, Vec<f64>), BenchError> {
    let mut runs = Vec::new();
    let mut floors = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            progress(&format!("round {round} of {rounds}"));
        }
        runs.push(store()?);
        floors.push(floor()?);
    }
    let ratios: Vec<f64> = runs.iter().zip(&floors).map(|(run, floor)| jobs_per_s(run) / floor).collect();
    runs.sort_by(|a, b| jobs_per_s(a).total_cmp(&jobs_per_s(b)));
    let run = runs.swap_remove((runs.len() - 1) / 2);
    Ok((run, median(floors), ratios))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_the_lower_middle() {
        assert_eq!(median(vec![0.9, 0.5, 0.7]), 0.7);
        assert_eq!(median(vec![0.9, 0.5, 0.7, 0.6]), 0.6);
        assert_eq!(median(vec![0.8]), 0.8);
        assert!(median(Vec::new()).is_nan());
    }
}
