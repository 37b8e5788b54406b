//! The fully connected layer `y = x Wᵀ + b`, with a CPU op of its own for f32.
//!
//! Why not `candle_nn::Linear`: its bias is a broadcast add, and candle-core 0.11 sums that add's
//! gradient over the leading dimensions with a per-element index loop on one thread. In a decoder
//! training step at 2 threads that sum was the largest cost that left the second core idle
//! (about 4% of the step's samples), and the matmul and the add each keep a gradient of the
//! output's size. Here the forward is one gemm into an output that starts as the bias, and the
//! backward computes dX = dY·W, dW = dYᵀ·X and db = Σ dY side by side. Other dtypes and devices
//! run candle's layer.

use super::kernel_io::{cpu_f32, cpu_gradient, gradients_side_by_side, storage_f32};
use super::matmul::{gemm_parallelism, matmul, threads, View};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Module};
use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;

/// A linear layer with keys `weight` (out, in) and optional `bias` (out), as `candle_nn::Linear`
/// (and PyTorch's `nn.Linear`) store them.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// Loads (or initialises, as `candle_nn::linear` does) a layer with a bias.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let layer = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear::new(layer.weight().clone(), layer.bias().cloned()))
}

/// Loads (or initialises, as `candle_nn::linear_no_bias` does) a layer without a bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let layer = candle_nn::linear_no_bias(in_dim, out_dim, vb)?;
    Ok(Linear::new(layer.weight().clone(), None))
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let own_kernel = matches!(xs.device(), Device::Cpu)
            && [Some(xs), Some(&self.weight), self.bias.as_ref()]
                .iter()
                .flatten()
                .all(|t| t.dtype() == DType::F32);
        if !own_kernel {
            return candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(xs);
        }
        let dims = xs.dims();
        if dims.last() != Some(&in_dim) {
            candle_core::bail!(
                "linear: the input's last dimension must be {in_dim} (the weight is \
                 {out_dim} x {in_dim}), got an input of shape {dims:?}"
            );
        }
        let rows = dims[..dims.len() - 1].iter().product::<usize>();
        let op = LinearOp {
            rows,
            in_dim,
            out_dim,
        };
        let x = xs.contiguous()?.reshape((rows, in_dim))?;
        let weight = self.weight.contiguous()?;
        let ys = match &self.bias {
            Some(b) => x.apply_op3(&weight, &b.contiguous()?, op)?,
            None => x.apply_op2(&weight, op)?,
        };
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out_dim;
        }
        ys.reshape(out_dims)
    }
}

/// `x (rows, in) · Wᵀ + b` on contiguous f32 CPU tensors.
#[derive(Debug, Clone, Copy)]
struct LinearOp {
    rows: usize,
    in_dim: usize,
    out_dim: usize,
}

impl LinearOp {
    fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let Self {
            rows,
            in_dim,
            out_dim,
        } = *self;
        let mut out = vec![0f32; rows * out_dim];
        if let Some(b) = bias {
            out.chunks_exact_mut(out_dim)
                .for_each(|row| row.copy_from_slice(b));
        }
        let x = View {
            data: x,
            rs: in_dim,
            cs: 1,
        };
        let wt = View {
            data: w,
            rs: 1,
            cs: in_dim,
        };
        let parallelism = gemm_parallelism(threads());
        let shape = (rows, out_dim, in_dim);
        matmul(shape, &mut out, out_dim, bias.is_some(), x, wt, parallelism);
        out
    }

    fn input_gradient(&self, dy: &[f32], w: &[f32]) -> Vec<f32> {
        let mut dx = vec![0f32; self.rows * self.in_dim];
        let dy = View {
            data: dy,
            rs: self.out_dim,
            cs: 1,
        };
        let w = View {
            data: w,
            rs: self.in_dim,
            cs: 1,
        };
        let shape = (self.rows, self.in_dim, self.out_dim);
        let parallelism = gemm_parallelism(threads());
        matmul(shape, &mut dx, self.in_dim, false, dy, w, parallelism);
        dx
    }

    fn weight_gradient(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let mut dw = vec![0f32; self.out_dim * self.in_dim];
        let dyt = View {
            data: dy,
            rs: 1,
            cs: self.out_dim,
        };
        let x = View {
            data: x,
            rs: self.in_dim,
            cs: 1,
        };
        let shape = (self.out_dim, self.in_dim, self.rows);
        let parallelism = gemm_parallelism(threads());
        matmul(shape, &mut dw, self.in_dim, false, dyt, x, parallelism);
        dw
    }

    fn bias_gradient(&self, dy: &[f32]) -> Vec<f32> {
        let mut db = vec![0f32; self.out_dim];
        for row in dy.chunks_exact(self.out_dim) {
            db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
        }
        db
    }

    /// dX, dW and db, each only when its tensor carries a gradient, side by side.
    fn grads(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (want_dx, want_dw) = (xs.track_op(), weight.track_op());
        let want_db = bias.is_some_and(|b| b.track_op());
        let [dx, dw, db] = {
            let (x_store, x_layout) = xs.storage_and_layout();
            let (w_store, w_layout) = weight.storage_and_layout();
            let (dy_store, dy_layout) = grad.storage_and_layout();
            let x = storage_f32(&x_store, x_layout, "linear input")?;
            let w = storage_f32(&w_store, w_layout, "linear weight")?;
            let dy = storage_f32(&dy_store, dy_layout, "linear output gradient")?;
            gradients_side_by_side(
                want_dx.then_some(|| self.input_gradient(dy, w)),
                want_dw.then_some(|| self.weight_gradient(x, dy)),
                want_db.then_some(|| self.bias_gradient(dy)),
            )
        };
        Ok((
            cpu_gradient(dx, (self.rows, self.in_dim))?,
            cpu_gradient(dw, (self.out_dim, self.in_dim))?,
            cpu_gradient(db, self.out_dim)?,
        ))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "unclip-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(xs, xs_l, "linear input")?;
        let w = cpu_f32(w, w_l, "linear weight")?;
        let out = self.forward(x, w, None);
        Ok((CpuStorage::F32(out), Shape::from((self.rows, self.out_dim))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(xs, weight, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "unclip-linear-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
        b: &CpuStorage,
        b_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(xs, xs_l, "linear input")?;
        let w = cpu_f32(w, w_l, "linear weight")?;
        let b = cpu_f32(b, b_l, "linear bias")?;
        let out = self.forward(x, w, Some(b));
        Ok((CpuStorage::F32(out), Shape::from((self.rows, self.out_dim))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(xs, weight, Some(bias), grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> Result<Var> {
        let n = shape.iter().product::<usize>();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Var::from_vec(data, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Output and every gradient against candle's layer (matmul + broadcast add), with and
    /// without a bias, for 2-D, 3-D and 4-D inputs, at 1 and 2 threads.
    #[test]
    fn matches_candle_linear_forward_and_backward() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(candle_core::Error::wrap)?;
            for (input, with_bias) in [
                (vec![5, 12], true),
                (vec![2, 37, 12], true),
                (vec![2, 3, 9, 12], false),
                (vec![1, 12], false),
            ] {
                let x = random(&input, &mut rng)?;
                let w = random(&[20, 12], &mut rng)?;
                let b = random(&[20], &mut rng)?;
                let bias = with_bias.then(|| b.as_tensor().clone());
                let ours = Linear::new(w.as_tensor().clone(), bias.clone());
                let theirs = candle_nn::Linear::new(w.as_tensor().clone(), bias);
                let (y, grads) = pool.install(|| -> Result<_> {
                    let y = ours.forward(x.as_tensor())?;
                    let grads = (y.sqr()?.sum_all()? * 0.5)?.backward()?;
                    Ok((y, grads))
                })?;
                let y_ref = theirs.forward(x.as_tensor())?;
                let grads_ref = (y_ref.sqr()?.sum_all()? * 0.5)?.backward()?;
                assert_eq!(y.dims(), y_ref.dims());
                assert!(max_diff(&y, &y_ref)? < 1e-5, "{input:?}: output");
                let mut vars = vec![("x", &x), ("w", &w)];
                if with_bias {
                    vars.push(("b", &b));
                }
                for (name, var) in vars {
                    let g = grads.get(var.as_tensor()).expect("gradient");
                    let g_ref = grads_ref.get(var.as_tensor()).expect("reference gradient");
                    assert!(
                        max_diff(g, g_ref)? < 1e-4,
                        "{input:?} at {threads}t: d{name}"
                    );
                }
                if !with_bias {
                    assert!(grads.get(b.as_tensor()).is_none());
                }
            }
        }
        Ok(())
    }

    #[test]
    fn an_input_of_the_wrong_width_is_a_clear_error() -> Result<()> {
        let layer = Linear::new(Tensor::zeros((4, 3), DType::F32, &Device::Cpu)?, None);
        let err = layer
            .forward(&Tensor::zeros((2, 5), DType::F32, &Device::Cpu)?)
            .expect_err("a 5-wide input into a 3-wide layer");
        let msg = err.to_string();
        assert!(msg.contains("must be 3") && msg.contains("[2, 5]"), "{msg}");
        Ok(())
    }
}
