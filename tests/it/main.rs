//! The integration tests, one module per concern.

/// Shared helpers: configs from text, seeded datasets, the f64 reference model.
mod common;

/// Built-in models' gradients against f64 central finite differences, extreme logits too.
mod gradcheck;

/// The mini-batch gradient's mean over all C(8, 3) batches is the full gradient.
mod unbiased;

/// The fixed reduction tree: rounding bound and thread-count independence.
mod reduce;

/// Byte-identical saved parameters for 1, 2, 3, 4 and 8 threads, through the binary.
mod determinism;

/// Shuffled epochs, drop_last, uniform draws, B = 1 and B = N.
mod sampling;

/// Full-batch descent reaches least squares; one step is exactly theta - lr g_B.
mod convergence;

/// Each optimizer against closed forms and an f64 transcription of PyTorch's rules; the
/// parameters and its state on cache lines, also after a restore.
mod optim;

/// Learning-rate schedules at chosen steps; epochs to steps; batch-size scaling.
mod schedule;

/// --trace, --profile and scale: trace-event JSON, phases adding up, Karp-Flatt in the CSV.
mod profile;

/// The gradient noise scale estimator against the exact value on linear regression.
mod noise;

/// tune end to end: CSV, SVG, and a recommendation consistent with its own table.
mod tune;

/// descent: engine paths vs plain gradient descent, unbiased B = 1 steps, the SVG.
mod descent;

/// descent.html in headless Chromium: slider and Refresh redraw, no page errors.
mod browser;

/// Across ranks (threads standing in for MPI): exact bits for any rank count, agreed stops.
mod cluster;

/// Checkpoints: byte-identical resume for every optimizer, SIGKILL safety, Ctrl-C, bad files.
mod resume;

/// eval and predict reproduce what the trainer computed before saving.
mod evaluate;

/// Data files: CSV, LIBSVM and .npy agree; every malformed file names file, line, column.
mod files;

/// The binary: each bad input gets its message and exit code 2; --help explains.
mod cli;
