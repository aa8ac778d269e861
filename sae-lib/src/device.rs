//! Device choice, as the tutorial does it: an accelerator when there is one, else the CPU.

use candle_core::Device;

use crate::{Error, Result};

/// CUDA (when built with `--features cuda` and a GPU is present), else Metal (`--features
/// metal` on a Mac), else the CPU.
pub fn best_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if candle_core::utils::metal_is_available() {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| Error::Input(format!("bad device ordinal in `{name}`")))?,
        ),
        None => (name, 0),
    };
    let unavailable = |what: &str, feature: &str| {
        let hint = match feature {
            "cuda" if cfg!(feature = "cuda") => "is the NVIDIA driver loaded? see `nvidia-smi`",
            "metal" if cfg!(feature = "metal") => "this Mac has no Metal device",
            _ => "build sae-lib with `--features {feature}`",
        }
        .replace("{feature}", feature);
        Error::Input(format!(
            "device `{name}` is not available: {what} ({hint}), or use --device cpu"
        ))
    };
    match kind {
        "auto" => Ok(best_device()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(ordinal).map_err(|_| unavailable("no CUDA GPU found", "cuda")),
        "metal" => {
            Device::new_metal(ordinal).map_err(|_| unavailable("no Metal GPU found", "metal"))
        }
        _ => Err(Error::Input(format!(
            "unknown device `{name}`: use auto, cpu, cuda, cuda:N, metal or metal:N"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("gpu")
            .unwrap_err()
            .to_string()
            .contains("unknown device"));
        assert!(parse_device("cuda:x").is_err());
        if !candle_core::utils::cuda_is_available() {
            assert!(parse_device("cuda")
                .unwrap_err()
                .to_string()
                .contains("--device cpu"));
            assert!(best_device().is_cpu() || best_device().is_metal());
        }
    }
}
