//! Llama, Qwen2, Qwen3, Gemma 2 and GPT-NeoX models and tokenizers from llama.cpp GGUF files,
//! against what transformers computes from the same files or weights, SentencePiece
//! vocabularies against sentencepiece itself (`scripts/make_gguf_fixtures.py`), and real
//! vocabularies against their models' own tokenizers and llama.cpp's.

use std::path::PathBuf;

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use sae_lib::hooks::{HookPoint, Hooks};
use sae_lib::model::{load_model, load_tokenizer, Model, ModelSource, TokenBatch};
use sae_lib::tokenizer::Tokenizer;

/// Where `scripts/fetch_smollm2.sh` puts SmolLM2 (override with `SAE_SMOLLM2_GGUF`).
fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("SAE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "SKIP: {} is absent; sae-lib/scripts/fetch_smollm2.sh fetches it",
            path.display()
        );
        None
    }
}

/// The vocabularies `scripts/fetch_llama_cpp_vocabs.sh` fetches, by llama.cpp's file names.
const LLAMA_CPP_VOCABS: [&str; 13] = [
    "llama-spm",
    "phi-3",
    "llama-bpe",
    "qwen2",
    "qwen35",
    "gpt-2",
    "mpt",
    "starcoder",
    "refact",
    "command-r",
    "falcon",
    "deepseek-llm",
    "deepseek-coder",
];

/// Where `scripts/fetch_llama_cpp_vocabs.sh` puts llama.cpp's tokenizer test files (override
/// with `SAE_LLAMA_CPP_VOCABS`), when every one is there.
fn llama_cpp_vocabs() -> Option<PathBuf> {
    let dir = std::env::var_os("SAE_LLAMA_CPP_VOCABS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/llama-cpp-vocab")
        });
    let missing = LLAMA_CPP_VOCABS
        .iter()
        .map(|name| dir.join(format!("ggml-vocab-{name}.gguf")))
        .find(|path| !path.is_file());
    match missing {
        None => Some(dir),
        Some(path) => {
            println!(
                "SKIP: {} is absent; sae-lib/scripts/fetch_llama_cpp_vocabs.sh fetches it",
                path.display()
            );
            None
        }
    }
}

/// Token ids from llama.cpp's own tokenizer (`scripts/make_llama_cpp_references.py`).
fn llama_cpp_ids() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("llama_cpp_tokenizer_ids.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// llama.cpp's test texts for the vocabulary file `vocab` (its `.inp`).
fn test_texts(vocab: &std::path::Path) -> Vec<String> {
    let inputs = std::fs::read_to_string(vocab.with_extension("gguf.inp")).unwrap();
    let mut texts: Vec<String> = inputs
        .split("\n__ggml_vocab_test__\n")
        .map(String::from)
        .collect();
    texts.pop(); // the file ends with a separator
    texts
}

fn load(path: &std::path::Path) -> Model {
    load_model(
        &ModelSource::parse(path.to_str().unwrap()),
        &Device::Cpu,
        DType::F32,
        &offline_hub(),
    )
    .unwrap()
}

/// The logits of one fixed six-token input.
fn logits_on(model: &Model) -> Tensor {
    let ids = Tensor::new(&[[5u32, 17, 40, 2, 66, 9]], &Device::Cpu).unwrap();
    let batch = TokenBatch::new(&ids, None).unwrap();
    model.forward(&batch, &mut Hooks::new()).unwrap().unwrap()
}

/// Checks the file's tokenizer against the fixture's expected ids; returns the tokenizer and
/// the texts for further checks.
fn check_tokenizer(path: &std::path::Path, fixture_dir: &str) -> (Tokenizer, Vec<String>) {
    let tokenizer =
        load_tokenizer(&ModelSource::parse(path.to_str().unwrap()), &offline_hub()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(fixture_dir).join("tokenizer_ids.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<String> = serde_json::from_value(expected["texts"].clone()).unwrap();
    for (text, ids) in texts.iter().zip(expected["ids"].as_array().unwrap()) {
        let want: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        let got = tokenizer.encode(text, None).unwrap();
        assert_eq!(got, want, "{fixture_dir}: ids of {text:?}");
    }
    (tokenizer, texts)
}

/// Runs the expected input capturing `layers`' hooks; compares hooks, the logits' first
/// columns and the next-token NLL.
fn check_outputs(model: &Model, fixture_dir: &str, layers: &[usize], tol: f32) {
    let exp = expected(fixture_dir);
    let batch = TokenBatch::new(&exp["input_ids"], None).unwrap();
    let points: Vec<HookPoint> = layers
        .iter()
        .flat_map(|&l| [HookPoint::mlp_out(l), HookPoint::resid_post(l)])
        .collect();
    let mut hooks = points.iter().fold(Hooks::new(), |h, &p| h.capture(p));
    let logits = model.forward(&batch, &mut hooks).unwrap().unwrap();
    for p in &points {
        let want = &exp[&p.to_string()];
        // Relative to the activation's scale: real models' residual streams reach the hundreds.
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        let d = max_abs_diff(hooks.get(*p).unwrap(), want) / scale;
        assert!(d < tol, "{fixture_dir} {p}: max abs diff / scale {d}");
    }
    let cols = exp["logits_head"].dim(2).unwrap();
    let d = max_abs_diff(&logits.narrow(2, 0, cols).unwrap(), &exp["logits_head"]);
    assert!(d < 10.0 * tol, "{fixture_dir} logits: max abs diff {d}");
    // Next-token NLL from our logits against transformers'.
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let t = ids.dim(1).unwrap();
    let lp = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), 1).unwrap();
    let next = ids.squeeze(0).unwrap().narrow(0, 1, t - 1).unwrap();
    let nll = lp
        .narrow(0, 0, t - 1)
        .unwrap()
        .gather(&next.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .neg()
        .unwrap()
        .squeeze(1)
        .unwrap();
    let d = max_abs_diff(&nll, &exp["next_token_nll"]);
    assert!(
        d < 10.0 * tol,
        "{fixture_dir} next-token NLL: max abs diff {d}"
    );
}

#[test]
fn tiny_gguf_matches_transformers_gguf_loader() {
    let path = fixture("llama_gguf/model.gguf");
    let model = load(&path);
    assert_eq!(model.architecture(), "llama");
    assert_eq!((model.n_layers(), model.d_model()), (3, 32));
    check_outputs(&model, "llama_gguf", &[0, 1, 2], 1e-4);
    check_tokenizer(&path, "llama_gguf");
}

/// Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms) as llama.cpp writes them, whose q/k
/// rows are not permuted; their tokenizers split text as Qwen2 and Llama 3 do (`qwen2` and
/// `llama-bpe`), which GPT-2's regex would not: "12345" is five tokens under the one, "123"
/// and two under the other.
#[test]
fn qwen_gguf_files_match_transformers_gguf_loader() {
    for arch in ["qwen2", "qwen3"] {
        let dir = format!("{arch}_gguf");
        let path = fixture(&dir).join("model.gguf");
        let model = load(&path);
        assert_eq!(model.architecture(), arch);
        assert_eq!((model.n_layers(), model.d_model()), (3, 32));
        check_outputs(&model, &dir, &[0, 1, 2], 1e-4);
        check_tokenizer(&path, &dir);
        // The same checkpoint as safetensors computes the same function (both F32 here).
        let st = logits_on(&load_fixture_model(arch));
        assert!(
            max_abs_diff(&st, &logits_on(&model)) < 1e-4,
            "{arch}: safetensors against GGUF"
        );
    }
}

/// SentencePiece vocabularies (no merges in the file) tokenize as sentencepiece does: Llama 2's
/// `▁` prefix, Gemma's runs of blanks as user-defined tokens, `<0xNN>` byte fallback for
/// characters outside the vocabulary, a BOS first. Decoding gives the text back.
#[test]
fn sentencepiece_vocabularies_match_sentencepiece() {
    for (dir, file) in [
        ("llama_spm_gguf", "vocab.gguf"),
        ("gemma2_gguf", "model.gguf"),
    ] {
        let (tokenizer, texts) = check_tokenizer(&fixture(dir).join(file), dir);
        for text in &texts {
            let ids = tokenizer.encode(text, None).unwrap();
            assert_eq!(
                tokenizer.decode(&ids[1..]).unwrap(),
                text.as_str(),
                "{dir}: round trip"
            );
        }
        // Token by token (as `sae inspect` shows contexts), each keeps its own blank: Llama's
        // decoder strips the first token's, which would run the words together.
        let text = "the cat sat on the mat";
        let ids = tokenizer.encode(text, None).unwrap();
        let shown: String = ids[1..]
            .iter()
            .map(|&id| tokenizer.token_text(id))
            .collect();
        let prefix = if dir == "llama_spm_gguf" { " " } else { "" };
        assert_eq!(shown, format!("{prefix}{text}"), "{dir}: tokens one by one");
    }
}

/// A Gemma 2 as llama.cpp writes it (norms stored as 1 + w, no key for the attention scale)
/// computes what transformers computes from the same file, sliding window and soft-capping
/// included (32 tokens through a window of 4).
#[test]
fn gemma2_gguf_matches_transformers_gguf_loader() {
    let path = fixture("gemma2_gguf/model.gguf");
    let model = load(&path);
    assert_eq!(model.architecture(), "gemma2");
    assert_eq!((model.n_layers(), model.d_model()), (3, 32));
    check_outputs(&model, "gemma2_gguf", &[0, 1, 2], 1e-4);
    // A vocabulary-only file is a tokenizer, not a model, and says so.
    let err = load_model(
        &ModelSource::parse(fixture("llama_spm_gguf/vocab.gguf").to_str().unwrap()),
        &Device::Cpu,
        DType::F32,
        &offline_hub(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("vocabulary-only"), "{err}");
}

/// Real vocabularies, from llama.cpp's tokenizer tests: Llama 2's and Phi-3's SentencePiece,
/// and byte-level BPE with eight different splits (Llama 3's, Qwen2's, Qwen 3.5's, GPT-2's,
/// digits apart, Falcon's, DeepSeek LLM's, DeepSeek Coder's). Each rebuilt tokenizer gives
/// llama.cpp's 46 test texts (50 for Qwen 3.5: blanks, tabs and line breaks, accents, emoji, digit runs, code,
/// Cyrillic, contractions) the ids the model's own HF tokenizer gave them, and 28 more
/// texts (combining marks, a dozen scripts, full-width forms, symbols, letter-like signs)
/// the ids llama.cpp's own tokenizer gives them (`scripts/make_llama_cpp_references.py`):
/// on llama.cpp's texts alone DeepSeek Coder's split cannot be told from "digits apart",
/// nor Qwen 3.5's from Qwen2's.
#[test]
fn real_gguf_vocabularies_match_their_hf_tokenizers() {
    let Some(dir) = llama_cpp_vocabs() else {
        return;
    };
    let extra = llama_cpp_ids();
    let extra_texts: Vec<String> = serde_json::from_value(extra["texts"].clone()).unwrap();
    let mut failures = Vec::new();
    for name in LLAMA_CPP_VOCABS {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let tokenizer = load_tokenizer(&ModelSource::Gguf(path.clone()), &offline_hub()).unwrap();
        // The .out files have no BOS; ours puts one first where the file asks for it.
        let bos = tokenizer.encode("", None).unwrap().len();
        let texts = test_texts(&path);
        let outputs = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        let mut want: Vec<Vec<u32>> = outputs
            .lines()
            .map(|line| {
                line.split_whitespace()
                    .map(|t| t.parse().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(texts.len(), want.len(), "{name}: texts and id lines");
        let extra_ids: Vec<Vec<u32>> = serde_json::from_value(extra["ids"][name].clone())
            .unwrap_or_else(|e| panic!("{name}: no llama.cpp ids in the fixture ({e})"));
        assert_eq!(
            extra_ids.len(),
            extra_texts.len(),
            "{name}: extra texts and ids"
        );
        want.extend(extra_ids);
        for (text, want) in texts.iter().chain(&extra_texts).zip(want) {
            let got = tokenizer.encode(text, None).unwrap()[bos..].to_vec();
            if got != want {
                failures.push(format!("{name} {text:?}:\n  got  {got:?}\n  want {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Splits llama.cpp has no test vocabulary for (Mistral's Tekken, ByteDance's Seed-Coder), on
/// a real vocabulary relabelled with their names (Llama 3's), give the ids llama.cpp gives
/// llama.cpp's Llama 3 texts and the extra texts. The rebuilt splits are the models' own
/// tokenizer.json regexes, where llama.cpp approximates Tekken's: its letter classes leave
/// out combining marks, so on the Hindi text (vowel signs before a comma) the two differ,
/// and there the HF regex holds.
#[test]
fn splits_without_test_vocabularies_match_llama_cpp_on_a_relabelled_one() {
    use candle_core::quantized::gguf_file::{self, Value};
    let Some(dir) = llama_cpp_vocabs() else {
        return;
    };
    let extra = llama_cpp_ids();
    let tmp = tempfile::tempdir().unwrap();
    let expected_differences = [
        ("tekken", vec!["नमस्ते दुनिया, आप कैसे हैं?"]),
        ("seed-coder", vec![]),
    ];
    for (pre, expected) in expected_differences {
        let entry = &extra["relabelled"][pre];
        let vocab = dir.join(format!(
            "ggml-vocab-{}.gguf",
            entry["vocab"].as_str().unwrap()
        ));
        let mut file = std::fs::File::open(&vocab).unwrap();
        let mut metadata = gguf_file::Content::read(&mut file).unwrap().metadata;
        metadata.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
        metadata.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        let path = tmp.path().join(format!("{pre}.gguf"));
        let pairs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &pairs, &[]).unwrap();
        let tokenizer = load_tokenizer(&ModelSource::Gguf(path), &offline_hub()).unwrap();

        let mut texts = test_texts(&vocab);
        texts.extend(serde_json::from_value::<Vec<String>>(extra["texts"].clone()).unwrap());
        let want: Vec<Vec<u32>> = serde_json::from_value(entry["ids"].clone()).unwrap();
        assert_eq!(texts.len(), want.len(), "{pre}");
        let differ: Vec<&str> = texts
            .iter()
            .zip(&want)
            .filter(|(text, want)| tokenizer.encode(text, None).unwrap() != **want)
            .map(|(text, _)| text.as_str())
            .collect();
        assert_eq!(differ, expected, "{pre}: of {} texts", texts.len());
    }
}

/// Pythia as llama.cpp's converter writes it (`gptneox`: F16 matrices, the fused q/k/v rows
/// regrouped as all queries, keys, then values, no 4.x buffers) computes what transformers
/// computed from the fp16 checkpoint, at every hook, single and padded. llama.cpp reads the
/// same file so too (`scripts/make_llama_cpp_references.py`).
#[test]
fn pythia_gguf_matches_transformers() {
    let model = load(&fixture("pythia_gguf/model.gguf"));
    assert!(
        matches!(model, Model::GptNeoX(_)),
        "a gptneox file is a GPT-NeoX"
    );
    crate::model::check_parity_of(&model, "pythia_gguf", "pythia");
}

/// A real Pythia GGUF's vocabulary (llama.cpp's GPT-NeoX file, no pre-tokenizer name) gives
/// WikiText and the extra texts the ids Pythia's own tokenizer.json gives them. GGUF keeps no
/// normalizer, and Pythia's composes characters (NFC) where llama.cpp does not, so texts NFC
/// would change are left out: two of the extra texts (decomposed accents; the Kelvin and Ohm
/// signs, which NFC turns into K and Ω).
#[test]
fn pythia_gguf_vocabulary_matches_pythia_tokenizer() {
    let (Some(dir), Some(pythia)) = (
        llama_cpp_vocabs(),
        shared_data("gpt-neox-20b-tokenizer.json"),
    ) else {
        return;
    };
    let path = dir.join("ggml-vocab-gpt-neox.gguf");
    let ours = load_tokenizer(&ModelSource::Gguf(path), &offline_hub()).unwrap();
    let pythia = Tokenizer::from_file(&pythia).unwrap();
    let wiki = std::fs::read_to_string(shared_data("wikitext-2/valid.txt").unwrap()).unwrap();
    let extra = llama_cpp_ids();
    let mut texts: Vec<String> = wiki
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(400)
        .map(String::from)
        .collect();
    texts.extend(serde_json::from_value::<Vec<String>>(extra["texts"].clone()).unwrap());
    let nfc = |t: &str| {
        let mut n = tokenizers::NormalizedString::from(t);
        n.nfc();
        n.get().to_string()
    };
    let before = texts.len();
    texts.retain(|t| nfc(t) == *t);
    assert_eq!(before - texts.len(), 2, "texts NFC changes");
    let mut failures = Vec::new();
    for text in &texts {
        let (got, want) = (
            ours.encode(text, None).unwrap(),
            pythia.encode(text, None).unwrap(),
        );
        if got != want {
            failures.push(format!("{text:?}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {}:\n{}",
        failures.len(),
        texts.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_gguf_matches_transformers_gguf_loader() {
    let Some(path) = smollm2() else { return };
    check_tokenizer(&path, "smollm2");
    let model = load(&path);
    assert_eq!((model.n_layers(), model.d_model()), (30, 576));
    check_outputs(&model, "smollm2", &[0, 15, 29], 1e-4);
}

#[test]
fn bad_gguf_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |path: &std::path::Path| {
        load_model(
            &ModelSource::Gguf(path.into()),
            &Device::Cpu,
            DType::F32,
            &offline_hub(),
        )
        .unwrap_err()
        .to_string()
    };
    let missing = err(&dir.path().join("none.gguf"));
    assert!(missing.contains("fetch_smollm2.sh"), "{missing}");
    // Cut inside the tensor data: the header reads, a tensor does not.
    let bytes = std::fs::read(fixture("llama_gguf/model.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let msg = err(&cut);
    assert!(
        msg.contains("cut.gguf") && msg.contains("cannot read tensor"),
        "{msg}"
    );
    // Cut inside the header.
    std::fs::write(&cut, &bytes[..200]).unwrap();
    let msg = err(&cut);
    assert!(msg.contains("not a readable GGUF file"), "{msg}");
    // Not GGUF at all.
    std::fs::write(&cut, b"hello").unwrap();
    assert!(err(&cut).contains("not a readable GGUF file"));
    // A quantization candle cannot read (IQ4_NL, ggml type 20): the embedding's type (u32)
    // follows its name, its number of dimensions (u32) and its two dimensions (u64).
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 20;
    assert_eq!(bytes[at..at + 4], 8u32.to_le_bytes(), "Q8_0");
    let mut iq = bytes.clone();
    iq[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&cut, iq).unwrap();
    let msg = err(&cut);
    assert!(
        msg.contains("GGML type IQ4_NL (20)")
            && msg.contains("llama-quantize")
            && !msg.contains("truncated"),
        "{msg}"
    );
    // A pre-tokenizer whose split is not rebuilt here is refused, not guessed: the value of
    // `tokenizer.ggml.pre` follows its key, a type (u32) and a length (u64).
    let key = b"tokenizer.ggml.pre";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 12;
    assert_eq!(&bytes[at..at + 7], b"default");
    let mut renamed = bytes.clone();
    renamed[at..at + 7].copy_from_slice(b"unknown");
    let path = dir.path().join("renamed.gguf");
    std::fs::write(&path, renamed).unwrap();
    let msg = load_tokenizer(&ModelSource::Gguf(path), &offline_hub())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("pre-tokenizer `unknown` is not supported") && msg.contains("--tokenizer"),
        "{msg}"
    );
}

#[test]
fn llama_loads_from_safetensors_and_gguf_to_the_same_function() {
    // The same random weights, once as HF safetensors and once as Q8_0 GGUF: close, not equal.
    let la = logits_on(&load_fixture_model("llama_gqa"));
    let lb = logits_on(&load(&fixture("llama_gguf/model.gguf")));
    let scale = la
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(&la, &lb) / scale;
    assert!(
        d < 0.05,
        "safetensors vs Q8_0 GGUF logits differ by {d} of their scale"
    );
}

#[test]
fn smollm2_predicts_wikitext_far_better_than_unigram_frequencies() {
    let (Some(path), Some(test), Some(valid)) = (
        smollm2(),
        shared_data("wikitext-2/test.txt"),
        shared_data("wikitext-2/valid.txt"),
    ) else {
        return;
    };
    let model = load(&path);
    let tokenizer = load_tokenizer(&ModelSource::Gguf(path), &offline_hub()).unwrap();
    let read = |p: &std::path::Path, n: usize| -> Vec<Vec<u32>> {
        std::fs::read_to_string(p)
            .unwrap()
            .split("\n \n")
            .filter(|d| d.trim().len() > 200)
            .take(n)
            .map(|d| tokenizer.encode(d, Some(64)).unwrap())
            .collect()
    };
    let loss =
        sae_lib::eval::lm_loss(&model, &read(&test, 24), &read(&valid, usize::MAX), 8).unwrap();
    println!("{loss:?}");
    assert!(loss.tokens > 1000, "{loss:?}");
    // Random weights would sit near ln(49152) = 10.8; unigram frequencies near 7.
    assert!(loss.ce_loss < loss.unigram_ce_loss - 2.0, "{loss:?}");
}
