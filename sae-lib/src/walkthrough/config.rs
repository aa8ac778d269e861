//! The walkthrough's settings: the tutorial's globals as one struct, overridable from the
//! environment so notebooks run unchanged on local files.

use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::collect::CollectConfig;
use crate::data::{CollectMode, DatasetOptions, DatasetSource};
use crate::hub::HubOptions;
use crate::model::ModelSource;
use crate::sae::{Architecture, SaeConfig, SaeMetadata};
use crate::train::TrainConfig;
use crate::{Error, Result};

/// Everything the walkthrough needs; `Default` is the tutorial.
#[derive(Debug, Clone)]
pub struct WalkthroughConfig {
    /// Hub id (`org/name[@revision]`), local directory or `.gguf` file.
    pub model: String,
    /// A tokenizer.json overriding the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Hub dataset id, or a local .parquet / .jsonl / .txt file or folder.
    pub dataset: String,
    /// The dataset's split, text column and how text files split into documents.
    pub dataset_options: DatasetOptions,
    /// Hook, middle token or every token, tokens per document and training documents.
    pub collect: CollectConfig,
    /// The SAE variant.
    pub architecture: Architecture,
    /// Features of the SAE.
    pub d_sae: usize,
    /// Active features per input, for TopK-style architectures.
    pub k: Option<usize>,
    /// The trainer's settings.
    pub train: TrainConfig,
    /// Documents held out for the evaluation: the ones after the training documents, or the
    /// dataset's last ones when every document is asked for (see [`WalkthroughConfig::split`]).
    pub eval_docs: usize,
    /// Features whose top contexts go into the report.
    pub inspect_features: usize,
    /// Where the model runs and the SAE trains.
    pub device: Device,
    /// The model weights' dtype.
    pub model_dtype: DType,
    /// The report folder; every stage saves under it.
    pub out: PathBuf,
}

/// How many of the dataset's documents, counted from its start with empty ones included,
/// train the SAE; the `held_out` after them are for its evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocSplit {
    /// Documents that train the SAE, from the dataset's first.
    pub training: usize,
    /// At most this many; fewer when the dataset ends sooner.
    pub held_out: usize,
}

impl Default for WalkthroughConfig {
    fn default() -> Self {
        Self {
            model: crate::TUTORIAL_MODEL.into(),
            tokenizer: None,
            dataset: crate::TUTORIAL_DATASET.into(),
            dataset_options: DatasetOptions::default(),
            collect: CollectConfig {
                batch_size: 1,
                pack: false,
                ..Default::default()
            },
            architecture: Architecture::Relu,
            d_sae: 4096,
            k: None,
            train: TrainConfig::for_architecture(Architecture::Relu, 4096),
            eval_docs: 100,
            inspect_features: 4,
            device: Device::Cpu,
            model_dtype: DType::F32,
            out: PathBuf::from("walkthrough"),
        }
    }
}

impl WalkthroughConfig {
    /// The tutorial's defaults, overridden by environment variables, so notebooks and scripts
    /// can point at local files without editing code:
    ///
    /// | variable | field | default |
    /// |---|---|---|
    /// | `SAE_MODEL` | Hub id, model directory or `.gguf` file | `EleutherAI/pythia-70m-deduped` |
    /// | `SAE_TOKENIZER` | a tokenizer.json overriding the model's | the model's own |
    /// | `SAE_DATASET` | Hub id or local .parquet/.jsonl/.txt/dir | `NeelNanda/pile-10k` |
    /// | `SAE_HOOK` | hook point | `blocks.5.hook_mlp_out` |
    /// | `SAE_MODE` | `middle` (the tutorial's) or `all` tokens | `middle` |
    /// | `SAE_MAX_LEN` | tokens kept per document | 128 |
    /// | `SAE_EXCLUDE_FIRST` | `1` leaves out each document's first token (`all`) | `0` |
    /// | `SAE_DROP_OUTLIERS` | leave out tokens over this many times their batch's median norm | off |
    /// | `SAE_MAX_DOCS` | training documents | all but the held-out ones |
    /// | `SAE_EVAL_DOCS` | held-out documents for the evaluation | 100 (at most a tenth of "all") |
    /// | `SAE_ARCH` | relu, topk, batchtopk, jumprelu, gated, matryoshka | relu |
    /// | `SAE_D_SAE`, `SAE_K` | dictionary size, active features (TopK family) | 4096, the architecture's |
    /// | `SAE_STEPS`, `SAE_BATCH_SIZE` | training steps and batch | 2000, 4096 |
    /// | `SAE_L1`, `SAE_LR`, `SAE_SEED` | sparsity coefficient, learning rate, seed | the architecture's, 0 |
    /// | `SAE_DEVICE` | auto, cpu, cuda or cuda:N, metal or metal:N | auto |
    /// | `SAE_OUT` | folder for activations, the SAE and the report | `walkthrough` |
    ///
    /// A value that does not parse is an error naming the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables (empty values count as unset).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        fn parse<T: std::str::FromStr>(name: &str, value: String) -> Result<T> {
            value.trim().parse().map_err(|_| {
                Error::Input(format!("{name}={value} is not a valid value for {name}"))
            })
        }
        let mut cfg = Self::default();
        if let Some(v) = var("SAE_MODEL") {
            cfg.model = v;
        }
        cfg.tokenizer = var("SAE_TOKENIZER").map(PathBuf::from);
        if let Some(v) = var("SAE_DATASET") {
            cfg.dataset = v;
        }
        if let Some(v) = var("SAE_HOOK") {
            cfg.collect.hook = v.parse()?;
        }
        if let Some(v) = var("SAE_MODE") {
            cfg.collect.mode = match v.as_str() {
                "middle" => CollectMode::Middle,
                "all" => CollectMode::All,
                _ => return Err(Error::Input(format!("SAE_MODE={v}: use middle or all"))),
            };
            // Batch and pack the all-token collection; the middle-token one mirrors the
            // tutorial's loop, one prompt per forward.
            let all = cfg.collect.mode == CollectMode::All;
            cfg.collect.batch_size = if all { 32 } else { 1 };
            cfg.collect.pack = all;
        }
        if let Some(v) = var("SAE_MAX_LEN") {
            cfg.collect.max_len = parse("SAE_MAX_LEN", v)?;
        }
        if let Some(v) = var("SAE_EXCLUDE_FIRST") {
            cfg.collect.filter.exclude_first = match v.trim() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => return Err(Error::Input(format!("SAE_EXCLUDE_FIRST={v}: use 1 or 0"))),
            };
        }
        if let Some(v) = var("SAE_DROP_OUTLIERS") {
            cfg.collect.filter.outlier_norm = Some(parse("SAE_DROP_OUTLIERS", v)?);
        }
        if let Some(v) = var("SAE_MAX_DOCS") {
            cfg.collect.max_docs = Some(parse("SAE_MAX_DOCS", v)?);
        }
        if let Some(v) = var("SAE_EVAL_DOCS") {
            cfg.eval_docs = parse("SAE_EVAL_DOCS", v)?;
        }
        if let Some(v) = var("SAE_ARCH") {
            cfg.architecture = Architecture::parse(&v)?;
        }
        if let Some(v) = var("SAE_D_SAE") {
            cfg.d_sae = parse("SAE_D_SAE", v)?;
        }
        // The architecture's own defaults, before any explicit value.
        let defaults = cfg.architecture.defaults(cfg.d_sae);
        cfg.k = defaults.k;
        cfg.train.take_defaults(&defaults);
        if let Some(v) = var("SAE_K") {
            cfg.k = Some(parse("SAE_K", v)?);
        }
        if let Some(v) = var("SAE_STEPS") {
            cfg.train.steps = parse("SAE_STEPS", v)?;
        }
        if let Some(v) = var("SAE_BATCH_SIZE") {
            cfg.train.batch_size = parse("SAE_BATCH_SIZE", v)?;
        }
        if let Some(v) = var("SAE_L1") {
            cfg.train.sparsity_coefficient = parse("SAE_L1", v)?;
        }
        if let Some(v) = var("SAE_LR") {
            cfg.train.adam.lr = parse("SAE_LR", v)?;
        }
        if let Some(v) = var("SAE_SEED") {
            cfg.train.seed = parse("SAE_SEED", v)?;
        }
        cfg.device = crate::device::parse_device(var("SAE_DEVICE").as_deref().unwrap_or("auto"))?;
        if let Some(v) = var("SAE_OUT") {
            cfg.out = PathBuf::from(v);
        }
        Ok(cfg)
    }

    /// Checks every setting before any work starts.
    pub fn validate(&self) -> Result<()> {
        self.collect.validate()?;
        crate::sae::validate_shape(self.architecture, self.d_sae, self.k)?;
        self.train.validate(!self.architecture.uses_k())?;
        if self.eval_docs == 0 {
            return Err(Error::Input(
                "the evaluation needs at least 1 held-out document (got 0)".into(),
            ));
        }
        Ok(())
    }

    /// The settings as an HTML table, for notebooks.
    pub fn summary(&self) -> crate::plot::Html {
        let c = &self.collect;
        let rows = [
            ("model", self.model.clone()),
            ("dataset", self.dataset.clone()),
            ("hook", c.hook.to_string()),
            (
                "collection",
                format!("{:?}, {} tokens per document", c.mode, c.max_len),
            ),
            (
                "documents",
                c.max_docs.map_or("all".into(), |n| n.to_string()),
            ),
            (
                "SAE",
                format!(
                    "{} with {} features{}",
                    self.architecture.name(),
                    self.d_sae,
                    self.k.map_or(String::new(), |k| format!(", k = {k}"))
                ),
            ),
            (
                "training",
                format!(
                    "{} steps of {} inputs, λ = {}, lr = {}, seed {}",
                    self.train.steps,
                    self.train.batch_size,
                    self.train.sparsity_coefficient,
                    self.train.adam.lr,
                    self.train.seed
                ),
            ),
            ("device", format!("{:?}", self.device)),
            ("output folder", self.out.display().to_string()),
        ];
        crate::plot::Html::table(
            &["setting", "value"],
            rows.iter().map(|(k, v)| vec![k.to_string(), v.clone()]),
        )
    }

    /// The same settings for another architecture, with that architecture's own defaults
    /// (`k`, learning rate and its decay, sparsity coefficient, `b_dec`'s start); steps, batch
    /// and seed stay.
    pub fn with_architecture(&self, architecture: Architecture) -> Self {
        let d = architecture.defaults(self.d_sae);
        let mut cfg = Self {
            architecture,
            k: d.k,
            ..self.clone()
        };
        cfg.train.take_defaults(&d);
        cfg
    }

    /// The SAE this configuration trains, for activations of width `d_in`.
    pub fn sae_config(&self, d_in: usize) -> SaeConfig {
        SaeConfig {
            architecture: self.architecture,
            d_in,
            d_sae: self.d_sae,
            k: self.k,
            prefixes: None,
            metadata: SaeMetadata {
                model_name: ModelSource::parse(&self.model).name(),
                hook_name: self.collect.hook.to_string(),
                context_size: self.collect.max_len,
                prepend_bos: false,
                dataset_path: DatasetSource::parse(&self.dataset).name(),
                training_docs: None,
                filter: self.collect.filter,
            },
        }
    }

    /// The documents of the configured dataset.
    pub fn documents(&self) -> Result<crate::data::dataset::Documents> {
        DatasetSource::parse(&self.dataset)
            .documents(&self.dataset_options, &HubOptions::from_env())
    }

    /// Which of the dataset's documents train the SAE and which are held out for its
    /// evaluation. With `collect.max_docs` set, the first `max_docs` train and the next
    /// `eval_docs` are held out. Unset ("all"), the dataset's last documents are held out:
    /// `eval_docs` of them, or a tenth of the dataset when that is fewer, so the report never
    /// measures the SAE on what it trained on. That needs the documents counted, one pass
    /// over the dataset without tokenising.
    pub fn split(&self) -> Result<DocSplit> {
        if let Some(training) = self.collect.max_docs {
            return Ok(DocSplit {
                training,
                held_out: self.eval_docs,
            });
        }
        let mut total = 0;
        for doc in self.documents()? {
            doc?;
            total += 1;
        }
        let held_out = self.eval_docs.min(total / 10);
        Ok(DocSplit {
            training: total - held_out,
            held_out,
        })
    }

    /// Where [`activations`](super::stages::activations) keeps its store.
    pub fn activations_dir(&self) -> PathBuf {
        self.out.join("activations")
    }

    /// Where [`held_out_activations`](super::stages::held_out_activations) keeps its store.
    pub fn held_out_dir(&self) -> PathBuf {
        self.out.join("held_out_activations")
    }

    /// Where [`train_sae`](super::stages::train_sae) keeps the SAE (SAELens format) and its training metrics: one folder
    /// per architecture, so Part 2's variants sit beside Part 1's ReLU SAE.
    pub fn sae_dir(&self) -> PathBuf {
        self.out.join(format!("sae-{}", self.architecture.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookPoint;

    fn from(pairs: &[(&str, &str)]) -> Result<WalkthroughConfig> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WalkthroughConfig::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn no_variables_give_the_tutorial() {
        let cfg = from(&[("SAE_DEVICE", "cpu")]).unwrap();
        assert_eq!(cfg.model, "EleutherAI/pythia-70m-deduped");
        assert_eq!(cfg.dataset, "NeelNanda/pile-10k");
        assert_eq!(cfg.collect.hook, HookPoint::mlp_out(5));
        assert_eq!(
            (cfg.collect.max_len, cfg.collect.mode),
            (128, CollectMode::Middle)
        );
        assert_eq!(
            cfg.train,
            TrainConfig::for_architecture(Architecture::Relu, 4096)
        );
    }

    #[test]
    fn variables_override_and_bad_values_name_the_variable() {
        let cfg = from(&[
            ("SAE_MODEL", "./m"),
            ("SAE_HOOK", "blocks.1.hook_mlp_out"),
            ("SAE_MODE", "all"),
            ("SAE_MAX_DOCS", "40"),
            ("SAE_ARCH", "topk"),
            ("SAE_K", "8"),
            ("SAE_STEPS", "150"),
            ("SAE_LR", "1e-3"),
            ("SAE_DEVICE", "cpu"),
            ("SAE_OUT", "/tmp/x"),
            ("SAE_EXCLUDE_FIRST", "1"),
            ("SAE_DROP_OUTLIERS", "10"),
        ])
        .unwrap();
        assert_eq!(
            cfg.collect.filter,
            crate::data::TokenFilter {
                exclude_first: true,
                outlier_norm: Some(10.0)
            }
        );
        assert_eq!(cfg.model, "./m");
        assert_eq!(cfg.collect.hook, HookPoint::mlp_out(1));
        assert_eq!(
            (cfg.collect.mode, cfg.collect.batch_size),
            (CollectMode::All, 32)
        );
        assert_eq!(cfg.collect.max_docs, Some(40));
        assert_eq!((cfg.architecture, cfg.k), (Architecture::TopK, Some(8)));
        assert_eq!((cfg.train.steps, cfg.train.adam.lr), (150, 1e-3));
        assert_eq!(cfg.sae_dir(), PathBuf::from("/tmp/x/sae-topk"));
        let err = from(&[("SAE_STEPS", "many")]).unwrap_err().to_string();
        assert!(err.contains("SAE_STEPS=many"), "{err}");
        let err = from(&[("SAE_MODE", "some")]).unwrap_err().to_string();
        assert!(err.contains("SAE_MODE"), "{err}");
        let err = from(&[("SAE_EXCLUDE_FIRST", "yes")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SAE_EXCLUDE_FIRST=yes"), "{err}");
    }
}
