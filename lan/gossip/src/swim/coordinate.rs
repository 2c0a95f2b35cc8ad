//! Network coordinates (Vivaldi, with the height vector and adjustment term of Consul's
//! serf coordinates): every member places itself in an 8-dimensional space so that the
//! distance between two members' coordinates estimates the round-trip time between them.
//!
//! Each probe answer brings one RTT sample and the answering member's coordinate; the
//! member moves its own coordinate along the line to the other one, by how wrong the
//! current estimate is, weighted by the two members' confidence (`error`). The height
//! models the access link every path shares; the adjustment is the mean recent residual.
//! Samples pass a small median filter per peer first, so one slow answer does not throw
//! the coordinate around.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Dimensions of the Euclidean part (Consul's default).
pub const DIMENSIONS: usize = 8;
/// Error of a new coordinate, and the largest error a coordinate may have.
pub const ERROR_MAX: f64 = 1.5;
/// How fast the error estimate follows new samples.
const CE: f64 = 0.25;
/// How far one sample moves the coordinate.
const CC: f64 = 0.25;
/// Residuals averaged into the adjustment term.
const ADJUSTMENT_WINDOW: usize = 20;
/// Smallest height, in seconds.
pub const HEIGHT_MIN: f64 = 10.0e-6;
/// RTT samples kept per peer for the median filter.
const LATENCY_FILTER: usize = 3;
/// Pull towards the origin so that coordinates do not drift away together.
const GRAVITY_RHO: f64 = 150.0;
/// Samples longer than this are not believed, in seconds.
const MAX_RTT: f64 = 10.0;
/// Peers whose samples are filtered; when full, the filter forgets them all.
const MAX_FILTERED_PEERS: usize = 4096;
/// Largest magnitude, in seconds, of any component of a coordinate taken from the
/// network; anything beyond is not a real network's.
const MAX_COMPONENT: f64 = 1.0e4;
/// Smallest total error used as a divisor.
const ZERO_THRESHOLD: f64 = 1.0e-6;

/// A member's place in the coordinate space; distances are in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    /// The Euclidean part.
    pub vec: Vec<f64>,
    /// Confidence: 0 is certain, [`ERROR_MAX`] knows nothing.
    pub error: f64,
    /// Mean recent residual, added to distances.
    pub adjustment: f64,
    /// The member's own access delay.
    pub height: f64,
}

impl Default for Coordinate {
    fn default() -> Coordinate {
        Coordinate {
            vec: vec![0.0; DIMENSIONS],
            error: ERROR_MAX,
            adjustment: 0.0,
            height: HEIGHT_MIN,
        }
    }
}

fn magnitude(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

impl Coordinate {
    /// Whether the coordinate is one a real member could have: the right size, every
    /// component finite and within [`MAX_COMPONENT`], the error within
    /// `0..=ERROR_MAX`, the height not negative (a coordinate from the network is
    /// checked before use).
    pub fn is_valid(&self) -> bool {
        let bounded = |x: f64| x.is_finite() && x.abs() <= MAX_COMPONENT;
        self.vec.len() == DIMENSIONS
            && self.vec.iter().all(|x| bounded(*x))
            && (0.0..=ERROR_MAX).contains(&self.error)
            && bounded(self.adjustment)
            && bounded(self.height)
            && self.height >= 0.0
    }

    fn raw_distance(&self, other: &Coordinate) -> f64 {
        let diff: Vec<f64> = self
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| a - b)
            .collect();
        magnitude(&diff) + self.height + other.height
    }

    /// The estimated round-trip time to `other`, in seconds (never negative).
    pub fn distance(&self, other: &Coordinate) -> f64 {
        let raw = self.raw_distance(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        let d = if adjusted > 0.0 { adjusted } else { raw };
        if d.is_finite() { d.max(0.0) } else { 0.0 }
    }

    /// Moves this coordinate by `force` seconds away from `other` (towards it when
    /// negative); coincident coordinates move in a direction derived from `seed`.
    fn apply_force(&mut self, force: f64, other: &Coordinate, seed: u64) {
        let mut unit: Vec<f64> = self
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| a - b)
            .collect();
        let mag = magnitude(&unit);
        if mag > 1e-12 {
            unit.iter_mut().for_each(|x| *x /= mag);
        } else {
            // Split coincident coordinates apart in a pseudo-random direction.
            let mut state = seed | 1;
            for x in unit.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *x = (state % 2001) as f64 / 1000.0 - 1.0;
            }
            let m = magnitude(&unit).max(1e-12);
            unit.iter_mut().for_each(|x| *x /= m);
        }
        for (x, u) in self.vec.iter_mut().zip(&unit) {
            *x += u * force;
        }
        if mag > 1e-12 {
            self.height =
                ((self.height + other.height) * force / mag + self.height).max(HEIGHT_MIN);
        }
    }
}

/// This member's coordinate and what it learned from its samples.
#[derive(Debug, Clone)]
pub struct Vivaldi {
    coord: Coordinate,
    residuals: VecDeque<f64>,
    filters: HashMap<String, VecDeque<f64>>,
    updates: u64,
}

impl Default for Vivaldi {
    fn default() -> Vivaldi {
        Vivaldi {
            coord: Coordinate::default(),
            residuals: VecDeque::with_capacity(ADJUSTMENT_WINDOW),
            filters: HashMap::new(),
            updates: 0,
        }
    }
}

impl Vivaldi {
    /// The current coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coord
    }

    /// Forgets the samples of a member that is gone.
    pub fn forget(&mut self, node: &str) {
        self.filters.remove(node);
    }

    /// Takes one RTT sample to `node`, whose coordinate is `other`. Samples that are not
    /// plausible, and coordinates that are not valid, are ignored; returns whether the
    /// sample was used.
    pub fn update(&mut self, node: &str, other: &Coordinate, rtt: std::time::Duration) -> bool {
        let rtt = rtt.as_secs_f64();
        if !(other.is_valid() && rtt > 0.0 && rtt <= MAX_RTT) {
            return false;
        }
        if self.filters.len() >= MAX_FILTERED_PEERS && !self.filters.contains_key(node) {
            self.filters.clear();
        }
        let samples = self.filters.entry(node.to_owned()).or_default();
        samples.push_back(rtt);
        if samples.len() > LATENCY_FILTER {
            samples.pop_front();
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rtt = sorted[sorted.len() / 2];

        self.updates += 1;
        self.vivaldi(other, rtt);
        self.adjust(other, rtt);
        self.gravity();
        if !self.coord.is_valid() {
            // Numbers went bad (they should not): start over rather than spread them.
            self.coord = Coordinate::default();
            self.residuals.clear();
            return false;
        }
        true
    }

    fn vivaldi(&mut self, other: &Coordinate, rtt: f64) {
        let dist = self.coord.raw_distance(other);
        let wrongness = ((dist - rtt) / rtt).abs();
        let total = (self.coord.error + other.error).max(ZERO_THRESHOLD);
        let weight = (self.coord.error / total).clamp(0.0, 1.0);
        self.coord.error = (CE * weight * wrongness + self.coord.error * (1.0 - CE * weight))
            .clamp(0.0, ERROR_MAX);
        let force = CC * weight * (rtt - dist);
        let seed = self.updates;
        self.coord.apply_force(force, other, seed);
    }

    fn adjust(&mut self, other: &Coordinate, rtt: f64) {
        let residual = rtt - self.coord.raw_distance(other);
        self.residuals.push_back(residual);
        if self.residuals.len() > ADJUSTMENT_WINDOW {
            self.residuals.pop_front();
        }
        self.coord.adjustment =
            self.residuals.iter().sum::<f64>() / (2.0 * ADJUSTMENT_WINDOW as f64);
    }

    fn gravity(&mut self) {
        let origin = Coordinate::default();
        let dist = magnitude(&self.coord.vec);
        if dist <= 0.0 {
            return;
        }
        let force = -(dist / GRAVITY_RHO).powi(2);
        let height = self.coord.height;
        self.coord.apply_force(force, &origin, self.updates);
        // Gravity pulls the vector only.
        self.coord.height = height;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Members on a line, 10 ms apart, with RTTs from their true positions: after
    /// rounds of samples every estimate is close to the truth.
    #[test]
    fn coordinates_converge_to_the_true_distances() {
        let n = 5;
        let truth = |i: usize, j: usize| 0.010 * (i as f64 - j as f64).abs() + 0.0002;
        let mut nodes: Vec<Vivaldi> = (0..n).map(|_| Vivaldi::default()).collect();
        for round in 0..400 {
            for i in 0..n {
                let j = (i + 1 + round % (n - 1)) % n;
                let other = nodes[j].coordinate().clone();
                let rtt = Duration::from_secs_f64(truth(i, j));
                assert!(nodes[i].update(&format!("n{j}"), &other, rtt));
            }
        }
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let est = nodes[i].coordinate().distance(nodes[j].coordinate());
                let want = truth(i, j);
                assert!(
                    (est - want).abs() < 0.25 * want + 0.001,
                    "n{i}-n{j}: estimated {est:.4}, true {want:.4}"
                );
            }
            assert!(
                nodes[i].coordinate().error < 0.5,
                "{:?}",
                nodes[i].coordinate()
            );
        }
    }

    #[test]
    fn implausible_samples_and_bad_coordinates_are_ignored() {
        let mut v = Vivaldi::default();
        let good = Coordinate::default();
        assert!(!v.update("a", &good, Duration::ZERO));
        assert!(!v.update("a", &good, Duration::from_secs(11)));
        let mut nan = Coordinate::default();
        nan.vec[0] = f64::NAN;
        assert!(!v.update("a", &nan, Duration::from_millis(5)));
        let short = Coordinate {
            vec: vec![0.0; 3],
            ..Coordinate::default()
        };
        assert!(!v.update("a", &short, Duration::from_millis(5)));
        // Values no real member has: a negative height or error, a huge component.
        for bad in [
            Coordinate {
                height: -1.0,
                ..Coordinate::default()
            },
            Coordinate {
                error: -1.5,
                ..Coordinate::default()
            },
            Coordinate {
                error: 9.0,
                ..Coordinate::default()
            },
            Coordinate {
                vec: vec![1e200; DIMENSIONS],
                ..Coordinate::default()
            },
            Coordinate {
                adjustment: f64::INFINITY,
                ..Coordinate::default()
            },
        ] {
            assert!(!bad.is_valid(), "{bad:?}");
            assert!(!v.update("a", &bad, Duration::from_millis(5)));
        }
        assert_eq!(v.coordinate(), &Coordinate::default());
        // Coincident coordinates still split apart.
        assert!(v.update("a", &good, Duration::from_millis(5)));
        assert!(v.coordinate().distance(&good) > 0.0);
        assert!(v.coordinate().is_valid());
    }
}
