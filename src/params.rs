//! Where every tensor lives in the flat parameter buffer.
//!
//! Parameters, gradients and optimizer state are each one contiguous `Vec<f32>` of
//! `n_params` elements, so that the reduction, the update and a checkpoint each work on one
//! slice. `ParamLayout` is the single place that knows the name, shape and offset of each
//! tensor inside such a buffer; models ask it for views. The order of tensors is fixed by the
//! order of `push` calls and is part of the saved format.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

/// One tensor of the layout: `shape` is row-major, `offset` counts f32 elements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    pub name: String,
    /// Private, with `len`, which is its product: an entry is made by `ParamLayout::push`.
    shape: Vec<usize>,
    pub offset: usize,
    /// The product of `shape`, kept: a B = 1 step of a small model asks for its slices every
    /// step, and the product's chain of multiplies was a tenth of the model's share of W3.
    len: usize,
}

impl ParamEntry {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Index of a tensor in its layout, handed out by `push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamId(usize);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    n_params: usize,
}

impl ParamLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a tensor after the last one; the only way to add one.
    pub fn push(&mut self, name: &str, shape: &[usize]) -> ParamId {
        let entry = ParamEntry {
            name: name.to_string(),
            shape: shape.to_vec(),
            offset: self.n_params,
            len: shape.iter().product(),
        };
        self.n_params += entry.len();
        self.entries.push(entry);
        ParamId(self.entries.len() - 1)
    }

    pub fn n_params(&self) -> usize {
        self.n_params
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn entry(&self, id: ParamId) -> &ParamEntry {
        &self.entries[id.0]
    }

    pub fn slice<'a>(&self, id: ParamId, flat: &'a [f32]) -> &'a [f32] {
        &flat[self.entry(id).range()]
    }

    pub fn slice_mut<'a>(&self, id: ParamId, flat: &'a mut [f32]) -> &'a mut [f32] {
        &mut flat[self.entry(id).range()]
    }

    /// A 2-D tensor as a `(rows, cols)` view.
    pub fn matrix<'a>(&self, id: ParamId, flat: &'a [f32]) -> ArrayView2<'a, f32> {
        let e = self.entry(id);
        assert_eq!(e.shape().len(), 2, "`{}` is not a matrix", e.name);
        ArrayView2::from_shape((e.shape()[0], e.shape()[1]), &flat[e.range()])
            .expect("layout shape matches its range")
    }

    pub fn vector<'a>(&self, id: ParamId, flat: &'a [f32]) -> ArrayView1<'a, f32> {
        ArrayView1::from(self.slice(id, flat))
    }

    /// Mutable views of a weight and its bias at once. They are adjacent in every layout the
    /// crate builds, but any weight laid out before its bias works: the buffer is split
    /// between them.
    pub fn linear_mut<'a>(
        &self,
        w: ParamId,
        b: ParamId,
        flat: &'a mut [f32],
    ) -> (ArrayViewMut2<'a, f32>, ArrayViewMut1<'a, f32>) {
        let (ew, eb) = (self.entry(w), self.entry(b));
        assert!(
            ew.offset + ew.len() <= eb.offset,
            "weight must precede its bias"
        );
        let (head, tail) = flat.split_at_mut(eb.offset);
        let w_view = ArrayViewMut2::from_shape((ew.shape[0], ew.shape[1]), &mut head[ew.range()])
            .expect("layout shape matches its range");
        let b_view = ArrayViewMut1::from(&mut tail[..eb.len()]);
        (w_view, b_view)
    }

    /// One line per tensor, for error messages about a file's tensors.
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("{} {:?} at {}", e.name, e.shape(), e.offset))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_push_order_without_gaps() {
        let mut layout = ParamLayout::new();
        let w = layout.push("w1", &[3, 4]);
        let b = layout.push("b1", &[4]);
        let w2 = layout.push("w2", &[4, 2]);
        assert_eq!(layout.entry(w).offset, 0);
        assert_eq!(layout.entry(b).offset, 12);
        assert_eq!(layout.entry(w2).offset, 16);
        assert_eq!(layout.n_params(), 24);
    }

    #[test]
    fn linear_mut_views_the_right_elements() {
        let mut layout = ParamLayout::new();
        let w = layout.push("w", &[2, 3]);
        let b = layout.push("b", &[3]);
        let mut flat: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let (wv, bv) = layout.linear_mut(w, b, &mut flat);
        assert_eq!(wv[[1, 2]], 5.0);
        assert_eq!(bv[0], 6.0);
    }
}
