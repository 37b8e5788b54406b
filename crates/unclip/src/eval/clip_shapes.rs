//! How well a CLIP tells a shapes prompt from its hard negatives (`Prompt::hard_negative`): for
//! rendered scenes of the prompt, is the prompt's text embedding closer than each negative's?
//! unCLIP's prior and decoder see the world through these embeddings, so a relation CLIP ranks
//! at chance against its mirror image is one the pipeline cannot be asked for through them.
//! 0.5 is chance; the checker's own ceiling does not apply here (no images are generated).

use crate::clip::l2_normalize;
use crate::data::shapes::{render, Form, NegativeKind, Prompt, Scene};
use crate::error::{Error, Result};
use crate::pipeline::ClipEmbedder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct ClipShapesOptions {
    pub scenes_per_prompt: usize,
    /// Distinct negatives drawn per prompt (fewer when the prompt has fewer).
    pub negatives_per_prompt: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipFormScore {
    /// (scene, negative) comparisons made.
    pub comparisons: usize,
    /// Those in which the prompt was closer to the scene than the negative.
    pub won: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipShapesScore {
    /// Only the forms that had at least one prompt.
    pub per_form: BTreeMap<Form, ClipFormScore>,
    /// The same comparisons by what the negative changed (a relation's object order, a pair's
    /// binding, a count, one attribute), so a bag-of-words CLIP shows as order and binding
    /// near 0.5 while attributes are near 1.
    pub per_negative: BTreeMap<NegativeKind, ClipFormScore>,
    /// The mean of the per-form accuracies.
    pub overall: f64,
}

/// Scores `clip` on `prompts`; the scenes and negatives of prompt `i` come from `seed + i`.
pub fn evaluate_clip_shapes(
    clip: &ClipEmbedder,
    prompts: &[Prompt],
    opts: &ClipShapesOptions,
) -> Result<ClipShapesScore> {
    if prompts.is_empty() {
        return Err(Error::InvalidInput("no prompts to evaluate".into()));
    }
    if opts.scenes_per_prompt == 0 || opts.negatives_per_prompt == 0 {
        return Err(Error::InvalidInput(
            "scenes and negatives per prompt must each be at least 1".into(),
        ));
    }
    let mut counts: BTreeMap<Form, (usize, usize)> = BTreeMap::new();
    let mut kind_counts: BTreeMap<NegativeKind, (usize, usize)> = BTreeMap::new();
    for (index, prompt) in prompts.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(index as u64));
        let scenes = (0..opts.scenes_per_prompt)
            .map(|_| Ok(render(&Scene::sample(prompt, &mut rng)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut texts = vec![prompt.to_string()];
        let mut kinds = Vec::new();
        // Small forms have few negatives; a bounded number of draws finds what there is.
        for _ in 0..opts.negatives_per_prompt * 20 {
            if kinds.len() == opts.negatives_per_prompt {
                break;
            }
            let (kind, negative) = prompt.hard_negative_of_kind(&mut rng);
            let negative = negative.to_string();
            if !texts.contains(&negative) {
                texts.push(negative);
                kinds.push(kind);
            }
        }
        let (_, text) = clip.text_features(&texts)?;
        let image = clip.image_features_of(&scenes)?;
        // (scenes, texts) cosine similarities; column 0 is the prompt.
        let similarity = l2_normalize(&image)?
            .matmul(&l2_normalize(&text)?.t()?)?
            .to_vec2::<f32>()?;
        for row in &similarity {
            for (&negative, &kind) in row[1..].iter().zip(&kinds) {
                let won = usize::from(row[0] > negative);
                for (w, n) in [
                    counts.entry(prompt.form()).or_default(),
                    kind_counts.entry(kind).or_default(),
                ] {
                    *w += won;
                    *n += 1;
                }
            }
        }
    }
    let per_form: BTreeMap<Form, ClipFormScore> = counts
        .into_iter()
        .map(|(k, c)| (k, form_score(c)))
        .collect();
    let per_negative = kind_counts
        .into_iter()
        .map(|(k, c)| (k, form_score(c)))
        .collect();
    let overall = per_form.values().map(|f| f.accuracy).sum::<f64>() / per_form.len() as f64;
    Ok(ClipShapesScore {
        per_form,
        per_negative,
        overall,
    })
}

fn form_score((won, comparisons): (usize, usize)) -> ClipFormScore {
    ClipFormScore {
        comparisons,
        won,
        accuracy: won as f64 / comparisons.max(1) as f64,
    }
}
