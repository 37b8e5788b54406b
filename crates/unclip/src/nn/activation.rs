//! Activations by the names Hugging Face configs use (`hidden_act`, `act_fn`).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// logistic(x) = 1 / (1 + exp(-x)), from primitives that all record a backward op.
pub fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    (xs.neg()?.exp()? + 1.0)?.recip()
}

/// OpenAI CLIP's approximation: x * sigmoid(1.702 x).
pub fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    xs * sigmoid(&(xs * 1.702)?)?
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact, erf-based GELU (`torch.nn.functional.gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation.
    #[serde(alias = "gelu_new", alias = "gelu_fast", rename = "gelu_pytorch_tanh")]
    GeluTanh,
    #[serde(alias = "swish", rename = "silu")]
    Silu,
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => quick_gelu(xs),
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Silu => xs.silu(),
            Activation::Relu => xs.relu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn activations_match_reference_values_and_have_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![-2f32, -0.5, 0.0, 0.7, 3.0], 5, &dev)?;
        // torch.nn.functional.gelu(x) and x*torch.sigmoid(1.702*x), computed in f64.
        let gelu = [-0.04550026f32, -0.15426877, 0.0, 0.53062544, 2.995_950_3];
        let quick = [-0.06434138f32, -0.14961156, 0.0, 0.53689395, 2.981_928_7];
        let got_gelu = Activation::Gelu.forward(x.as_tensor())?.to_vec1::<f32>()?;
        let got_quick = Activation::QuickGelu
            .forward(x.as_tensor())?
            .to_vec1::<f32>()?;
        for i in 0..5 {
            assert!(
                (got_gelu[i] - gelu[i]).abs() < 1e-5,
                "gelu {i}: {} vs {}",
                got_gelu[i],
                gelu[i]
            );
            assert!(
                (got_quick[i] - quick[i]).abs() < 1e-5,
                "quick {i}: {} vs {}",
                got_quick[i],
                quick[i]
            );
        }
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
        ] {
            let grads = act.forward(x.as_tensor())?.sum_all()?.backward()?;
            assert!(
                grads.get(x.as_tensor()).is_some(),
                "{act:?} records no gradient"
            );
        }
        let parsed: Activation =
            serde_json::from_str("\"gelu_new\"").map_err(candle_core::Error::wrap)?;
        assert_eq!(parsed, Activation::GeluTanh);
        Ok(())
    }
}
