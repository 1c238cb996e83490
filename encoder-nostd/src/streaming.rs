//! The streaming int8 encoder: the wedge arrives one drift-time (z) slice at a time, every layer
//! keeps only the z-columns its kernel still needs (ring-indexed line buffers), and each code
//! slice leaves as soon as its receptive field is complete. Bit-identical to
//! [`crate::encoder::Encoder`] (same integer arithmetic; integer sums do not depend on order).
//!
//! ```text
//! let encoder = StreamEncoder::parse(WEIGHTS)?;
//! let mut scratch = [0i8; SCRATCH];                       // at least encoder.scratch_bytes()
//! let mut stream = encoder.begin(&mut scratch)?;
//! for z in 0..249 {                                       // one slice: 192 azimuth x 16 layers u16
//!     stream.push(&slice[z], &mut |o, code_slice| send(o, code_slice))?;
//! }                                                       // the last push emits the last code slice
//! ```
//!
//! # Why the z (drift-time) axis
//!
//! - A TPC digitises every pad at each drift-time bin, so z is the order in which a front end
//!   produces a wedge: streaming along z is what removes the wedge of buffering and of latency.
//!   A z slice is the 192 x 16 pads of one time bin (on-disk order with z removed: azimuth,
//!   layer; layer fastest).
//! - z is the networks' widest axis (256 after padding, vs 192 azimuth and 16 layers), so a line
//!   (a z-column of a tensor: channels x layers x azimuth) is the smallest cross-section, and z is
//!   never reduced by a layer with a kernel wider than 7, so every ring stays a few columns deep.
//! - Inside a column the kernels run along azimuth (contiguous, de-interleaved once per input
//!   row when the stride is 2), so the inner loops vectorise as the whole-wedge kernels' do.
//!
//! # Memory
//!
//! Every tensor of the network is a ring of z-columns, laid out `[slot][c][d][h]`; a ring has as
//! many slots as the schedule ever needs at once, found by running the schedule once without data
//! when the weights are parsed ([`StreamEncoder::scratch_bytes`] is that exact figure). Figures for
//! the shipped shapes are in the tests and in `firmware-sim bench`.
//!
//! # Schedule
//!
//! Stages (a convolution; a convolution followed by its residual add; a 2x2 average pooling) run
//! in network order, round-robin, one output column at a time, while any of them can run: a stage
//! runs once the last input column its kernel reaches (or the tensor's last column) has been
//! written and, for an add, once the skip column exists. z positions 249..255 (the networks'
//! padding, ADC 0) are fed by the encoder itself after the last slice.
use crate::encoder::EncodeError;
use crate::encoder::Encoder;
use crate::error::{internal, Error};
use crate::geometry::{AZIMUTH, LAYERS, Z_BINS, Z_PADDED};
use crate::kernels::{
    add_in_place, add_tap_pairs, conv_output_shape, gather_nonzero, requantize, simd_kernel,
    SPARSE_DENSITY,
};
use crate::topology::{LayerId, LayerOp, Op as TopoOp, Source, Topology, MAX_LAYERS};
use crate::weights::{le_i32, Add, Conv, Shape, MAX_ROW};

/// Most rings (tensors) and stages a network may have (BCAE-2D with 8 blocks needs 42 and 41).
const MAX_NODES: usize = 48;
/// Most kernel taps along z (BCAE-2D's input conv has 7).
pub const MAX_Z_TAPS: usize = 8;
/// Most kernel taps along azimuth.
const MAX_H_TAPS: usize = 8;
/// Accumulators of one column conv (a group of output channels' azimuth rows), on the stack.
const ACC_LEN: usize = 1024;
/// Output channels per group of the sparse path (one i32 vector of channel-last accumulators).
const SPARSE_LANES: usize = 8;
/// ADC samples in one z slice (192 azimuth x 16 layers).
pub const SLICE_SAMPLES: usize = AZIMUTH * LAYERS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `dst = conv(src)`.
    Conv {
        layer: LayerId,
        src: usize,
        dst: usize,
    },
    /// `dst = add(a = conv(src), b = skip)`, the conv's column held in the shared temporary.
    ConvAdd {
        layer: LayerId,
        add: LayerId,
        src: usize,
        skip: usize,
        dst: usize,
    },
    /// `dst = avg_pool_2x2(src)` over (azimuth, z).
    Pool { src: usize, dst: usize },
}

impl Op {
    fn dst(&self) -> usize {
        match *self {
            Op::Conv { dst, .. } | Op::ConvAdd { dst, .. } | Op::Pool { dst, .. } => dst,
        }
    }
}

/// One tensor as a ring of z-columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ring {
    /// The whole tensor's shape; `w` is its number of z-columns.
    shape: Shape,
    slots: usize,
    offset: usize,
}

impl Ring {
    fn col_len(&self) -> usize {
        self.shape.c * self.shape.d * self.shape.h
    }
}

/// The network as rings and stages, with the scratch layout.
#[derive(Debug, Clone)]
struct Plan {
    rings: heapless::Vec<Ring, MAX_NODES>,
    stages: heapless::Vec<Op, MAX_NODES>,
    /// The code's ring (one slot: each code column is handed out as soon as it is written).
    code: usize,
    /// The shared temporary column of [`Op::ConvAdd`].
    tmp_offset: usize,
    tmp_len: usize,
    scratch: usize,
}

/// Progress through one wedge.
#[derive(Debug, Clone, Copy)]
struct Counters {
    /// Columns written per ring.
    written: [usize; MAX_NODES],
    /// Next output column per stage.
    next: [usize; MAX_NODES],
}

impl Counters {
    const fn new() -> Self {
        Counters {
            written: [0; MAX_NODES],
            next: [0; MAX_NODES],
        }
    }
}

/// A parsed, validated streaming int8 encoder borrowing its weights.
#[derive(Debug, Clone)]
pub struct StreamEncoder<'a> {
    encoder: Encoder<'a>,
    plan: Plan,
}

fn bug<T>(what: &'static str) -> Result<T, EncodeError> {
    Err(internal(what).into())
}

fn push<T, const N: usize>(v: &mut heapless::Vec<T, N>, item: T) -> Result<usize, EncodeError> {
    // MAX_NODES holds the largest network the weights format allows (BCAE-2D, 8 blocks).
    v.push(item)
        .map_err(|_| internal("streaming plan longer than MAX_NODES"))?;
    Ok(v.len() - 1)
}

impl<'a> StreamEncoder<'a> {
    /// Parses and validates a weights file (see [`Encoder::parse`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        Ok(Self::new(Encoder::parse(bytes)?)?)
    }

    /// Plans the streaming schedule of an already validated encoder.
    pub fn new(encoder: Encoder<'a>) -> Result<Self, EncodeError> {
        let mut plan = Plan {
            rings: heapless::Vec::new(),
            stages: heapless::Vec::new(),
            code: 0,
            tmp_offset: 0,
            tmp_len: 0,
            scratch: 0,
        };
        let topology = encoder
            .model()
            .topology()
            .map_err(|_| internal("a validated model has no description"))?;
        build(&encoder, &topology, &mut plan)?;
        let mut this = StreamEncoder { encoder, plan };
        this.size_rings()?;
        let code = this.plan.rings.get(this.plan.code).ok_or(internal(
            "the planned code ring differs from the encoder's code shape",
        ))?;
        if code.shape != this.encoder.code_shape() {
            return bug("the planned code ring differs from the encoder's code shape");
        }
        Ok(this)
    }

    /// The whole-wedge encoder over the same weights (model, code scale, fingerprint).
    pub fn encoder(&self) -> &Encoder<'a> {
        &self.encoder
    }

    /// Bytes of scratch memory a stream needs: every ring plus one temporary column.
    pub fn scratch_bytes(&self) -> usize {
        self.plan.scratch
    }

    /// The code's shape (c, d, h, w); code slice `o` is `code[.., .., .., o]`.
    pub fn code_shape(&self) -> Shape {
        self.encoder.code_shape()
    }

    /// Code slices per wedge (the code's z extent).
    pub fn code_slices(&self) -> usize {
        self.code_shape().w
    }

    /// int8 values per code slice, laid out (c, d, h).
    pub fn code_slice_len(&self) -> usize {
        let s = self.code_shape();
        s.c * s.d * s.h
    }

    /// Starts a wedge over `scratch` (at least [`StreamEncoder::scratch_bytes`]; contents
    /// overwritten as the wedge goes).
    pub fn begin<'e, 's>(
        &'e self,
        scratch: &'s mut [i8],
    ) -> Result<Stream<'e, 'a, 's>, EncodeError> {
        if scratch.len() < self.plan.scratch {
            return Err(EncodeError::BufferTooSmall {
                needed: self.plan.scratch,
                got: scratch.len(),
            });
        }
        Ok(Stream {
            encoder: self,
            scratch,
            state: StreamState::new(),
        })
    }

    /// Encodes a whole wedge by streaming it (same arguments and code layout as
    /// [`Encoder::encode`]; `scratch` only needs [`StreamEncoder::scratch_bytes`]).
    pub fn encode(
        &self,
        adc: &[u16],
        scratch: &mut [i8],
        code: &mut [i8],
    ) -> Result<(), EncodeError> {
        let shape = self.code_shape();
        crate::encoder::check_encode_args(
            adc,
            (self.scratch_bytes(), scratch.len()),
            (shape.len(), code.len()),
        )?;
        let mut stream = self.begin(scratch)?;
        let mut slice = [0u16; SLICE_SAMPLES];
        let mut scatter = |o: usize, col: &[i8]| scatter_code_slice(shape, o, col, code);
        for z in 0..Z_BINS {
            for (a, dst) in slice.chunks_exact_mut(LAYERS).enumerate() {
                let at = (a * Z_BINS + z) * LAYERS;
                dst.copy_from_slice(
                    adc.get(at..at + LAYERS)
                        .ok_or(internal("wedge slice outside the checked input"))?,
                );
            }
            stream.push(&slice, &mut scatter)?;
        }
        Ok(())
    }

    /// Finds each ring's depth by running the schedule once without data, then lays out scratch.
    fn size_rings(&mut self) -> Result<(), EncodeError> {
        let mut needed = [1usize; MAX_NODES];
        let mut c = Counters::new();
        let input_cols = self
            .plan
            .rings
            .first()
            .ok_or(internal("streaming schedule inconsistent with its plan"))?
            .shape
            .w;
        for _ in 0..input_cols {
            self.note_write(&c, 0, &mut needed);
            c.written[0] += 1;
            while let Some(s) = self.ready_stage(&c) {
                let op = *self
                    .plan
                    .stages
                    .get(s)
                    .ok_or(internal("streaming schedule inconsistent with its plan"))?;
                let col = c.next[s];
                self.note_write(&c, op.dst(), &mut needed);
                c.written[op.dst()] += 1;
                c.next[s] = col + 1;
            }
        }
        if c.written[self.plan.code] != self.code_slices() {
            return bug("streaming schedule inconsistent with its plan");
        }
        let mut offset = 0usize;
        for (ring, &slots) in self.plan.rings.iter_mut().zip(needed.iter()) {
            ring.slots = slots;
            ring.offset = offset;
            offset += slots * ring.col_len();
        }
        self.plan.tmp_offset = offset;
        self.plan.scratch = offset + self.plan.tmp_len;
        Ok(())
    }

    /// Records how deep ring `r` must be for its next column to be written now.
    fn note_write(&self, c: &Counters, r: usize, needed: &mut [usize; MAX_NODES]) {
        let col = c.written[r];
        let oldest = self.oldest_needed(c, r).unwrap_or(col);
        if let Some(n) = needed.get_mut(r) {
            *n = (*n).max(col + 1 - oldest.min(col));
        }
    }

    /// The oldest column of ring `r` some stage still needs (`None` when none does).
    fn oldest_needed(&self, c: &Counters, r: usize) -> Option<usize> {
        let mut oldest: Option<usize> = None;
        let mut note = |col: usize| oldest = Some(oldest.map_or(col, |o: usize| o.min(col)));
        for (s, op) in self.plan.stages.iter().enumerate() {
            let o = c.next[s];
            match *op {
                Op::Conv { layer, src, dst }
                | Op::ConvAdd {
                    layer, src, dst, ..
                } => {
                    if o >= self.ring(dst).map_or(0, |d| d.shape.w) {
                        continue;
                    }
                    if src == r {
                        let conv = self.conv(layer);
                        note(
                            (o * conv.stride[2] as usize).saturating_sub(conv.padding[2] as usize),
                        );
                    }
                    if let Op::ConvAdd { skip, .. } = *op {
                        if skip == r {
                            note(o);
                        }
                    }
                }
                Op::Pool { src, dst } => {
                    if src == r && o < self.ring(dst).map_or(0, |d| d.shape.w) {
                        note(2 * o);
                    }
                }
            }
        }
        oldest
    }

    /// The last stage (in network order) that can produce its next column now: consumers run
    /// before their producers write again, which keeps every ring as shallow as the kernels allow.
    fn ready_stage(&self, c: &Counters) -> Option<usize> {
        self.plan
            .stages
            .iter()
            .enumerate()
            .rev()
            .find_map(|(s, op)| {
                let o = c.next[s];
                let dst = self.ring(op.dst())?;
                if o >= dst.shape.w {
                    return None;
                }
                let ready = match *op {
                    Op::Conv { layer, src, .. } => self.conv_ready(c, layer, src, o),
                    Op::ConvAdd {
                        layer, src, skip, ..
                    } => self.conv_ready(c, layer, src, o) && c.written[skip] > o,
                    Op::Pool { src, .. } => c.written[src] >= 2 * o + 2,
                };
                ready.then_some(s)
            })
    }

    fn conv_ready(&self, c: &Counters, layer: LayerId, src: usize, o: usize) -> bool {
        let conv = self.conv(layer);
        let Some(ring) = self.ring(src) else {
            return false;
        };
        let reach = (o * conv.stride[2] as usize + conv.kernel[2] as usize)
            .saturating_sub(conv.padding[2] as usize + 1);
        c.written[src] > reach.min(ring.shape.w.saturating_sub(1))
    }

    fn ring(&self, r: usize) -> Option<&Ring> {
        self.plan.rings.get(r)
    }

    fn conv(&self, layer: LayerId) -> &Conv<'a> {
        conv_of(&self.encoder, layer)
    }
}

/// The conv named `layer` (stages are planned from the same network, so it always exists; a
/// mismatch falls back to an empty layer, and the shape checks then report it).
fn conv_of<'e, 'a>(encoder: &'e Encoder<'a>, layer: LayerId) -> &'e Conv<'a> {
    encoder.model().network.conv(layer).unwrap_or(&Conv::EMPTY)
}

fn add_of<'e>(encoder: &'e Encoder<'_>, at: LayerId) -> Option<&'e Add> {
    encoder.model().network.add(at)
}

fn new_ring(plan: &mut Plan, shape: Shape) -> Result<usize, EncodeError> {
    if shape.h > MAX_ROW || shape.w == 0 {
        return Err(EncodeError::Unsupported {
            what: "a tensor taller than the line buffers' 256 azimuth rows",
        });
    }
    push(
        &mut plan.rings,
        Ring {
            shape,
            slots: 1,
            offset: 0,
        },
    )
}

/// A conv stage from ring `src` into a new ring; returns the new ring.
fn add_conv(
    plan: &mut Plan,
    conv: &Conv<'_>,
    layer: LayerId,
    src: usize,
) -> Result<usize, EncodeError> {
    let in_shape = plan
        .rings
        .get(src)
        .ok_or(internal("plan ring index out of range"))?
        .shape;
    let shape = conv_output_shape(conv, in_shape)?;
    check_conv(conv, in_shape)?;
    let dst = new_ring(plan, shape)?;
    push(&mut plan.stages, Op::Conv { layer, src, dst })?;
    Ok(dst)
}

/// A conv + residual add stage (`add(conv(src), skip)`) into a new ring; returns the new ring.
fn add_conv_add(
    plan: &mut Plan,
    conv: &Conv<'_>,
    layer: LayerId,
    add: LayerId,
    src: usize,
    skip: usize,
) -> Result<usize, EncodeError> {
    let in_shape = plan
        .rings
        .get(src)
        .ok_or(internal("residual operands planned with different shapes"))?
        .shape;
    let shape = conv_output_shape(conv, in_shape)?;
    check_conv(conv, in_shape)?;
    if plan.rings.get(skip).map(|r| r.shape) != Some(shape) {
        return bug("residual operands planned with different shapes");
    }
    let dst = new_ring(plan, shape)?;
    plan.tmp_len = plan.tmp_len.max(shape.c * shape.d * shape.h);
    push(
        &mut plan.stages,
        Op::ConvAdd {
            layer,
            add,
            src,
            skip,
            dst,
        },
    )?;
    Ok(dst)
}

fn add_pool(plan: &mut Plan, src: usize) -> Result<usize, EncodeError> {
    let s = plan
        .rings
        .get(src)
        .ok_or(internal("pooling planned on an odd shape"))?
        .shape;
    if (s.h | s.w) & 1 != 0 {
        return bug("pooling planned on an odd shape");
    }
    let dst = new_ring(
        plan,
        Shape {
            h: s.h / 2,
            w: s.w / 2,
            ..s
        },
    )?;
    push(&mut plan.stages, Op::Pool { src, dst })?;
    Ok(dst)
}

/// What [`conv_column`] supports beyond the weights format's own checks.
fn check_conv(conv: &Conv<'_>, input: Shape) -> Result<(), EncodeError> {
    let [_, kh, kw] = conv.kernel.map(usize::from);
    if kw > MAX_Z_TAPS || kh > MAX_H_TAPS || input.h > MAX_ROW || conv.stride[1] == 0 {
        return Err(EncodeError::Unsupported {
            what: "a kernel of more than 8 taps along z or azimuth",
        });
    }
    Ok(())
}

/// Whether layer `i` of `layers` is a conv whose output is the skip operand (`b`) of an add.
fn feeds_skip(layers: &[LayerOp], i: usize) -> bool {
    let Some(id) = layers.get(i).map(|l| l.id) else {
        return false;
    };
    matches!(layers.get(i).map(|l| l.op), Some(TopoOp::Conv(_)))
        && layers
            .iter()
            .any(|l| matches!(l.op, TopoOp::Add(a) if a.b == Source::Layer(id)))
}

/// The stages of a model, from its description: one ring per tensor and one stage per layer, in
/// the description's order with two changes. An add is fused into the conv right before it that
/// makes its main operand (`a`) and nothing else reads (that conv's column only ever lives in the
/// temporary). A conv making an add's skip operand runs before the other convs reading the same
/// tensor: downstream runs first, so the add consumes each skip column before the skip conv
/// writes the next one (a one-column skip ring).
fn build(encoder: &Encoder<'_>, topology: &Topology, plan: &mut Plan) -> Result<(), EncodeError> {
    let layers = topology.layers();
    // Skip convs first in each run of convs reading one tensor, the rest in the description's
    // order.
    let reads = |i: usize| match layers.get(i).map(|l| l.op) {
        Some(TopoOp::Conv(c)) => Some(c.input),
        _ => None,
    };
    let mut order: heapless::Vec<usize, MAX_LAYERS> = heapless::Vec::new();
    let mut start = 0;
    while start < layers.len() {
        let mut end = start + 1;
        while end < layers.len() && reads(end).is_some() && reads(end) == reads(start) {
            end += 1;
        }
        for skip_first in [true, false] {
            for i in (start..end).filter(|&i| feeds_skip(layers, i) == skip_first) {
                push(&mut order, i)?;
            }
        }
        start = end;
    }
    let mut rings: heapless::Vec<(Source, usize), MAX_NODES> = heapless::Vec::new();
    let input = new_ring(plan, topology.input_shape())?;
    push(&mut rings, (Source::Input, input))?;
    let ring_of = |rings: &heapless::Vec<(Source, usize), MAX_NODES>, s: Source| {
        rings
            .iter()
            .find(|(k, _)| *k == s)
            .map(|(_, r)| *r)
            .ok_or(internal("a streaming stage reads a tensor not planned yet"))
    };
    let network = &encoder.model().network;
    let conv_of = |id| {
        network
            .conv(id)
            .ok_or(internal("a validated model lacks a described conv"))
    };
    let mut k = 0;
    while let Some(layer) = order.get(k).and_then(|&i| layers.get(i)) {
        let next = order.get(k + 1).and_then(|&i| layers.get(i));
        k += 1;
        let (id, dst) = match layer.op {
            TopoOp::Conv(c) => {
                let read_once = layers
                    .iter()
                    .filter(|l| l.op.inputs().contains(&Some(Source::Layer(layer.id))))
                    .count()
                    == 1;
                let src = ring_of(&rings, c.input)?;
                match next.map(|n| (n.id, n.op)) {
                    Some((add, TopoOp::Add(a))) if a.a == Source::Layer(layer.id) && read_once => {
                        k += 1;
                        let skip = ring_of(&rings, a.b)?;
                        let conv = conv_of(layer.id)?;
                        (add, add_conv_add(plan, conv, layer.id, add, src, skip)?)
                    }
                    _ => (layer.id, add_conv(plan, conv_of(layer.id)?, layer.id, src)?),
                }
            }
            TopoOp::Pool { input } => (layer.id, add_pool(plan, ring_of(&rings, input)?)?),
            TopoOp::Add(_) => {
                return Err(EncodeError::Unsupported {
                    what: "a residual add not right after the conv making its main operand",
                })
            }
        };
        push(&mut rings, (Source::Layer(id), dst))?;
        plan.code = dst;
    }
    Ok(())
}

/// Writes code slice `o` ((c, d, h) values) into a whole code laid out (c, d, h, w).
pub fn scatter_code_slice(
    shape: Shape,
    o: usize,
    slice: &[i8],
    code: &mut [i8],
) -> Result<(), EncodeError> {
    if o >= shape.w || slice.len() != shape.c * shape.d * shape.h {
        return Err(EncodeError::WrongShape {
            expected: shape.c * shape.d * shape.h,
            got: slice.len(),
        });
    }
    let got = code.len();
    for (i, &v) in slice.iter().enumerate() {
        *code
            .get_mut(i * shape.w + o)
            .ok_or(EncodeError::BufferTooSmall {
                needed: shape.len(),
                got,
            })? = v;
    }
    Ok(())
}

/// Where one wedge stands (no buffers: the caller keeps it with its scratch, e.g. in a firmware loop).
#[derive(Debug, Clone, Copy)]
pub struct StreamState {
    counters: Counters,
    slices: usize,
}

impl Default for StreamState {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamState {
    /// The start of a wedge.
    pub const fn new() -> Self {
        StreamState {
            counters: Counters::new(),
            slices: 0,
        }
    }

    /// Slices pushed so far in this wedge.
    pub fn slices_pushed(&self) -> usize {
        self.slices
    }

    /// Whether the wedge is complete (every slice pushed, every code slice emitted).
    pub fn is_complete(&self) -> bool {
        self.slices == Z_BINS
    }

    /// Forgets the wedge in progress; the next push starts a new wedge.
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

/// One wedge in progress over the caller's scratch.
pub struct Stream<'e, 'a, 's> {
    encoder: &'e StreamEncoder<'a>,
    scratch: &'s mut [i8],
    state: StreamState,
}

impl Stream<'_, '_, '_> {
    /// Slices pushed so far in this wedge.
    pub fn slices_pushed(&self) -> usize {
        self.state.slices_pushed()
    }

    /// Whether the wedge is complete (every slice pushed, every code slice emitted).
    pub fn is_complete(&self) -> bool {
        self.state.is_complete()
    }

    /// Forgets the wedge in progress; the next push starts a new wedge.
    pub fn reset(&mut self) {
        self.state.reset();
    }

    /// See [`StreamEncoder::push`].
    pub fn push<F, E>(&mut self, slice: &[u16], emit: &mut F) -> Result<(), E>
    where
        F: FnMut(usize, &[i8]) -> Result<(), E>,
        E: From<EncodeError>,
    {
        self.encoder
            .push(&mut self.state, self.scratch, slice, emit)
    }
}

impl StreamEncoder<'_> {
    /// Feeds the next z slice (192 azimuth x 16 layers, layer fastest, each at most 1023) and
    /// hands every code slice it completes to `emit(o, slice)` (slice laid out (c, d, h)). The
    /// 249th slice completes the wedge; pushing more is [`EncodeError::WrongShape`] until
    /// [`StreamState::reset`]. A slice with an ADC value above 1023 is refused before anything is
    /// changed; an `emit` error ends the push (reset before reusing the stream).
    /// `state` and `scratch` (at least [`StreamEncoder::scratch_bytes`]) belong to one wedge from
    /// its first slice to its last.
    pub fn push<F, E>(
        &self,
        state: &mut StreamState,
        scratch: &mut [i8],
        slice: &[u16],
        emit: &mut F,
    ) -> Result<(), E>
    where
        F: FnMut(usize, &[i8]) -> Result<(), E>,
        E: From<EncodeError>,
    {
        if scratch.len() < self.plan.scratch {
            return Err(EncodeError::BufferTooSmall {
                needed: self.plan.scratch,
                got: scratch.len(),
            }
            .into());
        }
        let mut run = Run {
            encoder: self,
            scratch,
            counters: &mut state.counters,
            slices: &mut state.slices,
        };
        run.push(slice, emit)
    }
}

/// One push at work.
struct Run<'r, 'e, 'a> {
    encoder: &'e StreamEncoder<'a>,
    scratch: &'r mut [i8],
    counters: &'r mut Counters,
    slices: &'r mut usize,
}

impl Run<'_, '_, '_> {
    fn push<F, E>(&mut self, slice: &[u16], emit: &mut F) -> Result<(), E>
    where
        F: FnMut(usize, &[i8]) -> Result<(), E>,
        E: From<EncodeError>,
    {
        if slice.len() != SLICE_SAMPLES {
            return Err(EncodeError::WrongShape {
                expected: SLICE_SAMPLES,
                got: slice.len(),
            }
            .into());
        }
        if *self.slices >= Z_BINS {
            return Err(EncodeError::WrongShape {
                expected: Z_BINS,
                got: *self.slices + 1,
            }
            .into());
        }
        if let Some((i, &value)) = slice.iter().enumerate().find(|(_, &v)| v > 1023) {
            let (a, l) = (i / LAYERS, i % LAYERS);
            return Err(EncodeError::AdcOutOfRange {
                index: (a * Z_BINS + *self.slices) * LAYERS + l,
                value,
            }
            .into());
        }
        self.input_column(Some(slice))?;
        *self.slices += 1;
        self.drain(emit)?;
        if *self.slices == Z_BINS {
            // The networks' z padding (ADC 0) up to 256.
            for _ in Z_BINS..Z_PADDED {
                self.input_column(None)?;
                self.drain(emit)?;
            }
        }
        Ok(())
    }

    /// Writes the next input column (`None`: a padding column) through the input table.
    fn input_column(&mut self, slice: Option<&[u16]>) -> Result<(), EncodeError> {
        let enc = self.encoder;
        let table = enc.encoder.model().input_table;
        let pad = *table.first().ok_or(internal(
            "input table shorter than its checked 1024 entries",
        ))? as i8;
        let col = self.counters.written[0];
        let dst = self.slot_mut(0, col)?;
        match slice {
            None => dst.fill(pad),
            Some(slice) => {
                // Column layout (layer, azimuth) for both families: HT (1, 16, 192), 2D (16, 1, 192).
                for (a, voxel) in slice.chunks_exact(LAYERS).enumerate() {
                    for (l, &v) in voxel.iter().enumerate() {
                        if let (Some(o), Some(&t)) =
                            (dst.get_mut(l * AZIMUTH + a), table.get(v as usize))
                        {
                            *o = t as i8;
                        }
                    }
                }
            }
        }
        self.counters.written[0] += 1;
        Ok(())
    }

    /// Runs every stage that can run, handing code columns to `emit`.
    fn drain<F, E>(&mut self, emit: &mut F) -> Result<(), E>
    where
        F: FnMut(usize, &[i8]) -> Result<(), E>,
        E: From<EncodeError>,
    {
        let enc = self.encoder;
        while let Some(s) = enc.ready_stage(self.counters) {
            let op = *enc
                .plan
                .stages
                .get(s)
                .ok_or(EncodeError::from(internal("stage index out of the plan")))?;
            let o = self.counters.next[s];
            self.run(op, o)?;
            let dst = op.dst();
            self.counters.written[dst] += 1;
            self.counters.next[s] = o + 1;
            if dst == enc.plan.code {
                emit(o, self.slot(dst, o)?)?;
            }
        }
        Ok(())
    }

    /// Computes output column `o` of one stage.
    fn run(&mut self, op: Op, o: usize) -> Result<(), EncodeError> {
        let enc = self.encoder;
        let plan = &enc.plan;
        match op {
            Op::Conv { layer, src, dst } => {
                let out = plan.rings.get(dst).ok_or(internal(
                    "stage refers to a ring or add missing from the plan",
                ))?;
                let (out_shape, out_at) = (out.shape, self.slot_range(dst, o)?);
                let (input, output) = split_input_output(self.scratch, plan, src, out_at)?;
                conv_stage(enc, layer, input, src, o, out_shape, output)
            }
            Op::ConvAdd {
                layer,
                add,
                src,
                skip,
                dst,
            } => {
                let out = plan.rings.get(dst).ok_or(internal(
                    "stage refers to a ring or add missing from the plan",
                ))?;
                let out_shape = out.shape;
                let col = out.col_len();
                let tmp_at = plan.tmp_offset..plan.tmp_offset + col;
                let (input, tmp) = split_input_output(self.scratch, plan, src, tmp_at.clone())?;
                conv_stage(enc, layer, input, src, o, out_shape, tmp)?;
                // dst <- skip column, then dst = add(a = tmp, b = dst).
                let skip_at = self.slot_range(skip, o)?;
                let dst_at = self.slot_range(dst, o)?;
                self.scratch.copy_within(skip_at, dst_at.start);
                let add = add_of(&enc.encoder, add).ok_or(internal(
                    "stage refers to a ring or add missing from the plan",
                ))?;
                let (a, b) = two_ranges(self.scratch, tmp_at, dst_at)?;
                add_in_place(add, a, b)
            }
            Op::Pool { src, dst } => {
                let ring = plan.rings.get(src).ok_or(internal(
                    "stage refers to a ring or add missing from the plan",
                ))?;
                let (cd, h) = (ring.shape.c * ring.shape.d, ring.shape.h);
                let first = self.slot_range(src, 2 * o)?;
                let second = self.slot_range(src, 2 * o + 1)?;
                let dst_at = self.slot_range(dst, o)?;
                pool_columns(self.scratch, cd, h, first.start, second.start, dst_at)
            }
        }
    }

    /// Byte range of column `col` of ring `r`, refusing a column already overwritten or not yet written.
    fn slot_range(&self, r: usize, col: usize) -> Result<core::ops::Range<usize>, EncodeError> {
        slot_range(&self.encoder.plan, r, col)
    }

    fn slot(&self, r: usize, col: usize) -> Result<&[i8], EncodeError> {
        let at = self.slot_range(r, col)?;
        self.scratch
            .get(at)
            .ok_or(internal("ring slot outside scratch").into())
    }

    fn slot_mut(&mut self, r: usize, col: usize) -> Result<&mut [i8], EncodeError> {
        let at = self.slot_range(r, col)?;
        self.scratch
            .get_mut(at)
            .ok_or(internal("ring slot outside scratch").into())
    }
}

fn slot_range(plan: &Plan, r: usize, col: usize) -> Result<core::ops::Range<usize>, EncodeError> {
    let ring = plan
        .rings
        .get(r)
        .ok_or(internal("ring index out of the plan"))?;
    let len = ring.col_len();
    let start = ring.offset + (col % ring.slots.max(1)) * len;
    Ok(start..start + len)
}

/// The whole ring `src` (shared) and the disjoint range `out` (mutable) of scratch.
fn split_input_output<'s>(
    scratch: &'s mut [i8],
    plan: &Plan,
    src: usize,
    out: core::ops::Range<usize>,
) -> Result<(&'s [i8], &'s mut [i8]), EncodeError> {
    let ring = plan
        .rings
        .get(src)
        .ok_or(internal("ring index out of the plan"))?;
    let input = ring.offset..ring.offset + ring.slots * ring.col_len();
    let (a, b) = two_ranges(scratch, input, out)?;
    Ok((a, b))
}

/// Two disjoint ranges of `buf`, the first shared and the second mutable.
fn two_ranges(
    buf: &mut [i8],
    first: core::ops::Range<usize>,
    second: core::ops::Range<usize>,
) -> Result<(&[i8], &mut [i8]), EncodeError> {
    let too_small = EncodeError::BufferTooSmall {
        needed: first.end.max(second.end),
        got: buf.len(),
    };
    if first.end > buf.len() || second.end > buf.len() {
        return Err(too_small);
    }
    if first.end <= second.start {
        let (lo, hi) = buf.split_at_mut(second.start);
        Ok((&lo[first], &mut hi[..second.end - second.start]))
    } else if second.end <= first.start {
        let (lo, hi) = buf.split_at_mut(first.start);
        Ok((&hi[..first.end - first.start], &mut lo[second]))
    } else {
        bug("a stage reads and writes the same ring slot")
    }
}

/// Output column `o` of the conv at `layer` reading ring `src` (all of it in `ring`, from its
/// offset) into `output`.
fn conv_stage(
    enc: &StreamEncoder<'_>,
    layer: LayerId,
    ring_bytes: &[i8],
    src: usize,
    o: usize,
    out_shape: Shape,
    output: &mut [i8],
) -> Result<(), EncodeError> {
    let conv = conv_of(&enc.encoder, layer);
    let ring = enc
        .plan
        .rings
        .get(src)
        .ok_or(internal("conv column outside its ring"))?;
    let (kw, sw, pw) = (
        conv.kernel[2] as usize,
        conv.stride[2] as usize,
        conv.padding[2] as usize,
    );
    let len = ring.col_len();
    let mut cols: [Option<&[i8]>; MAX_Z_TAPS] = [None; MAX_Z_TAPS];
    for (x, col) in cols.iter_mut().enumerate().take(kw) {
        let Some(z) = (o * sw + x).checked_sub(pw).filter(|&z| z < ring.shape.w) else {
            continue;
        };
        let at = (z % ring.slots.max(1)) * len;
        *col = Some(
            ring_bytes
                .get(at..at + len)
                .ok_or(internal("conv column outside its ring"))?,
        );
    }
    conv_column(
        conv,
        ring.shape,
        out_shape,
        cols.get(..kw).unwrap_or(&[]),
        output,
    )
}

simd_kernel!(
    /// One output z-column of `conv`, all channels, depths and azimuth positions, from the input
    /// columns `cols[x]` (kernel tap x along z; `None` where the tap falls in the padding), each
    /// laid out (c, d, h). `output` receives (out.c, out.d, out.h). Same arithmetic as
    /// [`crate::kernels::conv`]; each input row is converted to `x - zp` (and de-interleaved by
    /// the azimuth stride) once, then shared by a group of output channels. Where the input
    /// columns are mostly the zero point (the zero-suppressed wedge entering the first layer,
    /// which holds most of the network's MACs), each row's other values are scattered instead,
    /// so the zero point costs nothing (the same products, summed in another order: integer sums
    /// do not depend on it). Runs through the kernels' run-time SIMD dispatch.
    pub conv_column, ColumnConv => column_kernel [] (
        conv: &'a Conv<'w>, in_shape: Shape, out: Shape, cols: &'a [Option<&'a [i8]>],
        output: &'a mut [i8],
    )
);

#[inline(always)]
fn column_kernel(
    conv: &Conv<'_>,
    in_shape: Shape,
    out: Shape,
    cols: &[Option<&[i8]>],
    output: &mut [i8],
) -> Result<(), EncodeError> {
    let [kd, kh, kw] = conv.kernel.map(usize::from);
    let [sd, sh, _] = conv.stride.map(usize::from);
    let [pd, ph, _] = conv.padding.map(usize::from);
    if cols.len() != kw || kh > MAX_H_TAPS || sh == 0 || in_shape.h > MAX_ROW || out.h == 0 {
        return bug("column conv index out of its checked range");
    }
    if conv.in_channels as usize != in_shape.c || conv.out_channels as usize != out.c {
        return bug("column conv index out of its checked range");
    }
    let needed = out.c * out.d * out.h;
    if output.len() < needed {
        return Err(EncodeError::BufferTooSmall {
            needed,
            got: output.len(),
        });
    }
    let terms = conv.terms();
    let zp = conv.input_zero_point as i16;
    // The sparse path: at most one value in SPARSE_DENSITY of the input columns is not the zero
    // point (strides up to MAX_H_TAPS, one list of non-zero values per azimuth phase).
    let zp8 = conv.input_zero_point;
    let sparse = sh <= MAX_H_TAPS && {
        let n = in_shape.c * in_shape.d * in_shape.h;
        let (mut nonzero, mut total) = (0usize, 0usize);
        for col in cols.iter().flatten() {
            let col = col
                .get(..n)
                .ok_or(internal("column conv index out of its checked range"))?;
            nonzero += col.iter().filter(|&&v| v != zp8).count();
            total += n;
        }
        nonzero * SPARSE_DENSITY <= total
    };
    // A group of output channels shares each prepared input row; the sparse path keeps its
    // group in one vector of SPARSE_LANES channel-last accumulators per output.
    let group = if sparse {
        (ACC_LEN / out.h).min(SPARSE_LANES)
    } else {
        ACC_LEN / out.h
    }
    .clamp(1, out.c);
    let mut acc_cl = [[0i32; SPARSE_LANES]; MAX_ROW];
    let acc_cl = acc_cl
        .get_mut(..out.h)
        .ok_or(internal("column conv index out of its checked range"))?;
    // Tap y reads azimuth phase taps[y].0 at output o + taps[y].1 ... (see the sparse loop).
    let mut taps = [(0usize, 0isize); MAX_H_TAPS];
    for (y, t) in taps.iter_mut().enumerate().take(kh) {
        let p = (y as isize - ph as isize).rem_euclid(sh as isize);
        *t = (p as usize, (ph as isize + p - y as isize) / sh as isize);
    }
    let mut nz_cols = [0u16; MAX_ROW];
    let mut nz_vals = [0i16; MAX_ROW];
    let mut nz_m = [0u16; MAX_ROW];
    let mut nz_v = [0i16; MAX_ROW];
    let mut seg = [0usize; MAX_H_TAPS + 1];
    let mut acc_buf = [0i32; ACC_LEN];
    let mut phase = [0i16; MAX_ROW + MAX_H_TAPS + 2];
    let mut pairs_buf = [[0i16; 2]; MAX_ROW + MAX_H_TAPS + 1];
    for od in 0..out.d {
        for g0 in (0..out.c).step_by(group) {
            let g1 = (g0 + group).min(out.c);
            let acc = acc_buf
                .get_mut(..(g1 - g0) * out.h)
                .ok_or(internal("column conv index out of its checked range"))?;
            for (k, acc_c) in acc.chunks_exact_mut(out.h).enumerate() {
                acc_c.fill(
                    le_i32(conv.bias, g0 + k)
                        .ok_or(internal("column conv index out of its checked range"))?,
                );
            }
            if sparse {
                acc_cl.fill([0; SPARSE_LANES]);
            }
            for ci in 0..in_shape.c {
                for z in 0..kd {
                    let Some(id) = (od * sd + z).checked_sub(pd).filter(|&v| v < in_shape.d) else {
                        continue;
                    };
                    let row_at = (ci * in_shape.d + id) * in_shape.h;
                    for (x, col) in cols.iter().enumerate() {
                        let Some(col) = col else {
                            continue;
                        };
                        let row = col
                            .get(row_at..row_at + in_shape.h)
                            .ok_or(internal("column conv index out of its checked range"))?;
                        let w_base = (ci * kd + z) * kh * kw + x;
                        if sparse {
                            // Non-zero values (input position i, i - zp), grouped by phase
                            // i % sh as (i / sh, value).
                            let n = gather_nonzero(row, zp8, &mut nz_cols, &mut nz_vals);
                            let mut len = 0;
                            for (p, end) in seg.iter_mut().skip(1).enumerate().take(sh) {
                                for (&i, &v) in nz_cols.iter().zip(&nz_vals).take(n) {
                                    if i as usize % sh == p {
                                        if let (Some(m), Some(d)) =
                                            (nz_m.get_mut(len), nz_v.get_mut(len))
                                        {
                                            (*m, *d) = (i / sh as u16, v);
                                            len += 1;
                                        }
                                    }
                                }
                                *end = len;
                            }
                            // Tap y's weights of the group's channels, as lanes.
                            let mut wt = [[0i16; SPARSE_LANES]; MAX_H_TAPS];
                            for (k, lanes) in (g0..g1).zip(0..SPARSE_LANES) {
                                for (y, w) in wt.iter_mut().enumerate().take(kh) {
                                    w[lanes] =
                                        *conv.weights.get(k * terms + w_base + y * kw).ok_or(
                                            internal("column conv index out of its checked range"),
                                        )? as i8 as i16;
                                }
                            }
                            for (y, &(p, off)) in taps.iter().enumerate().take(kh) {
                                let w = wt[y];
                                if w == [0; SPARSE_LANES] {
                                    continue;
                                }
                                // Output o reads input o * sh + y - ph = m * sh + p: o = m + off.
                                let at = *seg
                                    .get(p)
                                    .ok_or(internal("column conv index out of its checked range"))?
                                    ..*seg.get(p + 1).ok_or(internal(
                                        "column conv index out of its checked range",
                                    ))?;
                                let ms = nz_m.get(at.clone()).ok_or(internal(
                                    "column conv index out of its checked range",
                                ))?;
                                let vs = nz_v.get(at).ok_or(internal(
                                    "column conv index out of its checked range",
                                ))?;
                                for (&m, &v) in ms.iter().zip(vs) {
                                    let o = (m as isize + off) as usize;
                                    if let Some(a) = acc_cl.get_mut(o) {
                                        // i16 products are exact: |w| <= 127, |v| <= 255.
                                        for (a, &w) in a.iter_mut().zip(&w) {
                                            *a = a.wrapping_add(w.wrapping_mul(v) as i32);
                                        }
                                    }
                                }
                            }
                            continue;
                        }
                        // Dense: the zero-padded row xpad[j] = x[j - ph] - zp, split by the
                        // azimuth stride into phases q[m] = xpad[m * sh + p]; tap y = p + t * sh
                        // reads q[o + t], so each phase is a stride-1 row conv, run as i16
                        // pairs (exact products) as the whole-wedge kernels do.
                        for p in 0..sh.min(kh) {
                            let taps_p = (kh - p).div_ceil(sh);
                            let q_len = out.h + taps_p + 1;
                            let q = phase
                                .get_mut(..q_len)
                                .ok_or(internal("column conv index out of its checked range"))?;
                            for (m, v) in q.iter_mut().enumerate() {
                                *v = (m * sh + p)
                                    .checked_sub(ph)
                                    .and_then(|i| row.get(i))
                                    .map_or(0, |&x| x as i16 - zp);
                            }
                            let pairs = pairs_buf
                                .get_mut(..q_len - 1)
                                .ok_or(internal("column conv index out of its checked range"))?;
                            for (pr, w) in pairs.iter_mut().zip(q.windows(2)) {
                                *pr = [w[0], w[1]];
                            }
                            for (k, acc_c) in acc.chunks_exact_mut(out.h).enumerate() {
                                let w_co = (g0 + k) * terms + w_base;
                                let mut w_row = [0u8; MAX_H_TAPS];
                                for (t, w) in w_row.iter_mut().enumerate().take(taps_p) {
                                    *w = *conv.weights.get(w_co + (p + t * sh) * kw).ok_or(
                                        internal("column conv index out of its checked range"),
                                    )?;
                                }
                                let w_row = w_row.get(..taps_p).ok_or(internal(
                                    "column conv index out of its checked range",
                                ))?;
                                add_tap_pairs(acc_c, pairs, w_row)?;
                            }
                        }
                    }
                }
            }
            if sparse {
                for (k, acc_c) in acc.chunks_exact_mut(out.h).enumerate() {
                    for (a, lanes) in acc_c.iter_mut().zip(acc_cl.iter()) {
                        *a = a.wrapping_add(
                            *lanes
                                .get(k)
                                .ok_or(internal("column conv index out of its checked range"))?,
                        );
                    }
                }
            }
            for (k, acc_c) in acc.chunks_exact(out.h).enumerate() {
                let co = g0 + k;
                let m = le_i32(conv.requant.multiplier, co)
                    .ok_or(internal("column conv index out of its checked range"))?;
                let n = le_i32(conv.requant.negative_multiplier, co)
                    .ok_or(internal("column conv index out of its checked range"))?;
                let shift = *conv
                    .requant
                    .shift
                    .get(co)
                    .ok_or(internal("column conv index out of its checked range"))?;
                let at = (co * out.d + od) * out.h;
                let dst = output
                    .get_mut(at..at + out.h)
                    .ok_or(internal("column conv index out of its checked range"))?;
                for (q, &a) in dst.iter_mut().zip(acc_c) {
                    *q = requantize(a, m, n, shift, conv.requant.output_zero_point);
                }
            }
        }
    }
    Ok(())
}

/// 2x2 average pooling of two z-columns (at `first` and `second` in `scratch`, each `cd` rows of
/// `h` azimuth values) into the column `dst`: `y = (q00 + q01 + q10 + q11 + 2) >> 2`, as
/// [`crate::kernels::avg_pool_2x2`].
fn pool_columns(
    scratch: &mut [i8],
    cd: usize,
    h: usize,
    first: usize,
    second: usize,
    dst: core::ops::Range<usize>,
) -> Result<(), EncodeError> {
    let half = h / 2;
    if dst.len() != cd * half {
        return bug("pooling column index out of its checked range");
    }
    for r in 0..cd {
        for j in 0..half {
            let at = |base: usize, k: usize| -> Result<i32, EncodeError> {
                scratch
                    .get(base + r * h + 2 * j + k)
                    .map(|&v| v as i32)
                    .ok_or(internal("pooling column index out of its checked range").into())
            };
            let sum = at(first, 0)? + at(first, 1)? + at(second, 0)? + at(second, 1)?;
            let out = scratch
                .get_mut(dst.start + r * half + j)
                .ok_or(internal("pooling column index out of its checked range"))?;
            *out = ((sum + 2) >> 2).clamp(-128, 127) as i8;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
