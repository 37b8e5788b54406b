//! The Fréchet distance between two sets of feature vectors, each summarised as a Gaussian
//! (Heusel et al. 2017, FID; here on CLIP image features, as Kynkäänniemi et al. 2023 do):
//!
//!   d² = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)
//!
//! Why nalgebra: the trace of (Σ₁ Σ₂)^½ needs a matrix square root, which candle does not
//! offer; writing a symmetric eigensolver here would be a second, untested copy of what
//! nalgebra's `SymmetricEigen` already does well. Σ₁Σ₂ is not symmetric, so the square root is
//! taken as scipy's `sqrtm` would give it, but through symmetric matrices only:
//! Tr((Σ₁Σ₂)^½) = Tr((S Σ₂ S)^½) with S = Σ₁^½, because S Σ₂ S is similar to Σ₁Σ₂ and is
//! symmetric positive semi-definite, so its square root's trace is the sum of the square roots
//! of its eigenvalues (tiny negative ones from rounding are clamped to 0).
//!
//! Covariances are the unbiased sample covariances (divided by n − 1), as FID's reference code
//! (`np.cov`) computes them.

use crate::error::{Error, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone)]
pub struct Gaussian {
    pub mean: DVector<f64>,
    pub covariance: DMatrix<f64>,
}

impl Gaussian {
    /// Fits the rows of `features`; needs at least two rows, all of the same length.
    pub fn fit(features: &[Vec<f32>]) -> Result<Gaussian> {
        let n = features.len();
        if n < 2 {
            return Err(Error::InvalidInput(format!(
                "a covariance needs at least 2 feature vectors, got {n}"
            )));
        }
        let dim = features[0].len();
        if let Some((i, row)) = features.iter().enumerate().find(|(_, r)| r.len() != dim) {
            return Err(Error::InvalidInput(format!(
                "feature vector {i} has {} values; the first has {dim}",
                row.len()
            )));
        }
        let x = DMatrix::from_fn(n, dim, |i, j| features[i][j] as f64);
        let mean = DVector::from_fn(dim, |j, _| x.column(j).mean());
        let mut centered = x;
        for mut row in centered.row_iter_mut() {
            row -= mean.transpose();
        }
        let covariance = centered.transpose() * &centered / (n as f64 - 1.0);
        Ok(Gaussian { mean, covariance })
    }
}

/// The square root of a symmetric positive semi-definite matrix (negative eigenvalues, which
/// only rounding produces, count as 0).
fn sqrt_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new(m.clone());
    let roots = eigen.eigenvalues.map(|v| v.max(0.0).sqrt());
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}

/// d² between two fitted Gaussians of the same dimension.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    if a.mean.len() != b.mean.len() {
        return Err(Error::InvalidInput(format!(
            "Fréchet distance between {}- and {}-dimensional features",
            a.mean.len(),
            b.mean.len()
        )));
    }
    let mean_term = (&a.mean - &b.mean).norm_squared();
    let s = sqrt_psd(&a.covariance);
    let middle = &s * &b.covariance * &s;
    // Symmetrise: the product is symmetric in exact arithmetic only.
    let middle = (&middle + middle.transpose()) * 0.5;
    let cross = SymmetricEigen::new(middle)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum::<f64>();
    let d = mean_term + a.covariance.trace() + b.covariance.trace() - 2.0 * cross;
    // Rounding can leave a distance of a set with itself a hair below 0.
    Ok(d.max(0.0))
}

/// Fits both sets and returns d² between them.
pub fn frechet_distance_of(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<f64> {
    frechet_distance(&Gaussian::fit(a)?, &Gaussian::fit(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    fn gaussian_set(n: usize, dim: usize, shift: &[f32], seed: u64) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 1.0).unwrap();
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|j| normal.sample(&mut rng) + shift[j])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_set_has_distance_zero_to_itself() {
        let a = gaussian_set(200, 8, &[0.0; 8], 1);
        let d = frechet_distance_of(&a, &a).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn shifting_a_set_adds_the_squared_shift() {
        let a = gaussian_set(300, 6, &[0.0; 6], 2);
        let shift = [1.0, -2.0, 0.5, 0.0, 0.0, 3.0];
        let b: Vec<Vec<f32>> = a
            .iter()
            .map(|r| r.iter().zip(shift).map(|(x, s)| x + s).collect())
            .collect();
        let d = frechet_distance_of(&a, &b).unwrap();
        let want: f64 = shift.iter().map(|s| (*s as f64).powi(2)).sum();
        assert!((d - want).abs() < 1e-6, "{d} vs {want}");
    }

    #[test]
    fn matches_the_closed_form_for_diagonal_covariances() {
        // N(0, diag(1, 4)) vs N(0, diag(9, 1)): Tr = 5 + 10 - 2 (sqrt(9) + sqrt(4)) = 5.
        let a = Gaussian {
            mean: DVector::from_vec(vec![0.0, 0.0]),
            covariance: DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 4.0])),
        };
        let b = Gaussian {
            mean: DVector::from_vec(vec![0.0, 0.0]),
            covariance: DMatrix::from_diagonal(&DVector::from_vec(vec![9.0, 1.0])),
        };
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - 5.0).abs() < 1e-9, "{d}");
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        assert!(Gaussian::fit(&[vec![1.0]]).is_err());
        assert!(Gaussian::fit(&[vec![1.0, 2.0], vec![1.0]]).is_err());
        let a = gaussian_set(10, 3, &[0.0; 3], 0);
        let b = gaussian_set(10, 2, &[0.0; 2], 0);
        assert!(frechet_distance_of(&a, &b).is_err());
    }
}
