//! The real OpenAI CLIP vocabulary against transformers' CLIPTokenizer, from both file layouts.

use crate::common::oracle_dir;
use unclip::tokenizer::ClipTokenizer;

fn cases() -> Vec<(String, Vec<u32>, Vec<u32>)> {
    let text = std::fs::read_to_string(oracle_dir().join("tokenizer/cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |x: &serde_json::Value| {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                ids(&c["input_ids"]),
                ids(&c["attention_mask"]),
            )
        })
        .collect()
}

fn check(dir: &str) {
    let tok = ClipTokenizer::load(&oracle_dir().join(dir)).unwrap();
    assert_eq!(tok.vocab_size(), 49408);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    let cases = cases();
    assert!(cases.len() >= 12);
    for (text, want_ids, want_mask) in cases {
        let (ids, mask) = tok.encode(&text).unwrap();
        assert_eq!(ids, want_ids, "{dir}: ids of {text:?}");
        assert_eq!(mask, want_mask, "{dir}: mask of {text:?}");
    }
}

#[test]
fn vocab_and_merges_layout_matches_transformers() {
    check("tokenizer");
}

#[test]
fn tokenizer_json_layout_matches_transformers() {
    check("tokenizer_json");
}

#[test]
fn long_text_keeps_the_end_token_last() {
    let tok = ClipTokenizer::load(&oracle_dir().join("tokenizer")).unwrap();
    let long = "word ".repeat(200);
    let (ids, mask) = tok.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[76], tok.eos_id());
    assert!(mask.iter().all(|&m| m == 1));
}

#[test]
fn trained_vocabulary_round_trips_through_its_files() {
    let captions = [
        "a red circle",
        "two blue squares",
        "a green triangle above a red circle",
        "three yellow circles",
    ];
    let corpus: Vec<String> = (0..50)
        .flat_map(|_| captions.iter().map(|c| c.to_string()))
        .collect();
    let tok = ClipTokenizer::train(corpus.iter(), 600, 16).unwrap();
    let dir = crate::common::scratch_dir("tokenizer-train");
    tok.save(&dir).unwrap();
    for name in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert!(dir.join(name).is_file(), "{name} written");
    }
    let reloaded = ClipTokenizer::load(&dir).unwrap();
    assert_eq!(reloaded.context_length(), 16);
    let (a, _) = tok.encode("a blue circle above two red squares").unwrap();
    let (b, _) = reloaded
        .encode("a blue circle above two red squares")
        .unwrap();
    assert_eq!(a, b);
    // Frequent words became single tokens.
    assert_eq!(tok.tokenize("circle").unwrap().len(), 1);
    // The vocab.json + merges.txt pair alone gives the same ids.
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let from_pair = ClipTokenizer::load(&dir).unwrap();
    assert_eq!(
        from_pair
            .encode("a blue circle above two red squares")
            .unwrap()
            .0,
        a
    );
    assert!(
        ClipTokenizer::train(corpus.iter(), 10, 16).is_err(),
        "too small a vocabulary is an error"
    );
    // Every byte has its word-final token, so a word ending in a character the captions never
    // ended one with does not encode as <|endoftext|> (where the text tower pools).
    assert!(tok.vocab_size() <= 600, "{}", tok.vocab_size());
    for text in ["a red circle!", "zzz", "a red circlq, then é"] {
        let ids = tok.tokenize(text).unwrap();
        assert!(!ids.contains(&tok.eos_id()), "{text}: {ids:?}");
        assert_eq!(reloaded.tokenize(text).unwrap(), ids, "{text}");
    }
}
