//! How well a CLIP tells a shapes prompt from its hard negatives (`Prompt::hard_negative`): for
//! rendered scenes of the prompt, is the prompt's text embedding closer than each negative's?
//! unCLIP's prior and decoder see the world through these embeddings, so a relation CLIP ranks
//! at chance against its mirror image is one the pipeline cannot be asked for through them.
//! 0.5 is chance; the checker's own ceiling does not apply here (no images are generated).
//!
//! For relation prompts it also measures what the decoder can read: Karlo's decoder attends to
//! the text tower's token states, so if "A above B" and "A below B" give the same states, no
//! decoder training can learn from them which way round to draw A and B. The cosine between the
//! two captions' states, at the relation word and at every token after it, and between their
//! pooled embeddings, says how much of the relation survives (1: nothing). The same measure for
//! a change of the first object's color, which the decoder does learn, is the yardstick.

use crate::clip::l2_normalize;
use crate::data::shapes::palette::{Color, Relation};
use crate::data::shapes::{render, ColoredShape, Form, NegativeKind, Prompt, Scene};
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
    /// How alike the text tower makes each relation prompt and the same prompt with the
    /// opposite relation; `None` without relation prompts.
    pub relation_word: Option<WordSimilarity>,
    /// The same for each relation prompt and the prompt with its first object's color changed.
    pub color_word: Option<WordSimilarity>,
}

/// Mean cosine similarities between the text tower's view of a caption and of the caption with
/// one word changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WordSimilarity {
    pub prompts: usize,
    /// The token states where the two captions' tokens differ (the changed word).
    pub at_the_word: f64,
    /// The token states after the changed word, up to and including the end token.
    pub after_the_word: f64,
    /// The pooled, projected text embeddings (what the prior reads).
    pub pooled: f64,
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
    for (flag, value) in [
        ("--scenes-per-prompt", opts.scenes_per_prompt),
        ("--negatives-per-prompt", opts.negatives_per_prompt),
    ] {
        if !(1..=64).contains(&value) {
            return Err(Error::InvalidInput(format!(
                "{flag} {value}; allowed: 1..=64"
            )));
        }
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
        relation_word: word_similarity(clip, prompts, |a, relation, b| Prompt::Relation {
            a,
            relation: relation.opposite(),
            b,
        })?,
        color_word: word_similarity(clip, prompts, |a, relation, b| {
            let next =
                (Color::ALL.iter().position(|&c| c == a.color).unwrap_or(0) + 1) % Color::ALL.len();
            Prompt::Relation {
                a: ColoredShape {
                    color: Color::ALL[next],
                    shape: a.shape,
                },
                relation,
                b,
            }
        })?,
    })
}

/// Compares each relation prompt with `change(a, relation, b)`, a prompt with one word changed.
fn word_similarity(
    clip: &ClipEmbedder,
    prompts: &[Prompt],
    change: impl Fn(ColoredShape, Relation, ColoredShape) -> Prompt,
) -> Result<Option<WordSimilarity>> {
    let (mut at, mut after, mut pooled) = (Vec::new(), Vec::new(), Vec::new());
    for prompt in prompts {
        let Prompt::Relation { a, relation, b } = *prompt else {
            continue;
        };
        let texts = [prompt.to_string(), change(a, relation, b).to_string()];
        let (tokens, states) = clip.text_states(&texts)?;
        // Token positions line up: a relation and its opposite have as many words, and so
        // have "a red" and "an orange".
        if tokens.attention_mask[0] != tokens.attention_mask[1] {
            continue;
        }
        let length = tokens.attention_mask[0].iter().sum::<u32>() as usize;
        let differ: Vec<usize> = (0..length)
            .filter(|&i| tokens.input_ids[0][i] != tokens.input_ids[1][i])
            .collect();
        let Some(&last) = differ.last() else {
            continue;
        };
        let states = l2_normalize(&states)?.to_vec3::<f32>()?;
        let cosine = |i: usize| {
            let (x, y) = (&states[0][i], &states[1][i]);
            x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum::<f64>()
        };
        at.push(mean(differ.iter().map(|&i| cosine(i))));
        after.push(mean((last + 1..length).map(cosine)));
        let (_, features) = clip.text_features(&texts)?;
        let f = l2_normalize(&features)?.to_vec2::<f32>()?;
        pooled.push(f[0].iter().zip(&f[1]).map(|(p, q)| (p * q) as f64).sum());
    }
    if at.is_empty() {
        return Ok(None);
    }
    Ok(Some(WordSimilarity {
        prompts: at.len(),
        at_the_word: mean(at.into_iter()),
        after_the_word: mean(after.into_iter()),
        pooled: mean(pooled.into_iter()),
    }))
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

fn form_score((won, comparisons): (usize, usize)) -> ClipFormScore {
    ClipFormScore {
        comparisons,
        won,
        accuracy: won as f64 / comparisons.max(1) as f64,
    }
}
