//! Pure schedules: the sparsity coefficient's warm-up and the learning rate's decay.

/// Linear warm-up of the sparsity coefficient from 0 over the first `warmup_frac` of training
/// (Anthropic, April 2024: 5%), then constant.
pub fn sparsity_coefficient(step: u64, total: u64, target: f64, warmup_frac: f64) -> f64 {
    let warmup = (total as f64 * warmup_frac).round();
    if warmup <= 0.0 {
        target
    } else {
        target * ((step + 1) as f64 / warmup).min(1.0)
    }
}

/// Constant learning rate, then a linear decay to 0 over the last `decay_frac` of training
/// (Anthropic, April 2024: 20%).
pub fn learning_rate(step: u64, total: u64, lr: f64, decay_frac: f64) -> f64 {
    let decay = (total as f64 * decay_frac).round();
    let decay_start = total as f64 - decay;
    if decay <= 0.0 || (step as f64) < decay_start {
        lr
    } else {
        lr * ((total as f64 - step as f64) / decay).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_and_decay_shapes() {
        assert!(sparsity_coefficient(0, 1000, 5.0, 0.05) < 0.2);
        assert_eq!(sparsity_coefficient(49, 1000, 5.0, 0.05), 5.0);
        assert_eq!(sparsity_coefficient(500, 1000, 5.0, 0.05), 5.0);
        assert_eq!(sparsity_coefficient(0, 1000, 5.0, 0.0), 5.0);
        assert_eq!(learning_rate(0, 1000, 1e-3, 0.2), 1e-3);
        assert_eq!(learning_rate(799, 1000, 1e-3, 0.2), 1e-3);
        assert!((learning_rate(900, 1000, 1e-3, 0.2) - 5e-4).abs() < 1e-12);
        assert!(learning_rate(999, 1000, 1e-3, 0.2) < 1e-5);
    }
}
