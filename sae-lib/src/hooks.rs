//! Hook points, named as TransformerLens and SAELens name them (`blocks.5.hook_mlp_out`),
//! and the hook set a forward pass consults: which activations to capture, which to
//! overwrite, and where to stop.
//!
//! The tutorial registers a PyTorch forward hook on `gpt_neox.layers[5].mlp`; here that is
//! `Hooks::new().capture(HookPoint::mlp_out(5)).stop_at(HookPoint::mlp_out(5))`, and the
//! forward returns as soon as the activation exists instead of computing unused logits.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

use crate::{Error, Result};

/// Where in a transformer block an activation is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// The residual stream entering the block.
    ResidPre,
    /// The attention heads' outputs before the output projection, concatenated head by head
    /// (TransformerLens' `attn.hook_z`, flattened as SAELens reads it): `heads · head_dim`
    /// wide, which need not be `d_model`.
    Z,
    /// The attention sublayer's output (after the output projection).
    AttnOut,
    /// The MLP sublayer's output (what the tutorial hooks).
    MlpOut,
    /// The residual stream leaving the block.
    ResidPost,
}

impl HookKind {
    /// The kinds of `d_model` width (all but [`HookKind::Z`]), in the order a block computes
    /// them.
    pub const ALL: [HookKind; 4] = [
        HookKind::ResidPre,
        HookKind::AttnOut,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    /// The TransformerLens suffix (`hook_mlp_out`).
    pub fn name(self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::Z => "attn.hook_z",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::ResidPost => "hook_resid_post",
        }
    }
}

/// A named activation site: `blocks.{layer}.{kind}`. Ordered as the forward pass reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookPoint {
    /// 0-based block index.
    pub layer: usize,
    /// Site within the block.
    pub kind: HookKind,
}

impl HookPoint {
    /// `blocks.{layer}.hook_resid_pre`
    pub fn resid_pre(layer: usize) -> Self {
        Self {
            layer,
            kind: HookKind::ResidPre,
        }
    }
    /// `blocks.{layer}.attn.hook_z`
    pub fn z(layer: usize) -> Self {
        Self {
            layer,
            kind: HookKind::Z,
        }
    }
    /// `blocks.{layer}.hook_attn_out`
    pub fn attn_out(layer: usize) -> Self {
        Self {
            layer,
            kind: HookKind::AttnOut,
        }
    }
    /// `blocks.{layer}.hook_mlp_out`
    pub fn mlp_out(layer: usize) -> Self {
        Self {
            layer,
            kind: HookKind::MlpOut,
        }
    }
    /// `blocks.{layer}.hook_resid_post`
    pub fn resid_post(layer: usize) -> Self {
        Self {
            layer,
            kind: HookKind::ResidPost,
        }
    }

    /// Every hook point of `d_model` width of a model with `n_layers` blocks, in forward
    /// order (all but `attn.hook_z`).
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        (0..n_layers)
            .flat_map(|layer| HookKind::ALL.map(|kind| HookPoint { layer, kind }))
            .collect()
    }

    /// Errors unless this point exists in a model with `n_layers` blocks.
    pub fn check(&self, n_layers: usize) -> Result<()> {
        if self.layer < n_layers {
            return Ok(());
        }
        Err(Error::Hook(format!(
            "hook `{self}` does not exist: this model has {n_layers} layers, so valid hooks are \
             blocks.0 to blocks.{}, each with hook_resid_pre, attn.hook_z, hook_attn_out, \
             hook_mlp_out or hook_resid_post",
            n_layers.saturating_sub(1)
        )))
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.name())
    }
}

impl FromStr for HookPoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Hook(format!(
                "`{s}` is not a hook name: expected `blocks.<layer>.<hook>` with <hook> one of \
                 hook_resid_pre, attn.hook_z, hook_attn_out, hook_mlp_out, hook_resid_post \
                 (for example blocks.5.hook_mlp_out)"
            ))
        };
        let rest = s.trim().strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, kind) = rest.split_once('.').ok_or_else(bad)?;
        let layer = layer.parse().map_err(|_| bad())?;
        let kind = [HookKind::Z]
            .into_iter()
            .chain(HookKind::ALL)
            .find(|k| k.name() == kind)
            .ok_or_else(bad)?;
        Ok(HookPoint { layer, kind })
    }
}

impl serde::Serialize for HookPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HookPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A function that replaces an activation inside the forward pass (an intervention).
pub type WriteHook<'a> = Box<dyn FnMut(&Tensor) -> Result<Tensor> + 'a>;

/// What a forward pass should do at its hook points.
///
/// Captures record the value the forward continues with (after any write hook at the same
/// point), as TransformerLens' cache does.
#[derive(Default)]
pub struct Hooks<'a> {
    captures: Vec<HookPoint>,
    writes: BTreeMap<HookPoint, WriteHook<'a>>,
    stop_at: Option<HookPoint>,
    cache: BTreeMap<HookPoint, Tensor>,
}

impl<'a> Hooks<'a> {
    /// No hooks: a plain forward.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the activation at `point` into the cache.
    pub fn capture(mut self, point: HookPoint) -> Self {
        if !self.captures.contains(&point) {
            self.captures.push(point);
        }
        self
    }

    /// Replace the activation at `point` with `f(activation)`. `f` must keep the shape.
    /// Return a detached tensor unless gradients are wanted: one that records a graph (made
    /// from an SAE's variables, say) sends the rest of the forward through stock ops, which
    /// keep the graph, instead of the CPU's faster kernels.
    pub fn write(
        mut self,
        point: HookPoint,
        f: impl FnMut(&Tensor) -> Result<Tensor> + 'a,
    ) -> Self {
        self.writes.insert(point, Box::new(f));
        self
    }

    /// Stop the forward right after `point` is computed: later layers and the unembedding
    /// are skipped and no logits are returned.
    pub fn stop_at(mut self, point: HookPoint) -> Self {
        self.stop_at = Some(point);
        self
    }

    /// Where the forward stops, if anywhere.
    pub fn stop_point(&self) -> Option<HookPoint> {
        self.stop_at
    }

    /// Errors if any hook names a layer the model does not have.
    pub fn check(&self, n_layers: usize) -> Result<()> {
        self.captures
            .iter()
            .chain(self.writes.keys())
            .chain(self.stop_at.iter())
            .try_for_each(|p| p.check(n_layers))
    }

    /// Called by models at each hook point: applies a write hook, records a capture, and
    /// returns the value the forward continues with.
    pub fn apply(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        let x = match self.writes.get_mut(&point) {
            Some(f) => {
                let y = f(&x)?;
                if y.dims() != x.dims() {
                    return Err(Error::Hook(format!(
                        "write hook at `{point}` returned shape {:?}, expected {:?}",
                        y.dims(),
                        x.dims()
                    )));
                }
                y
            }
            None => x,
        };
        if self.captures.contains(&point) {
            self.cache.insert(point, x.clone());
        }
        Ok(x)
    }

    /// Whether the forward should return after `point`.
    pub fn should_stop(&self, point: HookPoint) -> bool {
        self.stop_at == Some(point)
    }

    /// The captured activation at `point`, shape `(batch, seq, d_model)`.
    pub fn get(&self, point: HookPoint) -> Option<&Tensor> {
        self.cache.get(&point)
    }

    /// Take the captured activation at `point` out of the cache.
    pub fn take(&mut self, point: HookPoint) -> Result<Tensor> {
        self.cache.remove(&point).ok_or_else(|| {
            Error::Hook(format!(
                "`{point}` was not captured: add it with Hooks::capture"
            ))
        })
    }

    /// All captured activations.
    pub fn cache(&self) -> &BTreeMap<HookPoint, Tensor> {
        &self.cache
    }
}

/// Inside a model's forward (returning `Result<Option<Tensor>>`): runs the hooks at `$point`
/// on `$x` and evaluates to the value to continue with, or returns `Ok(None)` from the
/// enclosing function if the hook set stops there.
macro_rules! hook {
    ($hooks:expr, $point:expr, $x:expr) => {{
        let point = $point;
        let x = $hooks.apply(point, $x)?;
        if $hooks.should_stop(point) {
            return Ok(None);
        }
        x
    }};
}
pub(crate) use hook;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in HookPoint::all(3).into_iter().chain([HookPoint::z(2)]) {
            assert_eq!(p.to_string().parse::<HookPoint>().unwrap(), p);
        }
        assert_eq!(HookPoint::z(2).to_string(), "blocks.2.attn.hook_z");
        assert!(HookPoint::z(2) < HookPoint::attn_out(2));
        assert_eq!(
            "blocks.5.hook_mlp_out".parse::<HookPoint>().unwrap(),
            HookPoint::mlp_out(5)
        );
    }

    #[test]
    fn bad_names_are_explained() {
        for bad in [
            "blocks.5.mlp",
            "layers.5.hook_mlp_out",
            "blocks.x.hook_mlp_out",
            "",
            "blocks.5.hook_mlp_out.x",
        ] {
            let msg = bad.parse::<HookPoint>().unwrap_err().to_string();
            assert!(msg.contains("blocks.5.hook_mlp_out"), "{msg}");
        }
    }

    #[test]
    fn out_of_range_layer_names_valid_range() {
        let msg = HookPoint::mlp_out(6).check(6).unwrap_err().to_string();
        assert!(msg.contains("blocks.6.hook_mlp_out"), "{msg}");
        assert!(
            msg.contains("6 layers") && msg.contains("blocks.0 to blocks.5"),
            "{msg}"
        );
        assert!(HookPoint::mlp_out(5).check(6).is_ok());
    }

    #[test]
    fn forward_order() {
        assert!(HookPoint::resid_post(0) < HookPoint::resid_pre(1));
        assert!(HookPoint::attn_out(2) < HookPoint::mlp_out(2));
    }
}
