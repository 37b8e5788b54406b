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
    pub fn new(params: &[(String, Var)], decay: f64) -> Self {
        let shadow = params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        Self {
            decay,
            updates: 0,
            shadow,
        }
    }

    /// Restores a saved average (same names and order as `tensors()` wrote them).
    pub fn restore(
        params: &[(String, Var)],
        decay: f64,
        updates: u64,
        saved: &[(String, Tensor)],
    ) -> Self {
        let mut ema = Self::new(params, decay);
        ema.updates = updates;
        for (slot, (name, tensor)) in ema.shadow.iter_mut().zip(saved) {
            if slot.0 == *name {
                slot.1 = tensor.clone();
            }
        }
        ema
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn update(&mut self, params: &[(String, Var)]) -> Result<()> {
        self.updates += 1;
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for ((_, avg), (_, var)) in self.shadow.iter_mut().zip(params) {
            *avg = ((&*avg * d)? + (var.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }

    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.shadow
    }
}
