//! CLIP's text tower: token + position embeddings, a causal pre-LN Transformer, a final layer
//! norm, and the state of the end-of-text token as the pooled output.
//! Reference: transformers `modeling_clip.py` (CLIPTextEmbeddings, CLIPTextTransformer).

use super::config::{ClipTextConfig, Pooling};
use super::encoder::{Encoder, EncoderSpec};
use crate::nn::{causal_mask, padding_mask, LayerNorm};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};

#[derive(Debug, Clone)]
struct TextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Tensor,
}

impl TextEmbeddings {
    fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02 * cfg.initializer_factor,
        };
        let tokens =
            vb.pp("token_embedding")
                .get_with_hints((cfg.vocab_size, h), "weight", init)?;
        let positions = vb.pp("position_embedding").get_with_hints(
            (cfg.max_position_embeddings, h),
            "weight",
            init,
        )?;
        Ok(Self {
            token_embedding: Embedding::new(tokens, h),
            position_embedding: positions,
        })
    }

    fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        let tokens = self.token_embedding.forward(input_ids)?; // (B, T, C)
        tokens.broadcast_add(&self.position_embedding.narrow(0, 0, t)?)
    }
}

/// What the text tower returns, named as transformers names it.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// (B, T, C), after the final layer norm.
    pub last_hidden_state: Tensor,
    /// (B, C): the final state at the pooling position.
    pub pooler_output: Tensor,
}

#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    embeddings: TextEmbeddings,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    config: ClipTextConfig,
}

impl ClipTextTransformer {
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let spec = EncoderSpec {
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps,
        };
        Ok(Self {
            embeddings: TextEmbeddings::new(cfg, vb.pp("embeddings"))?,
            encoder: Encoder::new(&spec, vb.pp("encoder"))?,
            final_layer_norm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    fn check_ids(&self, input_ids: &Tensor) -> Result<Vec<Vec<u32>>> {
        let (_, t) = input_ids.dims2()?;
        if t == 0 || t > self.config.max_position_embeddings {
            candle_core::bail!(
                "text of {t} tokens; the text tower takes 1..={} tokens",
                self.config.max_position_embeddings
            );
        }
        let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        if let Some(bad) = ids
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.config.vocab_size
            );
        }
        Ok(ids)
    }

    fn pooling_positions(&self, ids: &[Vec<u32>]) -> Vec<u32> {
        ids.iter()
            .map(|row| {
                let position = match self.config.pooling() {
                    // First occurrence of the maximum, as torch.argmax returns it.
                    Pooling::ArgmaxId => {
                        row.iter()
                            .enumerate()
                            .fold((0usize, 0u32), |best, (i, &id)| {
                                if id > best.1 || i == 0 {
                                    (i, id)
                                } else {
                                    best
                                }
                            })
                            .0
                    }
                    Pooling::FirstEos(eos) => row.iter().position(|&id| id == eos).unwrap_or(0),
                };
                position as u32
            })
            .collect()
    }

    /// Runs the tower. `attention_mask` (B, T) of ones and zeros hides padding tokens, as
    /// transformers does when one is passed.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<TextOutput> {
        let states = self.forward_hidden_states(input_ids, attention_mask)?;
        let last = states.last().cloned().unwrap_or_else(|| input_ids.clone());
        self.finish(input_ids, &last)
    }

    /// Every encoder state (embeddings first, then each layer), without the final layer norm.
    pub fn forward_hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        self.check_ids(input_ids)?;
        let (_, t) = input_ids.dims2()?;
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let xs = self.embeddings.forward(&input_ids)?;
        let mut mask = causal_mask(t, xs.dtype(), xs.device())?; // (1, 1, T, T)
        if let Some(keep) = attention_mask {
            mask = mask.broadcast_add(&padding_mask(keep, xs.dtype())?)?; // (B, 1, T, T)
        }
        self.encoder.forward_all(&xs, Some(&mask))
    }

    fn finish(&self, input_ids: &Tensor, encoded: &Tensor) -> Result<TextOutput> {
        let ids = self.check_ids(input_ids)?;
        let last_hidden_state = self.final_layer_norm.forward(encoded)?;
        let (b, t, c) = last_hidden_state.dims3()?;
        let rows: Vec<u32> = self
            .pooling_positions(&ids)
            .iter()
            .enumerate()
            .map(|(i, &p)| i as u32 * t as u32 + p)
            .collect();
        let rows = Tensor::from_vec(rows, b, last_hidden_state.device())?;
        let pooler_output = last_hidden_state
            .reshape((b * t, c))?
            .index_select(&rows, 0)?;
        Ok(TextOutput {
            last_hidden_state,
            pooler_output,
        })
    }
}
