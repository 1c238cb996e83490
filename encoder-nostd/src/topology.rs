//! The one description of each model's encoder: an ordered list of named layer operations.
//!
//! Everything that needs a model's structure derives it from [`Topology::new`]: the weights
//! format's checks ([`crate::weights::QuantizedModel::validate`] compares every layer of a file
//! with its description, and names the layer that differs), the owned writer
//! ([`crate::weights::owned::OwnedModel`] holds its layers by [`LayerId`], and its random models
//! are drawn layer by layer), the whole-wedge encoder's scratch plan (its per-layer shapes), the
//! streaming encoder's stages and rings (one per layer and tensor), and, in `trainer`, the float encoder read from a checkpoint (each conv's variable names are here),
//! the calibration (one range per named tensor) and the candle integer path.
//!
//! Adding a model: a [`ModelKind`] variant and its description in [`Topology::new`]; the weights
//! format's struct for it (a `Network` variant: the file layout is its serde types) with its
//! arms in the name accessors (`Network::conv`, `add`, `skeleton`, ...) and in
//! `QuantizedModel::kind`; the whole-wedge encoder's loop over its struct (`encoder`); in
//! `trainer`, the float model and its `ModelConfig::int8_kind`. The quantizer, calibration, candle
//! integer path, owned writer, validation and streaming encoder need no change (as long as the
//! model uses the existing operations: conv, residual add, 2x2 pooling).
//!
//! Layers are listed in execution order; every operation names the tensors it reads ([`Source`]),
//! so consumers walk the list as a dataflow graph. Each layer's output shape is computed here from
//! the network input's shape, so a consumer never restates it.
use crate::error::internal;
use crate::geometry::LAYERS;
use crate::weights::{
    ModelKind, Shape, WeightsError, HT_INPUT, INPUT_2D, MAX_2D_BLOCKS, MAX_CHANNELS, MAX_ROW,
};

/// Most layer operations of one model (BCAE-2D with 8 blocks has 1 + 8 x 7 = 57).
pub const MAX_LAYERS: usize = 64;

/// A layer's name. `Display` gives the name reports, errors and calibration use
/// (`block0.main1`, `block2.res1.conv2`, `output`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerId {
    /// BCAE-HT block `b`: the main branch's strided conv (with LeakyReLU).
    HtMain1(u8),
    /// BCAE-HT block `b`: the skip branch's strided conv (with LeakyReLU).
    HtSkip(u8),
    /// BCAE-HT block `b`: the main branch's second conv (ReZero alpha folded in).
    HtMain2(u8),
    /// BCAE-HT block `b`: main + skip, with LeakyReLU.
    HtAdd(u8),
    /// BCAE-HT: the linear output conv that makes the code.
    HtOutput,
    /// BCAE-2D: the 7x7 input conv.
    Input2d,
    /// BCAE-2D block `b`: 2x2 average pooling.
    Pool2d(u8),
    /// BCAE-2D block `b`, residual block `r`: first conv (with LeakyReLU).
    Res2dConv1(u8, u8),
    /// BCAE-2D block `b`, residual block `r`: second conv (ReZero alpha folded in).
    Res2dConv2(u8, u8),
    /// BCAE-2D block `b`, residual block `r`: conv2 + identity, with LeakyReLU.
    Res2dAdd(u8, u8),
}

impl core::fmt::Display for LayerId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            LayerId::HtMain1(b) => write!(f, "block{b}.main1"),
            LayerId::HtSkip(b) => write!(f, "block{b}.skip"),
            LayerId::HtMain2(b) => write!(f, "block{b}.main2"),
            LayerId::HtAdd(b) => write!(f, "block{b}.add"),
            LayerId::HtOutput => f.write_str("output"),
            LayerId::Input2d => f.write_str("input"),
            LayerId::Pool2d(b) => write!(f, "block{b}.pool"),
            LayerId::Res2dConv1(b, r) => write!(f, "block{b}.res{r}.conv1"),
            LayerId::Res2dConv2(b, r) => write!(f, "block{b}.res{r}.conv2"),
            LayerId::Res2dAdd(b, r) => write!(f, "block{b}.res{r}.add"),
        }
    }
}

/// A tensor an operation reads: the network input or a layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The network input (the ADC table's output).
    Input,
    Layer(LayerId),
}

impl core::fmt::Display for Source {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            // Not "input": BCAE-2D's first conv has that name.
            Source::Input => f.write_str("network input"),
            Source::Layer(id) => id.fmt(f),
        }
    }
}

/// The last part of a float checkpoint variable's module path (see `trainer::models`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// `main_block.0` (BCAE-HT).
    MainBlock0,
    /// `main_block.3` (BCAE-HT).
    MainBlock3,
    /// `side_block.0` (BCAE-HT).
    SideBlock0,
    /// `conv1.0` (BCAE-2D residual block).
    Conv1,
    /// `conv2.0` (BCAE-2D residual block).
    Conv2,
    /// `rezero_alpha` (a block's ReZero scalar).
    RezeroAlpha,
}

impl Module {
    fn as_str(self) -> &'static str {
        match self {
            Module::MainBlock0 => "main_block.0",
            Module::MainBlock3 => "main_block.3",
            Module::SideBlock0 => "side_block.0",
            Module::Conv1 => "conv1.0",
            Module::Conv2 => "conv2.0",
            Module::RezeroAlpha => "rezero_alpha",
        }
    }
}

/// Where a layer's float parameters live in a training checkpoint: `Display` writes the module
/// path (`encoder.layers.encoder_block_0.main_block.0`); a conv's tensors are `{path}.weight`
/// and `{path}.bias`, a ReZero alpha is the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointName {
    /// `encoder.layers.encoder_block_{block}.{module}`.
    HtBlock { block: u8, module: Module },
    /// `encoder.layers.encoder_output.0`.
    HtOutput,
    /// `encoder.init_conv`.
    InitConv,
    /// `encoder.layers.{index}.{module}`: `index` counts PyTorch `nn.Sequential` entries,
    /// the parameter-free pooling ones included.
    Layers2d { index: u8, module: Module },
}

impl core::fmt::Display for CheckpointName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            CheckpointName::HtBlock { block, module } => write!(
                f,
                "encoder.layers.encoder_block_{block}.{}",
                module.as_str()
            ),
            CheckpointName::HtOutput => f.write_str("encoder.layers.encoder_output.0"),
            CheckpointName::InitConv => f.write_str("encoder.init_conv"),
            CheckpointName::Layers2d { index, module } => {
                write!(f, "encoder.layers.{index}.{}", module.as_str())
            }
        }
    }
}

/// A convolution (2D ones have kernel depth 1, stride 1 and padding 0 along depth), with its
/// output requantized and, if `leaky`, LeakyReLU(0.2) applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOp {
    pub input: Source,
    pub in_channels: u16,
    pub out_channels: u16,
    /// (depth, height, width).
    pub kernel: [u8; 3],
    pub stride: [u8; 3],
    pub padding: [u8; 3],
    pub leaky: bool,
    /// The float weights and bias.
    pub checkpoint: CheckpointName,
    /// The ReZero alpha folded into this conv before quantization, if any.
    pub alpha: Option<CheckpointName>,
}

/// Residual add `a + b` of two tensors of one shape, requantized, with LeakyReLU if `leaky`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOp {
    /// The main branch (the format's `a` operand).
    pub a: Source,
    /// The skip branch (`b`).
    pub b: Source,
    pub leaky: bool,
}

/// A layer's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Conv(ConvOp),
    Add(AddOp),
    /// 2x2 average pooling over (height, width); keeps its input's scale and zero point.
    Pool {
        input: Source,
    },
}

impl Op {
    /// The tensors this operation reads.
    pub fn inputs(&self) -> [Option<Source>; 2] {
        match *self {
            Op::Conv(c) => [Some(c.input), None],
            Op::Add(a) => [Some(a.a), Some(a.b)],
            Op::Pool { input } => [Some(input), None],
        }
    }
}

/// One named layer with its output shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOp {
    pub id: LayerId,
    pub op: Op,
    /// (channels, depth, height, width) of this layer's output.
    pub output: Shape,
}

/// A model's layers in execution order; the last layer's output is the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    kind: ModelKind,
    input: Shape,
    layers: heapless::Vec<LayerOp, MAX_LAYERS>,
}

const LEAKY: bool = true;
const LINEAR: bool = false;

impl Topology {
    /// The description of `kind`. Fails with [`WeightsError::Inconsistent`] for hyper-parameters
    /// no model can have (no blocks, more pooled blocks than blocks) and with
    /// [`WeightsError::Layer`] naming the first layer they make impossible (no channels, more than
    /// [`MAX_CHANNELS`], a shape the kernels cannot produce).
    pub fn new(kind: ModelKind) -> Result<Self, WeightsError> {
        match kind {
            ModelKind::BcaeHt {
                channels,
                code_channels,
            } => {
                let mut t = Topology::empty(kind, HT_INPUT);
                let mut x = Source::Input;
                let mut ci = 1u16;
                for (b, &co) in (0u8..).zip(channels.iter()) {
                    let at = |module| CheckpointName::HtBlock { block: b, module };
                    // Kernel (3, 4, 4), stride (1, 2, 2), padding 1: halves azimuth and z.
                    let down = |input, checkpoint| ConvOp {
                        input,
                        in_channels: ci,
                        out_channels: co,
                        kernel: [3, 4, 4],
                        stride: [1, 2, 2],
                        padding: [1, 1, 1],
                        leaky: LEAKY,
                        checkpoint,
                        alpha: None,
                    };
                    let h = t.conv(LayerId::HtMain1(b), down(x, at(Module::MainBlock0)))?;
                    let s = t.conv(LayerId::HtSkip(b), down(x, at(Module::SideBlock0)))?;
                    let m = t.conv(
                        LayerId::HtMain2(b),
                        ConvOp {
                            alpha: Some(at(Module::RezeroAlpha)),
                            ..same_3x3x3(h, co, co, LINEAR, at(Module::MainBlock3))
                        },
                    )?;
                    x = t.add(LayerId::HtAdd(b), m, s)?;
                    ci = co;
                }
                t.conv(
                    LayerId::HtOutput,
                    same_3x3x3(x, ci, code_channels, LINEAR, CheckpointName::HtOutput),
                )?;
                Ok(t)
            }
            ModelKind::Bcae2d { m, d, channels } => {
                if m == 0 || d > m || m as usize > MAX_2D_BLOCKS {
                    return Err(WeightsError::Inconsistent);
                }
                let mut t = Topology::empty(kind, INPUT_2D);
                let mut x = t.conv(
                    LayerId::Input2d,
                    ConvOp {
                        input: Source::Input,
                        in_channels: LAYERS as u16,
                        out_channels: channels,
                        kernel: [1, 7, 7],
                        stride: [1, 1, 1],
                        padding: [0, 3, 3],
                        leaky: LINEAR,
                        checkpoint: CheckpointName::InitConv,
                        alpha: None,
                    },
                )?;
                // The float model's nn.Sequential index, pooling entries included.
                let mut index = 0u8;
                for b in 0..m {
                    if b < d {
                        x = t.pool(LayerId::Pool2d(b), x)?;
                        index += 1;
                    }
                    for r in 0..2 {
                        let at = |module| CheckpointName::Layers2d { index, module };
                        let square = |input, leaky, checkpoint| ConvOp {
                            input,
                            in_channels: channels,
                            out_channels: channels,
                            kernel: [1, 3, 3],
                            stride: [1, 1, 1],
                            padding: [0, 1, 1],
                            leaky,
                            checkpoint,
                            alpha: None,
                        };
                        let h = t.conv(
                            LayerId::Res2dConv1(b, r),
                            square(x, LEAKY, at(Module::Conv1)),
                        )?;
                        let c2 = t.conv(
                            LayerId::Res2dConv2(b, r),
                            ConvOp {
                                alpha: Some(at(Module::RezeroAlpha)),
                                ..square(h, LINEAR, at(Module::Conv2))
                            },
                        )?;
                        x = t.add(LayerId::Res2dAdd(b, r), c2, x)?;
                        index += 1;
                    }
                }
                Ok(t)
            }
        }
    }

    fn empty(kind: ModelKind, input: Shape) -> Self {
        Topology {
            kind,
            input,
            layers: heapless::Vec::new(),
        }
    }

    /// The model this describes.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The network input's shape (channels, depth, height, width).
    pub fn input_shape(&self) -> Shape {
        self.input
    }

    /// The layers in execution order.
    pub fn layers(&self) -> &[LayerOp] {
        &self.layers
    }

    /// The layer named `id`.
    pub fn layer(&self, id: LayerId) -> Option<&LayerOp> {
        self.layers.iter().find(|l| l.id == id)
    }

    /// The layer whose output is the code.
    pub fn code_layer(&self) -> Result<&LayerOp, WeightsError> {
        self.layers
            .last()
            .ok_or(internal("a model description without layers").into())
    }

    /// The code's shape (channels, depth, height, width).
    pub fn code_shape(&self) -> Result<Shape, WeightsError> {
        Ok(self.code_layer()?.output)
    }

    /// The shape of a tensor of this model.
    pub fn shape_of(&self, source: Source) -> Option<Shape> {
        match source {
            Source::Input => Some(self.input),
            Source::Layer(id) => self.layer(id).map(|l| l.output),
        }
    }

    /// The convolutions in execution order.
    pub fn convs(&self) -> impl Iterator<Item = (LayerId, &ConvOp)> + '_ {
        self.layers.iter().filter_map(|l| match &l.op {
            Op::Conv(c) => Some((l.id, c)),
            _ => None,
        })
    }

    fn shape(&self, source: Source) -> Result<Shape, WeightsError> {
        self.shape_of(source)
            .ok_or(internal("a layer reads a tensor described after it").into())
    }

    fn push(&mut self, id: LayerId, op: Op, output: Shape) -> Result<Source, WeightsError> {
        if output.is_empty() || output.w > MAX_ROW {
            return Err(WeightsError::Layer {
                layer: id,
                what: "its output would be empty or wider than 256",
            });
        }
        self.layers
            .push(LayerOp { id, op, output })
            .map_err(|_| internal("a model description longer than MAX_LAYERS"))?;
        Ok(Source::Layer(id))
    }

    fn conv(&mut self, id: LayerId, c: ConvOp) -> Result<Source, WeightsError> {
        let input = self.shape(c.input)?;
        if c.in_channels as usize != input.c {
            return Err(internal("a described conv does not take its input's channels").into());
        }
        if c.out_channels == 0 || c.out_channels > MAX_CHANNELS {
            return Err(WeightsError::Layer {
                layer: id,
                what: "no output channels, or more than 256",
            });
        }
        let dim = |n: usize, axis: usize| {
            let (k, s, p) = (
                c.kernel[axis] as usize,
                c.stride[axis] as usize,
                c.padding[axis] as usize,
            );
            (n + 2 * p)
                .checked_sub(k)
                .map(|span| span / s + 1)
                .ok_or(WeightsError::Layer {
                    layer: id,
                    what: "its kernel is larger than its padded input",
                })
        };
        let output = Shape {
            c: c.out_channels as usize,
            d: dim(input.d, 0)?,
            h: dim(input.h, 1)?,
            w: dim(input.w, 2)?,
        };
        self.push(id, Op::Conv(c), output)
    }

    fn add(&mut self, id: LayerId, a: Source, b: Source) -> Result<Source, WeightsError> {
        let (sa, sb) = (self.shape(a)?, self.shape(b)?);
        if sa != sb {
            return Err(internal("a described residual add has operands of two shapes").into());
        }
        self.push(id, Op::Add(AddOp { a, b, leaky: LEAKY }), sa)
    }

    fn pool(&mut self, id: LayerId, input: Source) -> Result<Source, WeightsError> {
        let s = self.shape(input)?;
        if (s.h | s.w) & 1 != 0 {
            return Err(WeightsError::Layer {
                layer: id,
                what: "it pools a tensor of odd height or width",
            });
        }
        self.push(
            id,
            Op::Pool { input },
            Shape {
                h: s.h / 2,
                w: s.w / 2,
                ..s
            },
        )
    }
}

/// Kernel 3, stride 1, padding 1: keeps the shape.
fn same_3x3x3(
    input: Source,
    in_channels: u16,
    out_channels: u16,
    leaky: bool,
    checkpoint: CheckpointName,
) -> ConvOp {
    ConvOp {
        input,
        in_channels,
        out_channels,
        kernel: [3, 3, 3],
        stride: [1, 1, 1],
        padding: [1, 1, 1],
        leaky,
        checkpoint,
        alpha: None,
    }
}

#[cfg(test)]
mod tests {
    use core::fmt::Write;

    use heapless::{String, Vec};

    use super::*;
    use crate::weights::owned::{OwnedLayer, OwnedModel};
    use crate::weights::{parse, Network};

    /// Every model kind the format can hold, in a sample that covers each BCAE-2D block count
    /// and pooling depth.
    fn kinds() -> Vec<ModelKind, 64> {
        let mut kinds: Vec<ModelKind, 64> = Vec::new();
        let mut add = |kind| kinds.push(kind).expect("the sample fits");
        add(ModelKind::BCAE_HT);
        add(ModelKind::BCAE_PLUS_PLUS);
        add(ModelKind::BcaeHt {
            channels: [1, 2, 3, 4],
            code_channels: 5,
        });
        for m in 1..=MAX_2D_BLOCKS as u8 {
            for d in 0..=m.min(4) {
                add(ModelKind::Bcae2d { m, d, channels: 2 });
            }
        }
        add(ModelKind::Bcae2d {
            m: 4,
            d: 3,
            channels: 32,
        });
        kinds
    }

    /// `x`'s `Display` text, on the stack (tests of a `no_std` crate without `std`).
    fn text(x: impl core::fmt::Display) -> String<256> {
        let mut s = String::new();
        write!(s, "{x}").expect("short enough");
        s
    }

    fn random(kind: ModelKind, seed: u64) -> OwnedModel {
        match kind {
            ModelKind::BcaeHt {
                channels,
                code_channels,
            } => OwnedModel::random_ht(seed, channels, code_channels),
            ModelKind::Bcae2d { m, d, channels } => OwnedModel::random_2d(seed, m, d, channels),
        }
    }

    #[test]
    fn layer_names_are_unique_and_inputs_come_first() {
        for kind in kinds() {
            let t = Topology::new(kind).unwrap();
            let names: Vec<String<256>, 64> = t.layers().iter().map(|l| text(l.id)).collect();
            for (i, name) in names.iter().enumerate() {
                assert!(!names[..i].contains(name), "{kind:?}: a name is used twice");
            }
            assert!(!names.contains(&text(Source::Input)), "{kind:?}");
            for (i, layer) in t.layers().iter().enumerate() {
                for input in layer.op.inputs().into_iter().flatten() {
                    if let Source::Layer(id) = input {
                        let at = t.layers().iter().position(|l| l.id == id);
                        assert!(
                            at.is_some_and(|a| a < i),
                            "{kind:?}: {} reads {id}",
                            layer.id
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_kind_round_trips_through_the_weights_format() {
        for (seed, kind) in (1u64..).zip(kinds()) {
            let t = Topology::new(kind).unwrap();
            let owned = random(kind, seed);
            assert_eq!(owned.layers.len(), t.layers().len(), "{kind:?}");
            let bytes = owned.to_bytes().unwrap();
            let model = parse(&bytes).unwrap();
            assert_eq!(model.kind(), kind);
            assert_eq!(model.topology().unwrap(), t);
            assert_eq!(model.code_shape().unwrap(), t.code_shape().unwrap());
            // Every described layer is in the file where its name says, with its hyper-parameters.
            for layer in t.layers() {
                match layer.op {
                    Op::Conv(op) => {
                        let conv = model.network.conv(layer.id).unwrap();
                        assert_eq!(
                            (conv.in_channels, conv.out_channels, conv.kernel),
                            (op.in_channels, op.out_channels, op.kernel)
                        );
                        assert_eq!((conv.stride, conv.padding), (op.stride, op.padding));
                    }
                    Op::Add(_) => assert!(model.network.add(layer.id).is_some()),
                    Op::Pool { .. } => assert_eq!(model.network.pools(layer.id), Some(true)),
                }
            }
            let back = OwnedModel::from_model(&model).unwrap();
            assert_eq!(back, owned, "{kind:?}");
            assert_eq!(back.to_bytes().unwrap(), bytes, "{kind:?}");
        }
    }

    /// The shipped files are read and written back byte for byte by the description-driven
    /// reader and writer (the format did not change under them).
    #[test]
    fn shipped_weights_are_rewritten_byte_for_byte() {
        let shipped: [&[u8]; 2] = [
            include_bytes!("../../weights/bcae-ht.bcae.postcard"),
            include_bytes!("../../weights/bcae-2d-m4n8d3.bcae.postcard"),
        ];
        for (bytes, kind) in shipped.into_iter().zip([
            ModelKind::BCAE_HT,
            ModelKind::Bcae2d {
                m: 4,
                d: 3,
                channels: 32,
            },
        ]) {
            let model = parse(bytes).unwrap();
            assert_eq!(model.kind(), kind);
            let owned = OwnedModel::from_model(&model).unwrap();
            assert_eq!(owned.to_bytes().unwrap(), bytes, "{kind:?}");
        }
    }

    #[test]
    fn a_layer_that_differs_from_its_description_is_named() {
        for kind in [
            ModelKind::BCAE_HT,
            ModelKind::Bcae2d {
                m: 3,
                d: 2,
                channels: 2,
            },
        ] {
            let good = random(kind, 9);
            let t = Topology::new(kind).unwrap();
            for (id, _) in t.convs() {
                for change in 0..3 {
                    let mut bad = good.clone();
                    let conv = bad.conv_mut(id).unwrap();
                    match change {
                        0 => conv.padding[2] += 1,
                        1 => conv.stride[1] += 1,
                        _ => conv.input_zero_point = conv.input_zero_point.wrapping_add(1),
                    }
                    match bad.to_bytes() {
                        Err(WeightsError::Layer { layer, .. }) => assert_eq!(layer, id),
                        other => panic!("{kind:?}: {id} change {change}: {other:?}"),
                    }
                }
            }
            for layer in t.layers() {
                if let Op::Add(_) = layer.op {
                    let mut bad = good.clone();
                    let params = bad.layers.iter_mut().find(|(id, _)| *id == layer.id);
                    let Some((_, OwnedLayer::Add(a))) = params else {
                        panic!("{kind:?}: no add {}", layer.id);
                    };
                    a.b_zero_point = a.b_zero_point.wrapping_add(1);
                    assert!(
                        matches!(bad.to_bytes(), Err(WeightsError::Layer { layer: l, .. }) if l == layer.id),
                        "{kind:?}: {}",
                        layer.id
                    );
                }
            }
        }
        // The message names the layer as reports do.
        let mut bad = random(ModelKind::BCAE_HT, 3);
        bad.conv_mut(LayerId::HtMain2(2)).unwrap().kernel = [1, 3, 3];
        let message = text(bad.to_bytes().unwrap_err());
        assert!(message.contains("layer block2.main2"), "{message}");
    }

    #[test]
    fn a_file_pooling_where_the_model_does_not_is_refused() {
        let good = random(
            ModelKind::Bcae2d {
                m: 2,
                d: 1,
                channels: 2,
            },
            4,
        );
        let bytes = good.to_bytes().unwrap();
        let mut model = parse(&bytes).unwrap();
        let Network::Bcae2d(net) = &mut model.network else {
            panic!("a BCAE-2D");
        };
        net.blocks[1].pool = true;
        assert_eq!(
            model.validate(),
            Err(WeightsError::Layer {
                layer: LayerId::Pool2d(1),
                what: "the file pools where the model does not, or the reverse",
            })
        );
    }

    #[test]
    fn checkpoint_names_are_the_float_models() {
        let ht = Topology::new(ModelKind::BCAE_HT).unwrap();
        let names: Vec<(String<256>, Option<String<256>>), 3> = ht
            .convs()
            .take(3)
            .map(|(_, c)| (text(c.checkpoint), c.alpha.map(text)))
            .collect();
        let block0 = "encoder.layers.encoder_block_0";
        let expected: [(String<256>, Option<String<256>>); 3] = [
            (text(format_args!("{block0}.main_block.0")), None),
            (text(format_args!("{block0}.side_block.0")), None),
            (
                text(format_args!("{block0}.main_block.3")),
                Some(text(format_args!("{block0}.rezero_alpha"))),
            ),
        ];
        assert_eq!(names.as_slice(), expected.as_slice());
        let output = text(ht.convs().last().unwrap().1.checkpoint);
        assert_eq!(output, "encoder.layers.encoder_output.0");
        // BCAE-2D(4, 8, 3): pools at Sequential indices 0, 3, 6, residual blocks at 1, 2, 4, 5, 7,
        // 8, 9, 10 (trainer/src/models/mod.rs).
        let two = Topology::new(ModelKind::Bcae2d {
            m: 4,
            d: 3,
            channels: 32,
        })
        .unwrap();
        let conv1: Vec<String<256>, 8> = two
            .convs()
            .filter(|(id, _)| matches!(id, LayerId::Res2dConv1(..)))
            .map(|(_, c)| text(c.checkpoint))
            .collect();
        let expected: Vec<String<256>, 8> = [1, 2, 4, 5, 7, 8, 9, 10]
            .iter()
            .map(|i| text(format_args!("encoder.layers.{i}.conv1.0")))
            .collect();
        assert_eq!(conv1, expected);
        assert_eq!(
            text(two.convs().next().unwrap().1.checkpoint),
            "encoder.init_conv"
        );
    }

    #[test]
    fn impossible_kinds_have_no_description() {
        let err = |kind| Topology::new(kind).err();
        assert_eq!(
            err(ModelKind::Bcae2d {
                m: 0,
                d: 0,
                channels: 2
            }),
            Some(WeightsError::Inconsistent)
        );
        assert_eq!(
            err(ModelKind::Bcae2d {
                m: 2,
                d: 3,
                channels: 2
            }),
            Some(WeightsError::Inconsistent)
        );
        assert!(matches!(
            err(ModelKind::BcaeHt {
                channels: [2, 0, 4, 8],
                code_channels: 8
            }),
            Some(WeightsError::Layer {
                layer: LayerId::HtMain1(1),
                ..
            })
        ));
        // Seven poolings of 192 rows: the seventh pools an odd height.
        assert!(matches!(
            err(ModelKind::Bcae2d {
                m: 8,
                d: 7,
                channels: 2
            }),
            Some(WeightsError::Layer {
                layer: LayerId::Pool2d(6),
                ..
            })
        ));
    }
}
