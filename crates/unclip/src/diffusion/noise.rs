//! Where the randomness of sampling comes from: a seeded ChaCha stream, or a recorded tape of
//! another implementation's draws (`noise.000`, `noise.001`, ... in the reference draw order),
//! which makes a run comparable with the reference bit for bit.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub enum NoiseSource {
    Seeded(Box<ChaCha8Rng>),
    Tape {
        path: PathBuf,
        draws: Vec<Tensor>,
        next: usize,
    },
}

impl NoiseSource {
    pub fn seeded(seed: u64) -> Self {
        Self::Seeded(Box::new(ChaCha8Rng::seed_from_u64(seed)))
    }

    /// Reads a tape: a safetensors file of tensors named `noise.000`, `noise.001`, ...
    pub fn tape(path: &Path) -> Result<Self> {
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("not a readable noise tape: {e}"),
        })?;
        let mut draws = Vec::new();
        while let Some(t) = tensors.get(&format!("noise.{:03}", draws.len())) {
            draws.push(t.to_dtype(candle_core::DType::F32)?);
        }
        if draws.is_empty() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: "holds no `noise.000` tensor".into(),
            });
        }
        Ok(Self::Tape {
            path: path.to_path_buf(),
            draws,
            next: 0,
        })
    }

    /// A standard normal tensor of `shape`.
    pub fn draw(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            Self::Seeded(rng) => {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
                Ok(Tensor::from_vec(values, shape, device)?)
            }
            Self::Tape { path, draws, next } => {
                let index = *next;
                let tensor = draws.get(index).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "noise tape {} ran out after {} draws; this run needs more (different steps, n or sampler than the recording?)",
                        path.display(),
                        draws.len()
                    ))
                })?;
                if tensor.dims() != shape {
                    return Err(Error::InvalidInput(format!(
                        "noise tape {} draw noise.{index:03} has shape {:?}, the run asks for {shape:?}",
                        path.display(),
                        tensor.dims()
                    )));
                }
                *next += 1;
                Ok(tensor.to_device(device)?)
            }
        }
    }

    /// Draws not yet used (a tape replay should end with none).
    pub fn remaining(&self) -> usize {
        match self {
            Self::Seeded(_) => 0,
            Self::Tape { draws, next, .. } => draws.len() - *next,
        }
    }
}
