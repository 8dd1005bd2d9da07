//! The subcommands, one module per concern: `train` (training, progress, checkpoints,
//! Ctrl-C), `report` (bench, scale and tune: measuring and printing tables), `model`
//! (layout, eval, predict and the descent picture). Each turns parsed arguments into calls
//! of the library and prints; errors go back to `main`, which owns the exit code.

pub mod model;
pub mod report;
pub mod train;

/// The plural ending for a count: `format!("{n} step{}", s(n))`.
pub fn s(n: impl TryInto<u64>) -> &'static str {
    match n.try_into() {
        Ok(1) => "",
        _ => "s",
    }
}

/// A loss as the tables print it: four decimals, or exponent form past a million (a
/// diverging run's losses would otherwise print forty digits).
pub fn loss(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{x:.4e}")
    } else {
        format!("{x:.4}")
    }
}
