//! How good a model is on a dataset: mean loss, and accuracy with a confusion matrix for
//! classifiers, or mean squared error and R^2 for regression. Used by `minibatch eval` and
//! `predict`; not on the training path.

use ndarray::ArrayView2;
use serde::Serialize;

use crate::model::{Head, argmax, log_sum_exp, softplus};

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub rows: usize,
    pub mean_loss: f64,
    /// Classifiers: fraction of rows whose predicted class is the target.
    pub accuracy: Option<f64>,
    /// Classifiers: `confusion[t][p]` rows of class t predicted as p.
    pub confusion: Option<Vec<Vec<u64>>>,
    /// Regression: mean squared error and the coefficient of determination.
    pub mse: Option<f64>,
    pub r2: Option<f64>,
}

/// The predicted class of one row of head outputs.
pub fn predicted_class(head: Head, z: &[f32]) -> usize {
    match head {
        Head::Logistic => usize::from(z[0] > 0.0),
        _ => argmax(z),
    }
}

/// Metrics of a model with this `head` from its `outputs` (a row per target).
pub fn evaluate(head: Head, outputs: ArrayView2<f32>, targets: &[f32]) -> Metrics {
    let n = targets.len();
    let mut loss = 0.0f64;
    let mut metrics = Metrics {
        rows: n,
        mean_loss: 0.0,
        accuracy: None,
        confusion: None,
        mse: None,
        r2: None,
    };
    match head {
        Head::Mse => {
            let mean_y = targets.iter().map(|&y| f64::from(y)).sum::<f64>() / n.max(1) as f64;
            let (mut sse, mut sst) = (0.0, 0.0);
            for (z, &y) in outputs.column(0).iter().zip(targets) {
                sse += (f64::from(*z) - f64::from(y)).powi(2);
                sst += (f64::from(y) - mean_y).powi(2);
            }
            loss = sse;
            metrics.mse = Some(sse / n.max(1) as f64);
            metrics.r2 = Some(if sst > 0.0 { 1.0 - sse / sst } else { f64::NAN });
        }
        Head::Logistic | Head::Softmax { .. } => {
            let k = head.n_classes().expect("a classifier head");
            let mut confusion = vec![vec![0u64; k]; k];
            for (z, &y) in outputs.rows().into_iter().zip(targets) {
                let z = z.as_slice().expect("row-major");
                let class = y as usize;
                loss += f64::from(match head {
                    Head::Logistic => softplus(z[0]) - y * z[0],
                    _ => log_sum_exp(ndarray::ArrayView1::from(z)) - z[class],
                });
                confusion[class][predicted_class(head, z)] += 1;
            }
            let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
            metrics.accuracy = Some(correct as f64 / n.max(1) as f64);
            metrics.confusion = Some(confusion);
        }
    }
    metrics.mean_loss = loss / n.max(1) as f64;
    metrics
}
