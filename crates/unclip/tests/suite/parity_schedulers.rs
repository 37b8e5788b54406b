//! Samplers against diffusers' UnCLIPScheduler, DDIMScheduler and DPMSolverMultistepScheduler:
//! every step of recorded loops within 1e-5 (fixtures from tools/oracle/make_unclip_fixtures.py).

use crate::common::{assert_close, load_outputs, oracle_dir};
use candle_core::Tensor;
use std::collections::HashMap;
use unclip::diffusion::{
    NoiseSchedule, Prediction, Sampler, Scheduler, SchedulerConfig, SolverState, VarianceType,
};

const TOL: f32 = 1e-5;

fn meta() -> serde_json::Value {
    // Python wrote -Infinity for lambda_min_clipped, which is not JSON.
    let text = std::fs::read_to_string(oracle_dir().join("unclip_schedulers.json")).unwrap();
    serde_json::from_str(&text.replace("-Infinity", "null")).unwrap()
}

fn ids(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn config_from(json: &serde_json::Value) -> SchedulerConfig {
    let mut cfg: SchedulerConfig = serde_json::from_value(json.clone()).unwrap_or_default();
    cfg.prediction_type = serde_json::from_value(json["prediction_type"].clone()).unwrap();
    cfg.clip_sample = json["clip_sample"].as_bool().unwrap_or(false);
    cfg.clip_sample_range = json["clip_sample_range"].as_f64().unwrap_or(1.0);
    cfg.beta_schedule = "squaredcos_cap_v2".into();
    cfg
}

#[test]
fn schedule_matches_diffusers_in_f32() {
    let t = load_outputs("unclip_schedulers.safetensors");
    let s = NoiseSchedule::cosine(1000);
    assert_close(
        "betas",
        &Tensor::new(s.betas.as_slice(), &candle_core::Device::Cpu).unwrap(),
        &t["unclip.betas"],
        0.0,
    );
    assert_close(
        "alphas_cumprod",
        &Tensor::new(s.alphas_cumprod.as_slice(), &candle_core::Device::Cpu).unwrap(),
        &t["unclip.alphas_cumprod"],
        1e-7,
    );
}

#[test]
fn unclip_loops_match_step_by_step() {
    let t = load_outputs("unclip_schedulers.safetensors");
    let m = meta();
    let mut checked = 0;
    for stage in ["prior", "decoder", "super_res"] {
        let cfg = config_from(&m["unclip"][stage]["config"]);
        if stage == "decoder" {
            assert_eq!(cfg.variance_type, VarianceType::LearnedRange);
        }
        for (name, lp) in m["unclip"][stage]["loops"].as_object().unwrap() {
            let n: usize = name.trim_start_matches('n').parse().unwrap();
            let s = Scheduler::new(&cfg, Sampler::Ddpm, n).unwrap();
            assert_eq!(
                s.timesteps(),
                ids(&t[&format!("unclip.{stage}.{name}.timesteps")]).as_slice(),
                "{stage} {name}"
            );
            let noisy: Vec<usize> = lp["steps_with_noise"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            for i in 0..n {
                let key = |k: &str| format!("unclip.{stage}.{name}.step{i}.{k}");
                assert_eq!(
                    s.needs_noise(i),
                    noisy.contains(&i),
                    "{stage} {name} step {i} noise"
                );
                let noise = t.get(&key("noise"));
                let out = s
                    .step(
                        i,
                        &t[&key("model_output")],
                        &t[&key("sample")],
                        noise,
                        &mut SolverState::default(),
                    )
                    .unwrap();
                assert_close(&key("prev_sample"), &out, &t[&key("prev_sample")], TOL);
                checked += 1;
            }
        }
    }
    assert!(checked > 50, "only {checked} steps checked");
}

/// |a - b| <= tol · max(1, max |b|): from t = 999, x̂_0 = (x - √(1-ᾱ) ε)/√ᾱ divides by
/// √ᾱ ≈ 5e-5, and with the recorded (random) model outputs the unclipped samples reach ~1e4,
/// where one f32 ulp exceeds an absolute 1e-5.
fn assert_close_relative(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let largest = want
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_close(name, got, want, tol * largest.max(1.0));
}

fn run_loop(prefix: &str, s: &Scheduler, t: &HashMap<String, Tensor>) {
    let mut sample = t[&format!("{prefix}.initial_sample")].clone();
    let mut state = SolverState::default();
    for i in 0..s.len() {
        let key = |k: &str| format!("{prefix}.step{i}.{k}");
        let noise = if s.needs_noise(i) {
            t.get(&key("variance_noise"))
        } else {
            None
        };
        // Feed the reference's own input each step, so that errors do not compound.
        let out = s
            .step(i, &t[&key("model_output")], &sample, noise, &mut state)
            .unwrap();
        assert_close_relative(&key("prev_sample"), &out, &t[&key("prev_sample")], TOL);
        sample = t[&key("prev_sample")].clone();
    }
}

#[test]
fn ddim_matches_diffusers_for_every_spacing_prediction_and_eta() {
    let t = load_outputs("unclip_schedulers.safetensors");
    let m = meta();
    for (case, c) in m["ddim"].as_object().unwrap() {
        let cfg = config_from(&c["config"]);
        let steps = c["num_inference_steps"].as_u64().unwrap() as i64;
        let timesteps = ids(&t[&format!("ddim.{case}.timesteps")]);
        let prev = timesteps.iter().map(|&ts| ts - 1000 / steps).collect();
        let eta = c["eta"].as_f64().unwrap();
        let s = Scheduler::with_timesteps(&cfg, Sampler::Ddim { eta }, timesteps, prev).unwrap();
        run_loop(&format!("ddim.{case}"), &s, &t);
    }
}

#[test]
fn dpm_solver_pp_2m_matches_diffusers() {
    let t = load_outputs("unclip_schedulers.safetensors");
    let m = meta();
    for (case, c) in m["dpm"].as_object().unwrap() {
        let mut cfg = config_from(&c["config"]);
        cfg.clip_sample = false;
        assert!(matches!(
            cfg.prediction_type,
            Prediction::Epsilon | Prediction::Sample
        ));
        let timesteps = ids(&t[&format!("dpm.{case}.timesteps")]);
        let prev = timesteps.iter().skip(1).copied().chain([-1]).collect();
        let s =
            Scheduler::with_timesteps(&cfg, Sampler::DpmSolverPlusPlus, timesteps, prev).unwrap();
        run_loop(&format!("dpm.{case}"), &s, &t);
    }
}
