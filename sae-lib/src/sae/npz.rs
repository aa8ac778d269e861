//! NumPy's `.npz` archives (a zip of `.npy` files, from `np.savez` or `np.savez_compressed`),
//! as Gemma Scope publishes its SAEs. Each `.npy` is a magic string, a version, a Python dict
//! literal giving `descr` (the dtype), `fortran_order` and `shape`, then the raw array.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Every array in the `.npz` at `path`, by name (the file name less `.npy`), as f32 tensors
/// on `device`. Little-endian floats (`<f2`, `<f4`, `<f8`) in C order are read; anything else
/// is an error naming the array.
pub fn read(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bad = |message: String| Error::Weights {
        path: path.into(),
        message,
    };
    let mut zip = crate::io::open_zip(path, ".npz archive")?;
    let mut arrays = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| bad(format!("cannot read entry {i} ({e})")))?;
        let name = entry
            .name()
            .map_err(|e| bad(format!("entry {i} has no readable name ({e})")))?
            .trim_end_matches(".npy")
            .to_string();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| {
            bad(format!(
                "cannot read `{name}` ({e}); the file may be truncated"
            ))
        })?;
        let tensor = parse_npy(&bytes, device).map_err(|e| bad(format!("`{name}`: {e}")))?;
        arrays.insert(name, tensor);
    }
    Ok(arrays)
}

/// One `.npy` file's array as an f32 tensor.
fn parse_npy(bytes: &[u8], device: &Device) -> std::result::Result<Tensor, String> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or("not a .npy array (no magic string)")?;
    let (header_len, start) = match rest.first() {
        Some(1) if rest.len() >= 4 => (u16::from_le_bytes([rest[2], rest[3]]) as usize, 10),
        Some(2 | 3) if rest.len() >= 6 => (
            u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize,
            12,
        ),
        _ => return Err("unknown .npy version".into()),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("header has no `{key}`"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("unreadable descr")?;
    let shape = field("shape")?;
    let shape = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("unreadable shape")?;
    let shape: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("unreadable shape `{s}`")))
        .collect::<std::result::Result<_, _>>()?;
    let count: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    let width = match descr {
        "<f2" => 2,
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(format!(
                "dtype `{other}` is not supported (little-endian floats)"
            ))
        }
    };
    if data.len() != count * width {
        return Err(format!(
            "{} bytes of data for shape {shape:?} of `{descr}`; the file may be truncated",
            data.len()
        ));
    }
    let values: Vec<f32> = match width {
        2 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        4 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
    };
    Tensor::from_vec(values, shape, device).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_shapes_and_float_widths() {
        let f32s: Vec<u8> = [1f32, -2., 3.5, 0., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = parse_npy(&npy("<f4", "(2, 3)", &f32s), &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [2, 3]);
        assert_eq!(t.to_vec2::<f32>().unwrap()[1], [0., 5., 6.]);
        let f64s: Vec<u8> = [0.25f64, 7.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = parse_npy(&npy("<f8", "(2,)", &f64s), &Device::Cpu).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), [0.25, 7.]);
        let scalar = parse_npy(&npy("<f4", "()", &1.5f32.to_le_bytes()), &Device::Cpu).unwrap();
        assert_eq!(scalar.to_scalar::<f32>().unwrap(), 1.5);
        let msg = parse_npy(&npy("<i8", "(1,)", &[0; 8]), &Device::Cpu).unwrap_err();
        assert!(msg.contains("`<i8`"), "{msg}");
        let msg = parse_npy(&npy("<f4", "(2, 3)", &f32s[..20]), &Device::Cpu).unwrap_err();
        assert!(msg.contains("truncated"), "{msg}");
    }
}
