//! Aggregating verdicts into the shapes-world report (docs/shapes-world.md, "Reports accuracy per
//! form and overall (the mean of the per-form accuracies), as JSON").
//!
//! Accuracy is over images (a prompt with K images counts K times). The overall score is the
//! unweighted mean of the accuracies of the forms that were evaluated, so a prompt list heavy
//! in one form does not hide a failing form. Colors are averaged over all images, binding over
//! the pair and relation images (the only forms it applies to), placement over the relation
//! images whose two objects could be matched to the named ones. Failed images are also counted
//! by form and by kind of failure, so a report says what the model gets wrong, not only how
//! often.

use super::checker::{FailureKind, Placement, Verdict};
use crate::data::shapes::grammar::Form;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormScore {
    pub images: usize,
    pub passed: usize,
    pub accuracy: f64,
}

/// Where the relation images that could be judged put their objects (see [`Placement`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlacementScore {
    pub images: usize,
    pub right: usize,
    pub reversed: usize,
    pub sideways: usize,
    /// `right / images`.
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShapesScore {
    pub images: usize,
    /// Only the forms that had at least one image.
    pub per_form: BTreeMap<Form, FormScore>,
    /// Share of images whose colors are right.
    pub colors: f64,
    /// Share of pair and relation images whose binding is right; `None` without such images.
    pub binding: Option<f64>,
    /// Relation images placed in the named relation, of those whose two objects could be
    /// matched to the prompt's (shapes aside; see the checker); `None` without such images.
    pub placement: Option<PlacementScore>,
    /// The mean of the per-form accuracies (0 when nothing was scored).
    pub overall: f64,
    /// Failed images by form and kind of failure; a form or kind with none is left out.
    pub failures: BTreeMap<Form, BTreeMap<FailureKind, usize>>,
}

impl ShapesScore {
    pub fn from_verdicts<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> ShapesScore {
        let mut per_form: BTreeMap<Form, (usize, usize)> = BTreeMap::new();
        let (mut images, mut colors) = (0usize, 0usize);
        let (mut bound, mut binding_images) = (0usize, 0usize);
        let (mut right, mut reversed, mut sideways) = (0usize, 0usize, 0usize);
        let mut failures: BTreeMap<Form, BTreeMap<FailureKind, usize>> = BTreeMap::new();
        for v in verdicts {
            if let Some(kind) = v.failure {
                *failures.entry(v.form).or_default().entry(kind).or_default() += 1;
            }
            images += 1;
            let entry = per_form.entry(v.form).or_default();
            entry.0 += 1;
            entry.1 += usize::from(v.pass);
            colors += usize::from(v.colors);
            if let Some(b) = v.binding {
                binding_images += 1;
                bound += usize::from(b);
            }
            match v.placement {
                Some(Placement::Right) => right += 1,
                Some(Placement::Reversed) => reversed += 1,
                Some(Placement::Sideways) => sideways += 1,
                None => {}
            }
        }
        let per_form: BTreeMap<Form, FormScore> = per_form
            .into_iter()
            .map(|(form, (images, passed))| {
                let accuracy = passed as f64 / images as f64;
                let score = FormScore {
                    images,
                    passed,
                    accuracy,
                };
                (form, score)
            })
            .collect();
        let overall = if per_form.is_empty() {
            0.0
        } else {
            per_form.values().map(|f| f.accuracy).sum::<f64>() / per_form.len() as f64
        };
        ShapesScore {
            images,
            per_form,
            colors: ratio(colors, images),
            binding: (binding_images > 0).then(|| ratio(bound, binding_images)),
            placement: placement_score(right, reversed, sideways),
            overall,
            failures,
        }
    }
}

fn placement_score(right: usize, reversed: usize, sideways: usize) -> Option<PlacementScore> {
    let images = right + reversed + sideways;
    (images > 0).then(|| PlacementScore {
        images,
        right,
        reversed,
        sideways,
        accuracy: ratio(right, images),
    })
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}
