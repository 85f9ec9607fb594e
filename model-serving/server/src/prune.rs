//! Class-token pruning: a vision tower that pools its class token (`Gather(axis = 1, index 0)`
//! of the last hidden state, as CLIP does) throws away what its last layer computed for the other
//! tokens. Here the graph is rewritten before ONNX Runtime loads it so that the nodes whose
//! output only feeds that token compute one token: the last layer's query, attention output and
//! MLP (keys and values still see every token). The embeddings are the same up to float
//! rounding; for ViT-B/32 shapes it saves 6.6% of the multiply-adds.
//!
//! The rewrite works on the protobuf's wire form: nodes it changes are re-encoded, everything
//! else (weights included) is copied byte for byte, so no ONNX schema is compiled in. It only
//! narrows operators whose rows are independent along the pooled axis (element-wise ops,
//! `MatMul`, `LayerNormalization`, `Softmax`, `Transpose`, `Reshape` that keeps the leading
//! axes), and only when it knows the ranks involved; anything else is left as it is, and a
//! `Slice` hands one token to the narrowed nodes. A graph it does not understand (subgraphs,
//! external or sparse weights, nodes out of order) is not touched.

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

/// A rewritten model and what was changed.
#[derive(Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The rewritten `ModelProto`.
    pub bytes: Vec<u8>,
    /// Nodes that now compute the class token only.
    pub narrowed: usize,
    /// `Slice` nodes added where a whole tensor feeds a narrowed node.
    pub slices: usize,
    /// Nodes removed because nothing uses their outputs once the unused graph outputs are gone.
    pub removed: usize,
}

impl std::fmt::Debug for Pruned {
    /// The counts and the model's length, not its hundreds of megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pruned")
            .field("bytes", &format_args!("[{} bytes]", self.bytes.len()))
            .field("narrowed", &self.narrowed)
            .field("slices", &self.slices)
            .field("removed", &self.removed)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed ONNX model: {0}")]
pub struct Malformed(&'static str);

/// Rewrites `model` (a serialised `ModelProto`) to compute its pooled class token only. When
/// the graph has an output named `output`, the other graph outputs are dropped first (a
/// `last_hidden_state` output would need every token). `Ok(None)`: nothing to narrow, or a
/// graph this rewrite does not handle; load the file as it is.
pub fn class_token_only(model: &[u8], output: &str) -> Result<Option<Pruned>, Malformed> {
    let Some(rewrite) = Rewrite::plan(model, output)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(rewrite.encoded_len());
    rewrite
        .write_to(&mut bytes)
        .map_err(|_| Malformed("cannot write to memory"))?;
    Ok(Some(Pruned {
        bytes,
        narrowed: rewrite.narrowed,
        slices: rewrite.slices,
        removed: rewrite.removed,
    }))
}

/// A planned rewrite: the changed pieces encoded, the rest (weights included) borrowed from the
/// model, so that it can be written out without a second copy of the model in memory.
pub struct Rewrite<'a> {
    model: &'a [u8],
    model_fields: Vec<Field<'a>>,
    pieces: Vec<Cow<'a, [u8]>>,
    graph_len: usize,
    pub narrowed: usize,
    pub slices: usize,
    pub removed: usize,
}

impl<'a> Rewrite<'a> {
    /// What [`class_token_only`] would write; `Ok(None)` when it would not.
    pub fn plan(model: &'a [u8], output: &str) -> Result<Option<Self>, Malformed> {
        let model_fields = fields(model)?;
        let Some(graph_bytes) = the_graph(&model_fields) else {
            return Ok(None);
        };
        let Some(graph) = Graph::parse(graph_bytes, output)? else {
            return Ok(None);
        };
        let Some(plan) = graph.plan() else {
            return Ok(None);
        };
        let pieces = graph.write(&plan);
        Ok(Some(Self {
            model,
            model_fields,
            graph_len: pieces.iter().map(|p| p.len()).sum(),
            pieces,
            narrowed: plan.narrowed(),
            slices: plan.slices.len(),
            removed: plan.dead.len(),
        }))
    }

    /// The rewritten model's length in bytes, at most.
    pub fn encoded_len(&self) -> usize {
        let header = 2 * 10; // the graph field's tag and length, at most
        self.model_fields
            .iter()
            .map(|f| {
                if f.number == GRAPH {
                    header + self.graph_len
                } else {
                    f.raw.len()
                }
            })
            .sum()
    }

    /// Moves the graph's initializers that [`weights`] would list for `min_bytes` out of the
    /// model into `location`, a file beside it (ONNX's external data: `data_location` EXTERNAL,
    /// with the file, offset and length): the rewritten model is then a few hundred kilobytes,
    /// and a session handed those weights (`AddInitializer`) never reads their bytes. Returns the
    /// moved weights with their offsets in `location`, in order; `place` says where they are
    /// there.
    pub fn externalize(
        &mut self,
        min_bytes: usize,
        location: &str,
        place: Placement,
    ) -> Result<Vec<(u64, Weight<'a>)>, Malformed> {
        let mut moved = Vec::new();
        let mut end = 0u64;
        for piece in &mut self.pieces {
            let Cow::Borrowed(raw) = *piece else { continue };
            let [field] = fields(raw)?[..] else { continue };
            let (G_INITIALIZER, Value::Bytes(tensor)) = (field.number, field.value) else {
                continue;
            };
            let Some(weight) = Weight::parse(tensor, min_bytes)? else {
                continue;
            };
            let length = weight.bytes.len() as u64;
            let offset = match place {
                Placement::Packed => end.next_multiple_of(EXTERNAL_ALIGN),
                // Both addresses are in `self.model`, the weight's after its start.
                Placement::InModel => (weight.bytes.as_ptr() as usize)
                    .checked_sub(self.model.as_ptr() as usize)
                    .ok_or(Malformed("a weight outside its model"))?
                    as u64,
            };
            end = offset + length;
            let mut proto = Vec::with_capacity(weight.name.len() + 128);
            for f in fields(tensor)? {
                if f.number != T_RAW_DATA {
                    proto.extend_from_slice(f.raw);
                }
            }
            for (key, value) in [
                ("location", location.to_owned()),
                ("offset", offset.to_string()),
                ("length", length.to_string()),
            ] {
                let mut entry = Vec::new();
                put_bytes(&mut entry, 1, key.as_bytes());
                put_bytes(&mut entry, 2, value.as_bytes());
                put_bytes(&mut proto, T_EXTERNAL_DATA, &entry);
            }
            put_uint(&mut proto, T_DATA_LOCATION, EXTERNAL);
            let mut out = Vec::with_capacity(proto.len() + 8);
            put_bytes(&mut out, G_INITIALIZER, &proto);
            *piece = Cow::Owned(out);
            moved.push((offset, weight));
        }
        self.graph_len = self.pieces.iter().map(|p| p.len()).sum();
        Ok(moved)
    }

    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        for field in &self.model_fields {
            if field.number == GRAPH {
                let mut header = Vec::with_capacity(20);
                put_varint(&mut header, u64::from(GRAPH) << 3 | 2);
                put_varint(&mut header, self.graph_len as u64);
                out.write_all(&header)?;
                for piece in &self.pieces {
                    out.write_all(piece)?;
                }
            } else {
                out.write_all(field.raw)?;
            }
        }
        Ok(())
    }
}

/// Where the weights [`Rewrite::externalize`] moves out of a model are in the file beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// One after another, each at a multiple of [`EXTERNAL_ALIGN`] (a page, which ONNX Runtime
    /// may map rather than read): the file [`write_external`] writes.
    Packed,
    /// Where they are in the model the rewrite was planned on: that file itself (a link to it)
    /// serves as the file beside the rewrite, and nothing is written.
    InModel,
}

pub const EXTERNAL_ALIGN: u64 = 4096;

/// Writes the file [`Rewrite::externalize`] moved `weights` to with [`Placement::Packed`]: each
/// at its offset, zeros between.
pub fn write_external(
    weights: &[(u64, Weight<'_>)],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use std::io::Read as _;
    let mut at = 0u64;
    for (offset, weight) in weights {
        let gap = offset.checked_sub(at).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "weights out of order")
        })?;
        std::io::copy(&mut std::io::repeat(0).take(gap), out)?;
        out.write_all(weight.bytes)?;
        at = offset + weight.bytes.len() as u64;
    }
    Ok(())
}

/// The element type of a [`Weight`]: the types whose weights are worth sharing (an fp32 tower's,
/// and a quantised copy's 8-bit ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    F32,
    U8,
    I8,
}

impl WeightType {
    fn from_onnx(data_type: u64) -> Option<Self> {
        match data_type {
            1 => Some(Self::F32),
            2 => Some(Self::U8),
            3 => Some(Self::I8),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::U8 | Self::I8 => 1,
        }
    }
}

/// A graph initializer stored in the file as raw little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weight<'a> {
    pub name: &'a str,
    pub data_type: WeightType,
    pub dims: Vec<i64>,
    pub bytes: &'a [u8],
}

impl<'a> Weight<'a> {
    /// The `TensorProto` `tensor` as a weight of at least `min_bytes`, the one rule [`weights`]
    /// lists and [`Rewrite::externalize`] moves by; `None` when it is not one.
    fn parse(tensor: &'a [u8], min_bytes: usize) -> Result<Option<Self>, Malformed> {
        Ok(Tensor::parse(tensor)?
            .and_then(Tensor::weight)
            .filter(|w| w.bytes.len() >= min_bytes))
    }
}

/// The graph's initializers of at least `min_bytes` whose values are in the file (`raw_data`), of
/// a [`WeightType`], with dims that match their length; the others are left out (ONNX Runtime
/// reads them from the file as usual, and judges them). None from a file the rewrite would not
/// read either (two graph fields).
pub fn weights(model: &[u8], min_bytes: usize) -> Result<Vec<Weight<'_>>, Malformed> {
    let Some(graph) = the_graph(&fields(model)?) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for field in fields(graph)? {
        if let (G_INITIALIZER, Value::Bytes(tensor)) = (field.number, field.value)
            && let Some(weight) = Weight::parse(tensor, min_bytes)?
        {
            out.push(weight);
        }
    }
    Ok(out)
}

/// The model's one graph; `None` when it has none or several (a protobuf reader would merge
/// them: not a file worth rewriting).
fn the_graph<'a>(model_fields: &[Field<'a>]) -> Option<&'a [u8]> {
    let graphs: Vec<&[u8]> = model_fields
        .iter()
        .filter_map(|f| match (f.number, f.value) {
            (GRAPH, Value::Bytes(b)) => Some(b),
            _ => None,
        })
        .collect();
    match graphs.as_slice() {
        [graph] => Some(graph),
        _ => None,
    }
}

/// The fields of a `TensorProto` this module reads.
#[derive(Debug, Default)]
struct Tensor<'a> {
    name: &'a str,
    data_type: u64,
    dims: Vec<i64>,
    raw: Option<&'a [u8]>,
    int64s: Vec<i64>,
}

impl<'a> Tensor<'a> {
    /// `None` for data stored outside the file.
    fn parse(bytes: &'a [u8]) -> Result<Option<Self>, Malformed> {
        let mut t = Tensor::default();
        for f in fields(bytes)? {
            match (f.number, f.value) {
                (T_DIMS, v) => push_ints(v, &mut t.dims)?,
                (T_DATA_TYPE, Value::Varint(v)) => t.data_type = v,
                (T_INT64_DATA, v) => push_ints(v, &mut t.int64s)?,
                (T_NAME, v) => t.name = text(v)?,
                (T_RAW_DATA, Value::Bytes(b)) => t.raw = Some(b),
                (T_DATA_LOCATION, Value::Varint(EXTERNAL)) => return Ok(None),
                _ => {}
            }
        }
        Ok(Some(t))
    }

    /// As a [`Weight`]: named, of a [`WeightType`], with raw bytes as long as its dims say.
    fn weight(self) -> Option<Weight<'a>> {
        let data_type = WeightType::from_onnx(self.data_type)?;
        let bytes = self.raw?;
        // Dims come from the file: any i64, so the product is checked.
        let len = self.dims.iter().try_fold(data_type.size(), |n, &d| {
            usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
        });
        (len == Some(bytes.len()) && !self.name.is_empty()).then_some(Weight {
            name: self.name,
            data_type,
            dims: self.dims,
            bytes,
        })
    }
}

// Field numbers of onnx.proto.
const GRAPH: u32 = 7; // ModelProto.graph
const G_NODE: u32 = 1;
const G_INITIALIZER: u32 = 5;
const G_INPUT: u32 = 11;
const G_OUTPUT: u32 = 12;
const G_VALUE_INFO: u32 = 13;
const G_SPARSE_INITIALIZER: u32 = 15;
const N_INPUT: u32 = 1;
const N_OUTPUT: u32 = 2;
const N_NAME: u32 = 3;
const N_OP_TYPE: u32 = 4;
const N_ATTRIBUTE: u32 = 5;
const N_DOMAIN: u32 = 7;
const A_NAME: u32 = 1;
const A_I: u32 = 3;
const A_T: u32 = 5;
const A_G: u32 = 6;
const A_INTS: u32 = 8;
const A_GRAPHS: u32 = 11;
const T_DIMS: u32 = 1;
const T_DATA_TYPE: u32 = 2;
const T_INT64_DATA: u32 = 7;
const T_NAME: u32 = 8;
const T_RAW_DATA: u32 = 9;
const T_EXTERNAL_DATA: u32 = 13;
const T_DATA_LOCATION: u32 = 14;
const V_NAME: u32 = 1;
const V_TYPE: u32 = 2;
const TYPE_TENSOR: u32 = 1;
const TENSOR_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 1;
const INT64: u64 = 7;
const EXTERNAL: u64 = 1;

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
}

#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    number: u32,
    value: Value<'a>,
    /// The whole field, tag included, for copying it unchanged.
    raw: &'a [u8],
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or(Malformed("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed("varint longer than 10 bytes"))
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, Malformed> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = varint(buf, &mut pos)?;
        let number = u32::try_from(tag >> 3).map_err(|_| Malformed("field number"))?;
        let take = |pos: &mut usize, n: usize| -> Result<&[u8], Malformed> {
            let end = pos.checked_add(n).filter(|&e| e <= buf.len());
            let end = end.ok_or(Malformed("field runs past its message"))?;
            let bytes = &buf[*pos..end];
            *pos = end;
            Ok(bytes)
        };
        let value = match tag & 7 {
            0 => Value::Varint(varint(buf, &mut pos)?),
            1 => {
                take(&mut pos, 8)?;
                Value::Fixed
            }
            2 => {
                let len =
                    usize::try_from(varint(buf, &mut pos)?).map_err(|_| Malformed("length"))?;
                Value::Bytes(take(&mut pos, len)?)
            }
            5 => {
                take(&mut pos, 4)?;
                Value::Fixed
            }
            _ => return Err(Malformed("unsupported wire type")),
        };
        out.push(Field {
            number,
            value,
            raw: &buf[start..pos],
        });
    }
    Ok(out)
}

fn text(value: Value<'_>) -> Result<&str, Malformed> {
    match value {
        Value::Bytes(b) => std::str::from_utf8(b).map_err(|_| Malformed("a name is not UTF-8")),
        _ => Err(Malformed("a string field has a numeric wire type")),
    }
}

/// A repeated int64, packed or not.
fn push_ints(value: Value<'_>, out: &mut Vec<i64>) -> Result<(), Malformed> {
    match value {
        Value::Varint(v) => out.push(v as i64),
        Value::Bytes(b) => {
            let mut pos = 0;
            while pos < b.len() {
                out.push(varint(b, &mut pos)? as i64);
            }
        }
        Value::Fixed => return Err(Malformed("an int64 field has a fixed wire type")),
    }
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_varint(out, u64::from(number) << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_uint(out: &mut Vec<u8>, number: u32, v: u64) {
    put_varint(out, u64::from(number) << 3);
    put_varint(out, v);
}

/// A constant: an initializer or a `Constant` node's value.
#[derive(Debug, Default, Clone)]
struct Constant {
    dims: Vec<i64>,
    /// Its values when it is a small int64 tensor (shapes, axes, indices).
    ints: Option<Vec<i64>>,
}

impl Constant {
    /// Parses a `TensorProto`; `None` for data stored outside the file.
    fn parse(bytes: &[u8]) -> Result<Option<(String, Self)>, Malformed> {
        let Some(Tensor {
            name,
            data_type,
            dims,
            raw,
            int64s,
        }) = Tensor::parse(bytes)?
        else {
            return Ok(None);
        };
        let mut c = Constant { dims, ints: None };
        // Dims come from the file: any i64 (make fuzz found a product that overflowed).
        let count = c.dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
        if let Some(count) = count.filter(|n| (0..=64).contains(n))
            && data_type == INT64
        {
            c.ints = match raw {
                Some(b) => Some(
                    b.chunks_exact(8)
                        .map(|w| i64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
                        .collect(),
                ),
                None => Some(int64s),
            }
            .filter(|v: &Vec<i64>| v.len() as i64 == count);
        }
        Ok(Some((name.to_owned(), c)))
    }
}

#[derive(Debug, Default)]
struct Node<'a> {
    raw: &'a [u8],
    op: &'a str,
    inputs: Vec<&'a str>,
    outputs: Vec<&'a str>,
    ints: HashMap<&'a str, i64>,
    lists: HashMap<&'a str, Vec<i64>>,
    /// A `Constant` node's value.
    value: Option<Constant>,
}

impl<'a> Node<'a> {
    /// `None` for a node this rewrite must not reason about: one with a subgraph (its inner
    /// nodes read tensors its inputs do not name).
    fn parse(raw: &'a [u8]) -> Result<Option<Self>, Malformed> {
        let mut node = Node {
            raw,
            ..Node::default()
        };
        let mut domain = "";
        for f in fields(raw)? {
            match f.number {
                N_INPUT => node.inputs.push(text(f.value)?),
                N_OUTPUT => node.outputs.push(text(f.value)?),
                N_OP_TYPE => node.op = text(f.value)?,
                N_DOMAIN => domain = text(f.value)?,
                N_ATTRIBUTE => {
                    let Value::Bytes(attr) = f.value else {
                        return Err(Malformed("an attribute is not a message"));
                    };
                    let (mut name, mut i, mut ints) = ("", None, Vec::new());
                    for a in fields(attr)? {
                        match (a.number, a.value) {
                            (A_NAME, v) => name = text(v)?,
                            (A_I, Value::Varint(v)) => i = Some(v as i64),
                            (A_INTS, v) => push_ints(v, &mut ints)?,
                            (A_T, Value::Bytes(t)) => {
                                node.value = Constant::parse(t)?.map(|(_, c)| c);
                            }
                            (A_G | A_GRAPHS, _) => return Ok(None),
                            _ => {}
                        }
                    }
                    if let Some(i) = i {
                        node.ints.insert(name, i);
                    }
                    if !ints.is_empty() {
                        node.lists.insert(name, ints);
                    }
                }
                _ => {}
            }
        }
        if !domain.is_empty() && domain != "ai.onnx" {
            node.op = ""; // a custom operator: never narrowed
        }
        Ok(Some(node))
    }
}

/// What a consumer needs of one of its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    All,
    /// Index 0 of this axis only.
    Token(usize),
}

struct Graph<'a> {
    fields: Vec<Field<'a>>,
    nodes: Vec<Node<'a>>,
    constants: HashMap<String, Constant>,
    inputs: HashMap<&'a str, Option<usize>>,
    outputs: Vec<(&'a str, &'a [u8])>,
    /// The graph outputs kept (all of them unless one is named as asked).
    kept: HashSet<&'a str>,
}

impl<'a> Graph<'a> {
    fn parse(bytes: &'a [u8], output: &str) -> Result<Option<Self>, Malformed> {
        let mut graph = Graph {
            fields: fields(bytes)?,
            nodes: Vec::new(),
            constants: HashMap::new(),
            inputs: HashMap::new(),
            outputs: Vec::new(),
            kept: HashSet::new(),
        };
        for f in graph.fields.clone() {
            let Value::Bytes(b) = f.value else { continue };
            match f.number {
                G_NODE => match Node::parse(b)? {
                    Some(node) => graph.nodes.push(node),
                    None => return Ok(None),
                },
                G_INITIALIZER => match Constant::parse(b)? {
                    Some((name, c)) => {
                        graph.constants.insert(name, c);
                    }
                    None => return Ok(None),
                },
                G_SPARSE_INITIALIZER => return Ok(None),
                G_INPUT => {
                    let (name, rank) = value_info(b)?;
                    graph.inputs.insert(name, rank);
                }
                G_OUTPUT => graph.outputs.push((value_info(b)?.0, f.raw)),
                _ => {}
            }
        }
        for node in &mut graph.nodes {
            if node.op == "Constant"
                && let (Some(value), [out]) = (node.value.take(), node.outputs.as_slice())
            {
                graph.constants.insert((*out).to_owned(), value);
            }
        }
        graph.kept = match graph.outputs.iter().find(|(name, _)| *name == output) {
            Some((name, _)) => HashSet::from([*name]),
            None => graph.outputs.iter().map(|(name, _)| *name).collect(),
        };
        Ok(Some(graph))
    }

    fn constant(&self, name: &str) -> Option<&Constant> {
        self.constants.get(name)
    }

    /// The rank of every tensor whose rank follows from the graph's inputs and constants.
    /// `None` when a node reads a tensor no earlier node makes (the file is not in order) or
    /// makes a tensor already made.
    fn ranks(&self) -> Option<HashMap<&str, usize>> {
        let mut ranks: HashMap<&str, usize> = HashMap::new();
        let mut known: HashSet<&str> = HashSet::from([""]);
        for (name, rank) in &self.inputs {
            known.insert(name);
            if let Some(r) = rank {
                ranks.insert(name, *r);
            }
        }
        for (name, c) in &self.constants {
            ranks.insert(name.as_str(), c.dims.len());
        }
        let names: HashSet<&str> = self.constants.keys().map(String::as_str).collect();
        for node in &self.nodes {
            if !node
                .inputs
                .iter()
                .all(|i| known.contains(i) || names.contains(i))
            {
                return None;
            }
            // Each tensor made once (ONNX's rule): else a name would stand for two shapes.
            for output in &node.outputs {
                if !output.is_empty() && (!known.insert(output) || self.inputs.contains_key(output))
                {
                    return None;
                }
            }
            let rank = |i: usize| node.inputs.get(i).and_then(|n| ranks.get(n)).copied();
            let ints = |i: usize| {
                node.inputs
                    .get(i)
                    .and_then(|n| self.constant(n))
                    .and_then(|c| c.ints.as_ref())
            };
            let out = match node.op {
                op if UNARY.contains(&op) || SAME_RANK.contains(&op) => rank(0)
                    .filter(|_| node.op != "ReduceMean" || node.ints.get("keepdims") != Some(&0)),
                op if BINARY.contains(&op) => rank(0).zip(rank(1)).map(|(a, b)| a.max(b)),
                "MatMul" => rank(0)
                    .zip(rank(1))
                    .filter(|(a, b)| *a >= 2 && *b >= 2)
                    .map(|(a, b)| a.max(b)),
                "Transpose" => node.lists.get("perm").map(Vec::len).or(rank(0)),
                "Reshape" => ints(1).map(Vec::len),
                "Concat" => (0..node.inputs.len()).find_map(rank),
                "Gather" => rank(0)
                    .zip(rank(1))
                    .and_then(|(d, i)| (d + i).checked_sub(1)),
                "Shape" => Some(1),
                "Unsqueeze" => rank(0).zip(ints(1)).map(|(r, a)| r + a.len()),
                "Squeeze" => rank(0)
                    .zip(ints(1))
                    .and_then(|(r, a)| r.checked_sub(a.len())),
                "Constant" => node.value.as_ref().map(|c| c.dims.len()),
                _ => None,
            };
            if let (Some(r), Some(o)) = (out, node.outputs.first()) {
                ranks.insert(o, r);
            }
        }
        Some(ranks)
    }

    /// The pooled class token: `Gather(data, 0, axis = 1)` of a tensor of rank ≥ 3.
    fn is_pool(&self, node: &Node<'_>, ranks: &HashMap<&str, usize>) -> bool {
        node.op == "Gather"
            && node.ints.get("axis") == Some(&1)
            && node.inputs.len() == 2
            && ranks.get(node.inputs[0]).is_some_and(|&r| r >= 3)
            && self
                .constant(node.inputs[1])
                .is_some_and(|c| c.dims.is_empty() && c.ints.as_deref() == Some(&[0]))
    }

    /// What `node`, asked for index 0 of `axis` of its output, needs of each input; `None`
    /// when it cannot compute that token alone.
    fn narrow(
        &self,
        node: &Node<'_>,
        axis: usize,
        ranks: &HashMap<&str, usize>,
    ) -> Option<Vec<Need>> {
        let rank_of = |name: &str| ranks.get(name).copied();
        let r = rank_of(node.outputs.first()?)?;
        if axis >= r {
            return None;
        }
        let norm = |a: i64| usize::try_from(if a < 0 { a + r as i64 } else { a }).ok();
        let rest = |n: usize| std::iter::repeat_n(Need::All, n);
        match node.op {
            "LayerNormalization" | "Softmax" | "ReduceMean" => {
                let reduced = match node.op {
                    "ReduceMean" => node.lists.get("axes")?.iter().map(|&a| norm(a)).min()??,
                    _ => norm(node.ints.get("axis").copied().unwrap_or(-1))?,
                };
                (axis < reduced
                    && node.inputs.len() <= 3
                    && (node.op != "ReduceMean" || node.inputs.len() == 1))
                    .then(|| {
                        std::iter::once(Need::Token(axis))
                            .chain(rest(node.inputs.len().saturating_sub(1)))
                            .collect()
                    })
            }
            op if UNARY.contains(&op) => {
                (node.inputs.len() == 1).then_some(vec![Need::Token(axis)])
            }
            // Static int8 (QDQ): element-wise when scale and zero point are one number each.
            "QuantizeLinear" | "DequantizeLinear" => node
                .inputs
                .iter()
                .skip(1)
                .all(|i| i.is_empty() || self.constant(i).is_some_and(|c| c.dims.is_empty()))
                .then(|| {
                    std::iter::once(Need::Token(axis))
                        .chain(rest(node.inputs.len().saturating_sub(1)))
                        .collect()
                }),
            op if BINARY.contains(&op) => node
                .inputs
                .iter()
                .map(|input| {
                    let offset = r.checked_sub(rank_of(input)?)?;
                    let Some(own) = axis.checked_sub(offset) else {
                        return Some(Need::All); // broadcast along the axis
                    };
                    match self.constant(input) {
                        Some(c) if c.dims.get(own) == Some(&1) => Some(Need::All),
                        _ => Some(Need::Token(own)),
                    }
                })
                .collect(),
            "MatMul" => {
                let (a, b) = (
                    rank_of(node.inputs.first()?)?,
                    rank_of(node.inputs.get(1)?)?,
                );
                if a < 2 || b < 2 || a.max(b) != r || axis + 1 >= r {
                    return None; // the output's columns come from every row of B
                }
                if axis + 2 == r {
                    Some(vec![Need::Token(a - 2), Need::All])
                } else {
                    // A batch axis: each side on its own aligned axis, if it has one.
                    let on = |own: usize| axis.checked_sub(r - own).map_or(Need::All, Need::Token);
                    Some(vec![on(a), on(b)])
                }
            }
            "Transpose" => {
                let perm = node.lists.get("perm")?;
                let from = usize::try_from(*perm.get(axis)?).ok()?;
                Some(vec![Need::Token(from)])
            }
            "Reshape" => {
                let shape = self.constant(node.inputs.get(1)?)?.ints.as_ref()?;
                let keeps = shape.get(..=axis)?.iter().all(|&d| d == 0);
                let input = rank_of(node.inputs.first()?)?;
                (keeps && input > axis && node.ints.get("allowzero").copied().unwrap_or(0) == 0)
                    .then_some(vec![Need::Token(axis), Need::All])
            }
            _ => None,
        }
    }

    /// Which nodes compute one token, which are dead, where a `Slice` feeds a narrowed node.
    fn plan(&self) -> Option<Plan> {
        let ranks = self.ranks()?;
        // Each tensor's needs, gathered from its consumers: the file lists nodes in order (checked
        // by `ranks`), so walking it backwards hears every consumer before the producer.
        let mut needs: HashMap<&str, Vec<Need>> = HashMap::new();
        for name in &self.kept {
            needs.entry(name).or_default().push(Need::All);
        }
        let mut plan = Plan::default();
        let mut asks = vec![Vec::new(); self.nodes.len()];
        for (index, node) in self.nodes.iter().enumerate().rev() {
            let wanted: Vec<&Need> = node
                .outputs
                .iter()
                .flat_map(|o| needs.get(o).into_iter().flatten())
                .collect();
            if wanted.is_empty() {
                plan.dead.insert(index);
                continue;
            }
            let only_first = node.outputs.iter().skip(1).all(|o| !needs.contains_key(o));
            let asked = if self.is_pool(node, &ranks) {
                Some(vec![Need::Token(1), Need::All])
            } else {
                match wanted.as_slice() {
                    [Need::Token(axis), more @ ..]
                        if only_first && more.iter().all(|n| **n == Need::Token(*axis)) =>
                    {
                        let narrowed = self.narrow(node, *axis, &ranks);
                        if narrowed.is_some() {
                            plan.narrowed.insert(index);
                        }
                        narrowed
                    }
                    _ => None,
                }
            };
            let asked = asked.unwrap_or_else(|| vec![Need::All; node.inputs.len()]);
            for (input, need) in node.inputs.iter().zip(&asked) {
                if !input.is_empty() {
                    needs.entry(input).or_default().push(*need);
                }
            }
            asks[index] = asked;
        }
        if plan.narrowed.is_empty() {
            return None;
        }
        // A narrowed consumer reads its input directly when the producer is narrowed on the
        // same axis, else through a Slice.
        let producer: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.outputs.iter().map(move |o| (*o, i)))
            .collect();
        let mut taken: HashSet<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.outputs.iter().map(|o| (*o).to_owned()))
            .collect();
        taken.extend(self.constants.keys().cloned());
        taken.extend(self.inputs.keys().map(|n| (*n).to_owned()));
        let fresh = |taken: &mut HashSet<String>, base: String| {
            let mut name = base.clone();
            let mut n = 0;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{base}_{n}");
            }
            name
        };
        plan.starts = fresh(&mut taken, "class_token/starts".into());
        plan.ends = fresh(&mut taken, "class_token/ends".into());
        let mut made: HashMap<(String, usize), usize> = HashMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if plan.dead.contains(&index) {
                continue;
            }
            for (slot, (input, need)) in node.inputs.iter().zip(&asks[index]).enumerate() {
                let Need::Token(axis) = *need else { continue };
                let direct = producer
                    .get(input)
                    .is_some_and(|p| plan.narrowed.contains(p));
                if direct {
                    continue;
                }
                let key = ((*input).to_owned(), axis);
                let slice = match made.get(&key) {
                    Some(&at) => &plan.slices[at],
                    None => {
                        if let Entry::Vacant(entry) = plan.axes.entry(axis) {
                            entry.insert(fresh(&mut taken, format!("class_token/axis{axis}")));
                        }
                        let output = fresh(&mut taken, format!("{input}/class_token"));
                        made.insert(key, plan.slices.len());
                        plan.slices.push(Slice {
                            input: (*input).to_owned(),
                            axis,
                            output,
                            before: index,
                        });
                        &plan.slices[plan.slices.len() - 1]
                    }
                };
                plan.renamed.insert((index, slot), slice.output.clone());
            }
        }
        plan.changed_shape = plan
            .narrowed
            .iter()
            .flat_map(|&i| self.nodes[i].outputs.iter().map(|o| (*o).to_owned()))
            .chain(
                plan.dead
                    .iter()
                    .flat_map(|&i| self.nodes[i].outputs.iter().map(|o| (*o).to_owned())),
            )
            .collect();
        Some(plan)
    }

    /// The rewritten graph as pieces: the unchanged fields (weights included) borrowed, the
    /// changed ones encoded anew; the caller copies them once into the model.
    fn write(&self, plan: &Plan) -> Vec<Cow<'a, [u8]>> {
        let field = |number: u32, bytes: &[u8]| {
            let mut out = Vec::with_capacity(bytes.len() + 8);
            put_bytes(&mut out, number, bytes);
            Cow::Owned(out)
        };
        let mut out = Vec::with_capacity(self.fields.len() + plan.slices.len() + 8);
        let mut index = 0;
        for f in &self.fields {
            match f.number {
                G_NODE => {
                    for slice in plan.slices.iter().filter(|s| s.before == index) {
                        let axis = &plan.axes[&slice.axis];
                        let node =
                            slice_node(&slice.input, &plan.starts, &plan.ends, axis, &slice.output);
                        out.push(field(G_NODE, &node));
                    }
                    if !plan.dead.contains(&index) {
                        out.push(match self.renamed_node(index, plan) {
                            Some(node) => field(G_NODE, &node),
                            None => Cow::Borrowed(f.raw),
                        });
                    }
                    index += 1;
                }
                G_OUTPUT => {
                    let name = self
                        .outputs
                        .iter()
                        .find(|(_, raw)| *raw == f.raw)
                        .map(|(n, _)| *n);
                    if name.is_some_and(|n| self.kept.contains(n)) {
                        out.push(Cow::Borrowed(f.raw));
                    }
                }
                G_VALUE_INFO => {
                    let Value::Bytes(b) = f.value else {
                        continue;
                    };
                    let stale = value_info(b).is_ok_and(|(n, _)| plan.changed_shape.contains(n));
                    if !stale {
                        out.push(Cow::Borrowed(f.raw));
                    }
                }
                _ => out.push(Cow::Borrowed(f.raw)),
            }
        }
        out.push(field(G_INITIALIZER, &int64_tensor(&plan.starts, 0)));
        out.push(field(G_INITIALIZER, &int64_tensor(&plan.ends, 1)));
        for (axis, name) in &plan.axes {
            out.push(field(G_INITIALIZER, &int64_tensor(name, *axis as i64)));
        }
        out
    }

    /// The node re-encoded with its renamed inputs; `None` when none is renamed.
    fn renamed_node(&self, index: usize, plan: &Plan) -> Option<Vec<u8>> {
        let node = &self.nodes[index];
        if !(0..node.inputs.len()).any(|slot| plan.renamed.contains_key(&(index, slot))) {
            return None;
        }
        let mut out = Vec::with_capacity(node.raw.len() + 64);
        let mut slot = 0;
        for f in fields(node.raw).ok()? {
            if f.number == N_INPUT {
                match plan.renamed.get(&(index, slot)) {
                    Some(name) => put_bytes(&mut out, N_INPUT, name.as_bytes()),
                    None => out.extend_from_slice(f.raw),
                }
                slot += 1;
            } else {
                out.extend_from_slice(f.raw);
            }
        }
        Some(out)
    }
}

const UNARY: &[&str] = &[
    "Identity",
    "Cast",
    "Sigmoid",
    "Relu",
    "Tanh",
    "Erf",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Exp",
    "Abs",
    "Gelu",
];
const SAME_RANK: &[&str] = &[
    "LayerNormalization",
    "Softmax",
    "Conv",
    "Slice",
    "ReduceMean",
    "QuantizeLinear",
    "DequantizeLinear",
];
const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow"];

/// A `ValueInfoProto`'s name and, when its type says, its rank.
fn value_info(bytes: &[u8]) -> Result<(&str, Option<usize>), Malformed> {
    let (mut name, mut rank) = ("", None);
    for f in fields(bytes)? {
        match (f.number, f.value) {
            (V_NAME, v) => name = text(v)?,
            (V_TYPE, Value::Bytes(t)) => rank = tensor_rank(t)?,
            _ => {}
        }
    }
    Ok((name, rank))
}

fn tensor_rank(type_proto: &[u8]) -> Result<Option<usize>, Malformed> {
    fn sub(bytes: &[u8], number: u32) -> Result<Option<&[u8]>, Malformed> {
        Ok(fields(bytes)?.into_iter().find_map(|f| match f.value {
            Value::Bytes(b) if f.number == number => Some(b),
            _ => None,
        }))
    }
    let Some(tensor) = sub(type_proto, TYPE_TENSOR)? else {
        return Ok(None);
    };
    let Some(shape) = sub(tensor, TENSOR_SHAPE)? else {
        return Ok(None);
    };
    Ok(Some(
        fields(shape)?
            .iter()
            .filter(|f| f.number == SHAPE_DIM)
            .count(),
    ))
}

fn int64_tensor(name: &str, value: i64) -> Vec<u8> {
    let mut t = Vec::new();
    put_uint(&mut t, T_DIMS, 1);
    put_uint(&mut t, T_DATA_TYPE, INT64);
    put_bytes(&mut t, T_NAME, name.as_bytes());
    put_bytes(&mut t, T_RAW_DATA, &value.to_le_bytes());
    t
}

fn slice_node(input: &str, starts: &str, ends: &str, axes: &str, output: &str) -> Vec<u8> {
    let mut n = Vec::new();
    for i in [input, starts, ends, axes] {
        put_bytes(&mut n, N_INPUT, i.as_bytes());
    }
    put_bytes(&mut n, N_OUTPUT, output.as_bytes());
    put_bytes(&mut n, N_NAME, output.as_bytes());
    put_bytes(&mut n, N_OP_TYPE, b"Slice");
    n
}

#[derive(Debug, Default)]
struct Plan {
    narrowed: HashSet<usize>,
    dead: HashSet<usize>,
    slices: Vec<Slice>,
    /// (node, input slot) → the tensor it now reads.
    renamed: HashMap<(usize, usize), String>,
    starts: String,
    ends: String,
    axes: BTreeMap<usize, String>,
    /// Tensors whose shape changed or that are gone: their `value_info` is dropped.
    changed_shape: HashSet<String>,
}

impl Plan {
    fn narrowed(&self) -> usize {
        self.narrowed.len()
    }
}

#[derive(Debug)]
struct Slice {
    input: String,
    axis: usize,
    output: String,
    /// The first node that reads it.
    before: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_reader_refuses_what_runs_past_its_end() {
        // Field 7, length-delimited, 5 bytes announced, 2 present.
        assert_eq!(
            fields(&[0x3a, 5, 1, 2]).err(),
            Some(Malformed("field runs past its message"))
        );
        // A varint that never ends, and one longer than 10 bytes.
        assert!(fields(&[0x08, 0x80, 0x80]).is_err());
        assert!(
            fields(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .is_err()
        );
        // Wire types 3 and 4 (groups) are not in ONNX files.
        assert_eq!(
            fields(&[0x0b]).err(),
            Some(Malformed("unsupported wire type"))
        );
        // A length of 2^64 - 1 does not overflow.
        let mut huge = vec![0x3a];
        put_varint(&mut huge, u64::MAX);
        assert!(fields(&huge).is_err());
    }

    #[test]
    fn what_the_writer_encodes_the_reader_reads_back() {
        let tensor = int64_tensor("class_token/axis1", 1);
        let (name, constant) = Constant::parse(&tensor)
            .expect("parse")
            .expect("inline data");
        assert_eq!(name, "class_token/axis1");
        assert_eq!(constant.dims, [1]);
        assert_eq!(constant.ints.as_deref(), Some(&[1][..]));
        let node = slice_node("x", "s", "e", "a", "x/class_token");
        let node = Node::parse(&node).expect("parse").expect("no subgraph");
        assert_eq!(
            (node.op, node.inputs, node.outputs),
            ("Slice", vec!["x", "s", "e", "a"], vec!["x/class_token"])
        );
        // Dims whose product overflows an i64 (found by `make fuzz FUZZ_TARGET=prune`).
        let mut huge = Vec::new();
        for _ in 0..2 {
            put_uint(&mut huge, T_DIMS, 1 << 40);
        }
        put_uint(&mut huge, T_DATA_TYPE, INT64);
        let (_, constant) = Constant::parse(&huge).expect("parse").expect("inline");
        assert_eq!(constant.ints, None);
        // A model with nothing but an empty graph: nothing to narrow.
        let mut model = Vec::new();
        put_bytes(&mut model, GRAPH, &[]);
        assert_eq!(class_token_only(&model, "image_embeds"), Ok(None));
    }

    fn tensor(name: &str, data_type: u64, dims: &[u64], raw: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            put_uint(&mut t, T_DIMS, d);
        }
        put_uint(&mut t, T_DATA_TYPE, data_type);
        put_bytes(&mut t, T_NAME, name.as_bytes());
        put_bytes(&mut t, T_RAW_DATA, raw);
        t
    }

    #[test]
    fn weights_lists_the_big_raw_initializers_that_match_their_dims() {
        let f32s: Vec<u8> = (0..6u8).flat_map(|i| f32::from(i).to_le_bytes()).collect();
        let mut external = tensor("external", 1, &[2, 3], &f32s);
        put_uint(&mut external, T_DATA_LOCATION, EXTERNAL);
        let mut graph = Vec::new();
        for t in [
            tensor("w", 1, &[2, 3], &f32s),
            tensor("q", 2, &[8], &[7; 8]),
            tensor("small", 1, &[1], &f32s[..4]),
            tensor("shape", 7, &[3], &[0; 24]),
            tensor("short", 1, &[2, 4], &f32s),
            tensor("", 1, &[2, 3], &f32s),
            tensor("huge", 3, &[1 << 40, 1 << 40], &[0; 8]),
            external,
        ] {
            put_bytes(&mut graph, G_INITIALIZER, &t);
        }
        let mut model = Vec::new();
        put_bytes(&mut model, GRAPH, &graph);
        let found = weights(&model, 8).expect("weights");
        assert_eq!(
            found,
            vec![
                Weight {
                    name: "w",
                    data_type: WeightType::F32,
                    dims: vec![2, 3],
                    bytes: &f32s,
                },
                Weight {
                    name: "q",
                    data_type: WeightType::U8,
                    dims: vec![8],
                    bytes: &[7; 8],
                },
            ]
        );
        assert_eq!(weights(&model, 0).expect("weights").len(), 3);
        // Two graph fields: a file the rewrite leaves alone shares nothing either.
        put_bytes(&mut model, GRAPH, &graph);
        assert_eq!(weights(&model, 0), Ok(Vec::new()));
        assert!(weights(&[0x3a, 5, 1], 0).is_err());
    }
}
