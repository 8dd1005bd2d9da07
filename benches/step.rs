//! Criterion benches of the step's pieces per standard workload: one shard's forward and
//! backward, a group of shards in one pass, the weights' packing (`prepare`), the
//! reduction, the update, and a whole step; and (`matmul`) the matrix kernel on the W1
//! shapes. Throughput is in examples, so the
//! reports read as examples/s. For ratios against the machine's limits use `minibatch bench`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use minibatch::model::Model;
use minibatch::optim::Optimizer;
use minibatch::reduce::tree_reduce;
use minibatch::{Mlp, RawConfig, Trainer, data};
use ndarray::Array2;

/// The workloads at bench size: (name, config, batch sizes).
const WORKLOADS: &[(&str, &str, &[usize])] = &[
    (
        "w1_mlp",
        "[data]\nsynthetic = \"teacher\"\nn = 8192\n[model]\nhidden = [256, 256]\n[train]\nlr = 0.05\n",
        &[32, 512, 2048],
    ),
    (
        "w2_logreg",
        "[data]\nsynthetic = \"logistic\"\nn = 16384\n[train]\nlr = 0.1\n",
        &[256, 4096],
    ),
    (
        "w3_sgd1",
        "[data]\nsynthetic = \"linear\"\nn = 4096\n[train]\nlr = 0.01\n",
        &[1],
    ),
];

fn benches(c: &mut Criterion) {
    for &(name, toml_text, batch_sizes) in WORKLOADS {
        let mut group = c.benchmark_group(name);
        for &batch_size in batch_sizes {
            let mut raw = RawConfig::from_toml(toml_text, std::path::Path::new(name))
                .expect("bench config parses");
            raw.train.batch_size = Some(batch_size);
            let cfg = raw.validate().expect("bench config is valid");
            let model = Mlp::new(cfg.model.clone());
            let n_params = model.layout().n_params();
            let (train, _) = data::synthetic(&cfg.data, cfg.seed);
            group.throughput(Throughput::Elements(batch_size as u64));

            let rows = cfg.train.shard_rows.get().min(batch_size);
            let mut params = vec![0.0f32; n_params];
            model.init(&mut params, &mut rand::SeedableRng::seed_from_u64(1));
            let mut ws = model.workspace(rows);
            let mut shared = model.shared();
            let usage = minibatch::model::Usage {
                parallel: true,
                rows,
                readers: 1,
            };
            model.prepare(&params, &mut shared, usage);
            let mut grad = vec![0.0f32; n_params];
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_function(BenchmarkId::new("shard_fwd_bwd", rows), |b| {
                b.iter(|| {
                    grad.fill(0.0);
                    black_box(model.loss_grad_sum(
                        &params,
                        &shared,
                        train.rows(0..rows),
                        &mut ws,
                        &mut grad,
                    ))
                })
            });

            // A group of shards as one task (`Model::loss_grad_group`, the group a step on
            // one thread runs): per row against `shard_fwd_bwd`, what passing the group's
            // rows at once and summing its weight gradients tile by tile saves.
            let n_shards = minibatch::shard::n_shards(batch_size, cfg.train.shard_rows);
            let group_shards = minibatch::shard::group_size(n_shards, rows, 1);
            let group_rows = (group_shards * rows).min(batch_size).min(train.n());
            let mut group_ws = model.workspace(group_rows);
            let mut group_grads = Array2::<f32>::zeros((group_shards, n_params));
            let mut stats = vec![minibatch::Stats::default(); group_rows.div_ceil(rows)];
            // Prepared for the group's rows, as the trainer prepares for a step of groups.
            let mut group_shared = model.shared();
            let group_usage = minibatch::model::Usage {
                rows: group_rows,
                ..usage
            };
            model.prepare(&params, &mut group_shared, group_usage);
            group.throughput(Throughput::Elements(group_rows as u64));
            // Named by the group's shards and their rows: B = 512 and 2048 both pass 512 rows.
            let group_id = format!("{}x{rows}", group_rows.div_ceil(rows));
            group.bench_function(BenchmarkId::new("group_fwd_bwd", group_id), |b| {
                b.iter(|| {
                    model.loss_grad_group(
                        &params,
                        &group_shared,
                        train.rows(0..group_rows),
                        rows,
                        &mut group_ws,
                        group_grads.view_mut(),
                        &mut stats,
                    );
                    black_box(&stats);
                })
            });

            // Packing the weights once per step for every shard (W1: a separate phase of
            // the step, `prepare` in `train --profile`), one copy: the trainer's 2-thread
            // steps also copy them for the second thread.
            group.bench_function(BenchmarkId::new("prepare", rows), |b| {
                b.iter(|| model.prepare(black_box(&params), &mut shared, usage))
            });

            group.throughput(Throughput::Elements(batch_size as u64));
            let mut grads = Array2::<f32>::ones((n_shards, n_params));
            group.bench_function(BenchmarkId::new("reduce", batch_size), |b| {
                b.iter(|| tree_reduce(black_box(grads.view_mut()), n_shards))
            });

            let mut optimizer = Optimizer::new(cfg.train.optimizer, n_params);
            group.bench_function(BenchmarkId::new("update", batch_size), |b| {
                b.iter(|| optimizer.step(black_box(&mut params), &grad, batch_size, 1e-6))
            });

            let mut trainer =
                Trainer::new(model.clone(), cfg.data.d, &cfg.train, cfg.seed).expect("trainer");
            let idx: Vec<usize> = (0..batch_size).map(|i| (i * 7919) % train.n()).collect();
            group.bench_function(BenchmarkId::new("step", batch_size), |b| {
                b.iter(|| trainer.step(&train, &idx, 1e-6).expect("step"))
            });
        }
        group.finish();
    }
}

/// The matrix-multiply decision: our packed AVX-512 kernel (weights packed once, as the
/// trainer does) against ndarray's `general_mat_mul` (the matrixmultiply crate, with its
/// AVX-512 kernel enabled) on the W1 layer shapes, one thread; then the backward products
/// of a shard, and every product of a 512-row group. Throughput is in flops: the reports
/// read as GFLOP/s.
fn matmul(c: &mut Criterion) {
    use minibatch::model::gemm::{
        Accumulate, GemmScratch, PackedB, gemm, gemm_packed, gemm_segments,
    };
    let mut group = c.benchmark_group("matmul");
    // First the microkernel alone: one 8 x 32 tile over 256 steps, every operand in L1.
    for &(m, k, n) in &[
        (8, 256, 32),
        (64, 784, 256),
        (256, 784, 256),
        (256, 256, 256),
        (784, 256, 256),
    ] {
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.1);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i + j * 3) % 11) as f32 * 0.1);
        let mut out = Array2::<f32>::zeros((m, n));
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let mut packed = PackedB::default();
        packed.pack(b.view(), true, false, 1);
        let mut scratch = GemmScratch::default();
        let shape = format!("{m}x{k}x{n}");
        group.bench_function(BenchmarkId::new("own_packed", &shape), |bench| {
            bench.iter(|| {
                gemm_packed(
                    a.view(),
                    &packed,
                    b.view(),
                    out.view_mut(),
                    Accumulate::Overwrite,
                    &mut scratch,
                )
            })
        });
        group.bench_function(
            BenchmarkId::new("ndarray_general_mat_mul", &shape),
            |bench| bench.iter(|| ndarray::linalg::general_mat_mul(1.0, &a, &b, 0.0, &mut out)),
        );
    }
    // The backward products of a 64-row shard, as the model calls them: the weight gradient
    // x^T dz (A transposed: packed; B = dz: packed, past 32 k-steps) and the input gradient
    // dz w^T (w^T packed once per step).
    let rows = 64;
    for &(d_in, d_out) in &[(784, 256), (256, 256)] {
        let x = Array2::from_shape_fn((rows, d_in), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.1);
        let dz = Array2::from_shape_fn((rows, d_out), |(i, j)| ((i + j * 3) % 11) as f32 * 0.1);
        let w = Array2::from_shape_fn((d_in, d_out), |(i, j)| ((i * 5 + j) % 7) as f32 * 0.1);
        let mut gw = Array2::<f32>::zeros((d_in, d_out));
        let mut dx = Array2::<f32>::zeros((rows, d_in));
        let mut wt = PackedB::default();
        wt.pack(w.t(), true, false, 1);
        let mut scratch = GemmScratch::default();
        group.throughput(Throughput::Elements((2 * rows * d_in * d_out) as u64));
        let shape = format!("{d_in}x{rows}x{d_out}");
        group.bench_function(BenchmarkId::new("weight_grad", &shape), |bench| {
            bench.iter(|| {
                gemm(
                    x.t(),
                    dz.view(),
                    gw.view_mut(),
                    Accumulate::Overwrite,
                    &mut scratch,
                )
            })
        });
        let shape = format!("{rows}x{d_out}x{d_in}");
        group.bench_function(BenchmarkId::new("input_grad", &shape), |bench| {
            bench.iter(|| {
                gemm_packed(
                    dz.view(),
                    &wt,
                    w.t(),
                    dx.view_mut(),
                    Accumulate::Overwrite,
                    &mut scratch,
                )
            })
        });
    }
    // A 512-row group's products (B = 512 on one thread), each alone: the forward products
    // with the weights packed ahead, and the weight gradients x^T dz in segments of 64 rows
    // (one shard each, summed in the tree's order) or as one sum, which shows what the
    // segments cost. The head (10 columns) runs on the narrow tile.
    let rows = 512;
    for &(d_in, d_out) in &[(784, 256), (256, 256), (256, 10)] {
        let x = Array2::from_shape_fn((rows, d_in), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.1);
        let dz = Array2::from_shape_fn((rows, d_out), |(i, j)| ((i + j * 3) % 11) as f32 * 0.1);
        let w = Array2::from_shape_fn((d_in, d_out), |(i, j)| ((i * 5 + j) % 7) as f32 * 0.1);
        let mut z = Array2::<f32>::zeros((rows, d_out));
        let mut gw = Array2::<f32>::zeros((d_in, d_out));
        let mut packed = PackedB::default();
        packed.pack(w.view(), false, false, 1);
        let mut scratch = GemmScratch::default();
        group.throughput(Throughput::Elements((2 * rows * d_in * d_out) as u64));
        let shape = format!("{rows}x{d_in}x{d_out}");
        group.bench_function(BenchmarkId::new("group_forward", &shape), |bench| {
            bench.iter(|| {
                gemm_packed(
                    x.view(),
                    &packed,
                    w.view(),
                    z.view_mut(),
                    Accumulate::Overwrite,
                    &mut scratch,
                )
            })
        });
        let shape = format!("{d_in}x{rows}x{d_out}");
        for (name, seg) in [
            ("group_weight_grad_seg64", 64),
            ("group_weight_grad_whole", rows),
        ] {
            group.bench_function(BenchmarkId::new(name, &shape), |bench| {
                bench.iter(|| {
                    gemm_segments(
                        x.t(),
                        dz.view(),
                        gw.view_mut(),
                        Accumulate::Overwrite,
                        seg,
                        &mut scratch,
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(step, benches, matmul);
criterion_main!(step);
