//! A checkpoint's tensors, read lazily: only the tensors a model asks for are converted, so
//! whatever else a file carries (Pythia's BOOL causal-mask buffers, `masked_bias`,
//! `rotary_emb.inv_freq`) costs nothing and cannot fail the load.
//!
//! Three layouts, as transformers writes them: one `model.safetensors`, shards named by
//! `model.safetensors.index.json`, or a `pytorch_model.bin` zip archive. Safetensors files are
//! memory-mapped; a `.bin` is indexed once and each tensor read from the archive on request.
//! Errors name the tensor and the file: a missing tensor, a wrong shape, a dtype that cannot
//! be a weight, a file cut short by an interrupted download.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};

use crate::{Error, Result};

/// The tensors of one checkpoint (one or more files), behind candle-nn's `VarBuilder`.
pub struct Weights {
    files: Vec<PathBuf>,
    store: Store,
}

enum Store {
    Safetensors(MmapedSafetensors),
    Pickle(Box<PthArchive>),
}

impl Weights {
    /// Opens `files`: all `.safetensors`, or one PyTorch `.bin`/`.pt`/`.pth` archive.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let is_pickle = |p: &PathBuf| {
            p.extension()
                .is_some_and(|e| e == "bin" || e == "pt" || e == "pth")
        };
        let store = match files {
            [one] if is_pickle(one) => Store::Pickle(Box::new(PthArchive::open(one)?)),
            _ => {
                for f in files {
                    check_safetensors(f)?;
                }
                // SAFETY: the files are not modified while mapped (the same contract as
                // candle-nn's `from_mmaped_safetensors`); each was checked to be complete.
                let st =
                    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| Error::Weights {
                        path: files.first().cloned().unwrap_or_default(),
                        message: format!(
                            "cannot read ({e}); the file may be corrupt: download it again"
                        ),
                    })?;
                Store::Safetensors(st)
            }
        };
        Ok(Self {
            files: files.to_vec(),
            store,
        })
    }

    /// Whether the checkpoint holds a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors(st) => st.get(name).is_ok(),
            Store::Pickle(p) => p.infos.contains_key(name),
        }
    }

    /// Number of tensors in the checkpoint (readable or not).
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Safetensors(st) => st.tensors().len(),
            Store::Pickle(p) => p.infos.len() + p.unsupported.len(),
        }
    }

    /// Whether the checkpoint holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file names, for messages (the caller names the folder).
    fn describe(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| {
                f.file_name()
                    .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into())
            })
            .collect();
        names.join(" + ")
    }

    /// Tensor `name` on `device` in `dtype`, converted from whatever dtype it is stored in.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = match &self.store {
            Store::Safetensors(st) => match st.get(name) {
                Ok(view) => {
                    let stored = view.dtype();
                    st.load(name, device).map_err(|e| {
                        candle_core::Error::Msg(format!(
                            "tensor `{name}` in {} is stored as {stored:?}, which cannot be \
                             read as a weight ({e})",
                            self.describe()
                        ))
                    })?
                }
                Err(_) => return Err(self.missing(name)),
            },
            Store::Pickle(p) => match p.infos.get(name) {
                Some(info) => p.read(info, device)?,
                None => {
                    if let Some(why) = p.unsupported.get(name) {
                        return Err(candle_core::Error::Msg(format!(
                            "tensor `{name}` in {} cannot be read as a weight ({why})",
                            self.describe()
                        )));
                    }
                    return Err(self.missing(name));
                }
            },
        };
        tensor.to_dtype(dtype)
    }

    fn missing(&self, name: &str) -> candle_core::Error {
        candle_core::Error::Msg(format!(
            "tensor `{name}` is missing from {} ({} tensors there); does config.json belong \
             to these weights?",
            self.describe(),
            self.len()
        ))
    }
}

impl candle_nn::var_builder::SimpleBackend for Weights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, device)?;
        if tensor.shape() != &shape {
            candle_core::bail!(
                "tensor `{name}` in {} has shape {:?}, but config.json implies {:?}; does \
                 config.json belong to these weights?",
                self.describe(),
                tensor.dims(),
                shape.dims()
            )
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// A safetensors file must be as long as its header says: a download cut short is named as
/// such, rather than as a corrupt tensor later.
fn check_safetensors(path: &Path) -> Result<()> {
    let bad = |message: String| Error::Weights {
        path: path.into(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading", path, e))?
        .len();
    let truncated = |expected: u64| {
        bad(format!(
            "truncated: the file has {len} bytes but its header describes {expected}; the \
             download was probably cut short: download it again"
        ))
    };
    let mut n = [0u8; 8];
    if len < 8 {
        return Err(truncated(8));
    }
    file.read_exact(&mut n)
        .map_err(|e| Error::io("reading", path, e))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > 100_000_000 {
        return Err(bad(
            "not a safetensors file (its header length is implausible): download it again".into(),
        ));
    }
    if len < 8 + header_len {
        return Err(truncated(8 + header_len));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io("reading", path, e))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| {
        bad(format!(
            "not a safetensors file (unreadable header: {e}): download it again"
        ))
    })?;
    let data_end = header
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0);
    if len < 8 + header_len + data_end {
        return Err(truncated(8 + header_len + data_end));
    }
    Ok(())
}

/// A PyTorch zip archive (`torch.save` of a state dict), indexed once. Unlike candle's own
/// reader, tensors of storage types candle cannot hold (BOOL buffers) are remembered as
/// unreadable instead of being reported on stderr, and fail only if a model asks for them.
struct PthArchive {
    path: PathBuf,
    infos: HashMap<String, TensorInfo>,
    /// Tensor name → why it cannot be read.
    unsupported: HashMap<String, String>,
}

impl PthArchive {
    fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Weights {
            path: path.into(),
            message,
        };
        let mut zip = crate::io::open_zip(path, "PyTorch archive")?;
        let pkl = zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .find(|n| n.ends_with("data.pkl"))
            .ok_or_else(|| bad("no data.pkl inside: not a torch.save archive".into()))?;
        let dir = PathBuf::from(pkl.trim_end_matches(".pkl"));
        let mut stack = Stack::empty();
        {
            let reader = zip
                .by_name(&pkl)
                .map_err(|e| bad(format!("cannot read {pkl} ({e}): download it again")))?;
            stack
                .read_loop(&mut std::io::BufReader::new(reader))
                .map_err(|e| bad(format!("cannot parse {pkl} ({e}): download it again")))?;
        }
        let state = stack
            .finalize()
            .map_err(|e| bad(format!("cannot parse {pkl} ({e})")))?;
        let Object::Dict(entries) = state else {
            return Err(bad(
                "holds no state dict (a dict of tensors at the top level)".into(),
            ));
        };
        let (mut infos, mut unsupported) = (HashMap::new(), HashMap::new());
        for (key, value) in entries {
            let Object::Unicode(name) = key.clone() else {
                continue;
            };
            match value.into_tensor_info(key, &dir) {
                Ok(Some(info)) => {
                    infos.insert(name, info);
                }
                Ok(None) => {}
                Err(e) => {
                    unsupported.insert(name, e.to_string());
                }
            }
        }
        Ok(Self {
            path: path.into(),
            infos,
            unsupported,
        })
    }

    /// Reads one tensor from the archive (contiguous or Fortran-ordered, as torch writes them).
    fn read(&self, info: &TensorInfo, device: &Device) -> candle_core::Result<Tensor> {
        let file = std::fs::File::open(&self.path)?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.path.display())))?;
        let mut reader = zip
            .by_name(&info.path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.path.display())))?;
        let layout = &info.layout;
        let fortran = layout.is_fortran_contiguous() && !layout.is_contiguous();
        if !layout.is_contiguous() && !fortran {
            candle_core::bail!("tensor `{}` is strided, which cannot be read", info.name)
        }
        std::io::copy(
            &mut reader.by_ref().take(layout.start_offset() as u64),
            &mut std::io::sink(),
        )?;
        let dims = layout.dims();
        let mut bytes = vec![0u8; layout.shape().elem_count() * info.dtype.size_in_bytes()];
        reader.read_exact(&mut bytes)?;
        if fortran {
            let reversed: Vec<usize> = dims.iter().rev().copied().collect();
            let t = Tensor::from_raw_buffer(&bytes, info.dtype, &reversed, &Device::Cpu)?;
            let order: Vec<usize> = (0..dims.len()).rev().collect();
            return t.permute(order)?.contiguous()?.to_device(device);
        }
        Tensor::from_raw_buffer(&bytes, info.dtype, dims, &Device::Cpu)?.to_device(device)
    }
}
