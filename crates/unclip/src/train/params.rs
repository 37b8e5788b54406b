//! Trainable parameters by checkpoint name, created on first request with a seeded,
//! per-name initialisation. candle's `VarMap` draws from the CPU device RNG, which cannot be
//! seeded; here a parameter's initial value depends only on the run seed and its name, so a
//! run is reproducible and independent of construction order.

use crate::checkpoint::{find_weights_file, Weights};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct ParamStore {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across platforms and Rust versions, unlike `DefaultHasher`.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn initial_values(
    shape: &Shape,
    init: Init,
    rng: &mut ChaCha8Rng,
) -> candle_core::Result<Vec<f32>> {
    let n = shape.elem_count();
    let normal = |mean: f64, std: f64, rng: &mut ChaCha8Rng| -> candle_core::Result<Vec<f32>> {
        let d = Normal::new(mean, std.max(0.0)).map_err(candle_core::Error::wrap)?;
        Ok((0..n).map(|_| d.sample(rng) as f32).collect())
    };
    let uniform = |lo: f64, up: f64, rng: &mut ChaCha8Rng| -> candle_core::Result<Vec<f32>> {
        if up <= lo {
            return Ok(vec![lo as f32; n]);
        }
        let d = Uniform::new(lo, up).map_err(candle_core::Error::wrap)?;
        Ok((0..n).map(|_| d.sample(rng) as f32).collect())
    };
    match init {
        Init::Const(v) => Ok(vec![v as f32; n]),
        Init::Randn { mean, stdev } => normal(mean, stdev, rng),
        Init::Uniform { lo, up } => uniform(lo, up, rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = FanInOut::for_shape(&fan, shape).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(0.0, std, rng),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound, rng)
                }
            }
        }
    }
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        Self {
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            seed,
        }
    }

    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(self.clone());
        VarBuilder::from_backend(backend, DType::F32, device.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Var>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        self.vars.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every parameter, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Current values, sorted by name, detached from the graph.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Overwrites the parameters named `prefix` + a tensor name of `weights` with that tensor
    /// (converted to f32), skipping the names in `keep`; every parameter under `prefix` must be
    /// found. Returns how many were loaded. This is how a run starts from trained weights.
    pub fn load_prefixed(
        &self,
        prefix: &str,
        weights: &Arc<Weights>,
        keep: &[&str],
    ) -> Result<usize> {
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        let mut loaded = 0;
        for (name, var) in self.lock().iter() {
            let Some(inner) = name.strip_prefix(prefix) else {
                continue;
            };
            if keep.contains(&name.as_str()) {
                continue;
            }
            if !weights.contains(inner) {
                return Err(Error::TensorMissing {
                    path: weights.source().to_path_buf(),
                    name: inner.to_string(),
                });
            }
            let value = vb
                .get(var.shape(), inner)
                .map_err(|e| weights.explain(e))?
                .to_device(var.device())?;
            var.set(&value)?;
            loaded += 1;
        }
        Ok(loaded)
    }

    /// Loads `folder`'s weights file (one of `files`) into the parameters under `prefix`, as
    /// [`Self::load_prefixed`] does.
    pub fn load_folder(
        &self,
        prefix: &str,
        folder: &Path,
        files: &[&str],
        keep: &[&str],
    ) -> Result<usize> {
        let weights = Weights::load(&find_weights_file(folder, files)?, &Device::Cpu)?;
        self.load_prefixed(prefix, &weights, keep)
    }

    /// Overwrites every parameter with the checkpoint's tensor of the same name.
    pub fn load_from(&self, weights: &Arc<Weights>) -> Result<()> {
        for (name, var) in self.lock().iter() {
            if !weights.contains(name) {
                return Err(Error::TensorMissing {
                    path: weights.source().to_path_buf(),
                    name: name.clone(),
                });
            }
            let vb = weights.var_builder(DType::F32, var.device());
            let value = vb.get(var.shape(), name).map_err(|e| weights.explain(e))?;
            var.set(&value)?;
        }
        Ok(())
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self.lock();
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "parameter `{name}` requested with shape {shape:?} but exists with {:?}",
                    var.shape()
                );
            }
            return var.as_tensor().to_dtype(dtype);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ name_hash(name));
        let values = initial_values(&shape, init, &mut rng)?;
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(var) => var.as_tensor().to_dtype(dtype),
            None => candle_core::bail!(
                "parameter `{name}` does not exist yet and has no shape to create it with"
            ),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}
