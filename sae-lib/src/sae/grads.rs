//! The training step's backward pass, with the sparse ops' weight gradients handed straight to
//! the gradient store.
//!
//! candle's backward adds every gradient an op returns into the store's entry for that
//! argument, creating the entry as zeros first: for `W_enc` and `W_dec` at 4,096 × 576 that is
//! a 9.4 MB zero-fill and a 28 MB add per matrix per step, mostly on the calling thread (about
//! 6 ms of a 90 ms sparse ReLU step at L0 400). A variable's gradient needs neither: inside
//! [`backward`], the sparse ops (`weight_grad`) set it aside and it is put in the store as
//! it is (added to what other ops gave the same variable, if any). `x + 0 = x` and addition
//! commutes, so where at most two ops give a variable its gradient the store holds the same
//! bits as plain `Tensor::backward`'s; with more, the same terms may be added in another order.

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::Result;

thread_local! {
    /// The gradients set aside during [`backward`] on this thread (candle's backward runs the
    /// ops' `bwd` on the thread that called it); `None` outside it.
    static ASIDE: RefCell<Option<Vec<(Tensor, Tensor)>>> = const { RefCell::new(None) };
}

/// `loss.backward()`, with the weight gradients of the sparse ops put in the store directly.
pub fn backward(loss: &Tensor) -> Result<GradStore> {
    ASIDE.with(|a| *a.borrow_mut() = Some(Vec::new()));
    let grads = loss.backward();
    let aside = ASIDE.with(|a| a.borrow_mut().take()).unwrap_or_default();
    let mut grads = grads?;
    for (var, g) in aside {
        let g = match grads.remove(&var) {
            Some(other) => (other + g)?,
            None => g,
        };
        grads.insert(&var, g);
    }
    Ok(grads)
}

/// What a sparse op's `bwd` returns for its weight argument `w` with gradient `g`: `None`
/// when `w` is a variable and [`backward`] is running (`g` is then set aside for the store),
/// else `g`, for candle to add.
pub(super) fn weight_grad(w: &Tensor, g: Tensor) -> Option<Tensor> {
    if !w.is_variable() {
        return Some(g);
    }
    ASIDE.with(|a| match a.borrow_mut().as_mut() {
        Some(aside) => {
            aside.push((w.clone(), g));
            None
        }
        None => Some(g),
    })
}

#[cfg(test)]
mod tests {
    use super::super::common::row_norms;
    use super::super::sparse::{decode_rows, gather_pre_acts};
    use super::*;
    use candle_core::{Device, Var};

    /// Through the sparse encoder and decoder, with `W_dec` also under a row-norm penalty (two
    /// ops give it a gradient) and `W_encᵀ` behind a non-variable copy: the same gradients,
    /// bit for bit, as candle's own backward.
    #[test]
    fn direct_gradients_equal_candles_accumulated_ones() {
        let dev = Device::Cpu;
        let (b, d_in, d_sae, k) = (9, 12, 40, 5);
        let w_t = Var::from_tensor(&Tensor::randn(0f32, 1., (d_sae, d_in), &dev).unwrap()).unwrap();
        let w_dec =
            Var::from_tensor(&Tensor::randn(0f32, 1., (d_sae, d_in), &dev).unwrap()).unwrap();
        let b_enc = Var::from_tensor(&Tensor::randn(0f32, 1., d_sae, &dev).unwrap()).unwrap();
        let b_dec = Var::from_tensor(&Tensor::randn(0f32, 1., d_in, &dev).unwrap()).unwrap();
        let x = Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap();
        let idx: Vec<u32> = (0..b * k)
            .map(|p| ((p * 7 + p / k) % d_sae) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, (b, k), &dev).unwrap();
        let loss = |copied: bool| {
            let w = match copied {
                true => (w_t.as_tensor() * 1.0).unwrap(),
                false => w_t.as_tensor().clone(),
            };
            let pre = gather_pre_acts(&x, &w, &b_enc, Some(&b_dec), &idx, None).unwrap();
            let out = decode_rows(&pre.relu().unwrap(), &idx, w_dec.as_tensor(), false).unwrap();
            let norms = row_norms(w_dec.as_tensor()).unwrap().sum_all().unwrap();
            ((out - &x).unwrap().sqr().unwrap().sum_all().unwrap() + norms).unwrap()
        };
        for copied in [false, true] {
            let (direct, plain) = (backward(&loss(copied)).unwrap(), loss(copied).backward());
            let plain = plain.unwrap();
            for v in [&w_t, &w_dec, &b_enc, &b_dec] {
                let get = |g: &GradStore| {
                    let g = g.get(v.as_tensor()).expect("a gradient");
                    g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                };
                let (a, e) = (get(&direct), get(&plain));
                assert!(e.iter().any(|&v| v != 0.0));
                assert_eq!(a, e, "copied = {copied}");
            }
        }
        assert!(ASIDE.with(|a| a.borrow().is_none()));
    }
}
