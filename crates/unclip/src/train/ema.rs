//! Exponential moving average of the weights (Polyak averaging; as in ADM and unCLIP's
//! training): θ̄ ← d·θ̄ + (1 - d)·θ after every optimizer step, with the decay warmed up as
//! min(d, (1 + n)/(10 + n)) so early averages are not dominated by the initialisation.

use crate::error::Result;
use candle_core::{Tensor, Var};

pub struct Ema {
    decay: f64,
    updates: u64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts the average at the current weights (a copy: the average is updated in place).
    pub fn new(params: &[(String, Var)], decay: f64) -> Result<Self> {
        let shadow = params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            decay,
            updates: 0,
            shadow,
        })
    }

    /// Restores a saved average (same names and order as `tensors()` wrote them).
    pub fn restore(
        params: &[(String, Var)],
        decay: f64,
        updates: u64,
        saved: &[(String, Tensor)],
    ) -> Result<Self> {
        let mut ema = Self::new(params, decay)?;
        ema.updates = updates;
        for (slot, (name, tensor)) in ema.shadow.iter_mut().zip(saved) {
            if slot.0 == *name {
                slot.1 = tensor.copy()?;
            }
        }
        Ok(ema)
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        self.updates += 1;
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for ((_, avg), (_, var)) in self.shadow.iter_mut().zip(params) {
            let theta = var.as_tensor().detach();
            if theta.device().is_cpu() && theta.dtype() == candle_core::DType::F32 {
                let blend = super::update_kernels::MomentUpdate {
                    beta: d as f32,
                    square: false,
                };
                avg.inplace_op2(&theta.contiguous()?, &blend)?;
            } else {
                *avg = ((&*avg * d)? + (theta * (1.0 - d))?)?;
            }
        }
        Ok(())
    }

    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.shadow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The in-place average follows θ̄ ← d·θ̄ + (1 - d)·θ with the warmed-up decay, and updating
    /// it never writes into the weights it started from.
    #[test]
    fn average_follows_the_weights_without_touching_them() -> Result<()> {
        let w = Var::from_vec(vec![1f32, -2.0], 2, &Device::Cpu)?;
        let params = vec![("w".to_string(), w.clone())];
        let mut ema = Ema::new(&params, 0.999)?;
        let mut want = [1f64, -2.0];
        for (n, next) in [[3f32, 0.0], [5.0, 4.0]].into_iter().enumerate() {
            w.set(&Tensor::new(&next, &Device::Cpu)?)?;
            ema.update(&params)?;
            let d = 0.999f64.min((2.0 + n as f64) / (11.0 + n as f64));
            for (a, t) in want.iter_mut().zip(next) {
                *a = d * *a + (1.0 - d) * t as f64;
            }
        }
        let got = ema.tensors()[0].1.to_vec1::<f32>()?;
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert_eq!(w.as_tensor().to_vec1::<f32>()?, vec![5.0, 4.0]);
        Ok(())
    }
}
