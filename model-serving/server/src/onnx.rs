//! ONNX Runtime sessions for the two towers. Loaded once; each is driven by one batch worker
//! thread, which owns it (`Session::run` needs `&mut`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::value::{DynValue, Tensor};

use crate::prune;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(
        "ONNX Runtime library not found at {0} (set ORT_DYLIB_PATH to libonnxruntime.so, or run `make ort`)"
    )]
    MissingLibrary(PathBuf),
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Library { path: PathBuf, message: String },
    #[error("cannot load {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Signature { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Run(String),
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment (the runtime allows one per process), loaded from
/// `library` on first use. Later calls return the same environment whatever path they pass.
pub fn environment(library: &Path) -> Result<Environment, OnnxError> {
    let result = ENVIRONMENT.get_or_init(|| {
        if !library.is_file() {
            return Err(format!("missing:{}", library.display()));
        }
        let builder = ort::init_from(library).map_err(|e| e.to_string())?;
        builder
            .with_name("fashion-search")
            .build()
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(env) => Ok(env.clone()),
        Err(message) if message.starts_with("missing:") => {
            Err(OnnxError::MissingLibrary(library.to_owned()))
        }
        Err(message) => Err(OnnxError::Library {
            path: library.to_owned(),
            message: message.clone(),
        }),
    }
}

/// How a session uses threads, set explicitly rather than left to ONNX Runtime's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threading {
    /// The intra-op pool: threads that split one run's operators; 0 = one per core.
    pub intra: usize,
    /// Whether idle pool threads spin waiting for the next operator (quicker hand-off between
    /// operators; the spinning takes a core that decoding and HTTP could use).
    pub spin: bool,
    /// Whether the pool threads stop spinning as soon as a run ends (ONNX Runtime's
    /// `session.force_spinning_stop`): for a session whose cores other sessions use next.
    pub stop_spinning: bool,
}

impl Default for Threading {
    /// ONNX Runtime's own defaults: one intra-op thread per core, spinning.
    fn default() -> Self {
        Self {
            intra: 0,
            spin: true,
            stop_spinning: false,
        }
    }
}

fn session(
    env: &Environment,
    path: &Path,
    threading: Threading,
    shared: Option<&SharedWeights>,
) -> Result<Session, OnnxError> {
    let err = |message: String| OnnxError::Model {
        path: path.to_owned(),
        message,
    };
    // Operators run one after another (sequential execution), so the inter-op pool would only
    // hold an idle thread: one. The CPU arena stays on (each run's activations reuse its
    // blocks); its size follows the largest batch run.
    let mut builder = Session::builder(env)
        .map_err(|e| err(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| err(e.to_string()))?
        .with_parallel_execution(false)
        .map_err(|e| err(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| err(e.to_string()))?
        .with_intra_op_spinning(threading.spin)
        .map_err(|e| err(e.to_string()))?;
    if threading.intra > 0 {
        builder = builder
            .with_intra_threads(threading.intra)
            .map_err(|e| err(e.to_string()))?;
    }
    if threading.stop_spinning {
        builder = builder
            .with_config_entry("session.force_spinning_stop", "1")
            .map_err(|e| err(e.to_string()))?;
    }
    if let Some(shared) = shared {
        for (name, value) in &shared.values {
            builder = builder
                .with_initializer(name, value.clone())
                .map_err(|e| err(e.to_string()))?;
        }
        builder = builder
            .with_prepacked_weights(&shared.prepacked)
            .map_err(|e| err(e.to_string()))?;
    }
    builder
        .commit_from_file(path)
        .map_err(|e| err(e.to_string()))
}

/// Weights several sessions of one graph share instead of each holding its own copy: the
/// graph's big initializers, read once and handed to every session (ONNX Runtime's
/// `AddInitializer`; out of the graph the sessions parse when it is rewritten,
/// [`VisionGraph::prepare_sharing`]), and one container for the packed forms its kernels make of
/// them (MatMul's packed B), which the first session fills and the others reuse. Without both,
/// three ViT-B/32 sessions hold three packed copies.
pub struct SharedWeights {
    values: Vec<(String, Arc<DynValue>)>,
    prepacked: PrepackedWeights,
    /// The bytes held once.
    bytes: usize,
}

/// The smallest weight the service's vision sessions share; smaller ones (biases, norms,
/// shapes) stay with each session. ViT-B/32: 75 weights, 351 of its 351.4 MB.
pub const SHARED_WEIGHT_MIN_BYTES: usize = 64 * 1024;

impl SharedWeights {
    /// The weights of at least `min_bytes` of the serialised model `model`; `Ok(None)` when it
    /// has none.
    fn read(model: &[u8], min_bytes: usize) -> Result<Option<Self>, String> {
        let weights = prune::weights(model, min_bytes).map_err(|e| e.to_string())?;
        Self::of(weights.iter())
    }

    /// Copies of `weights`, to hand to every session; `Ok(None)` for none.
    fn of<'w>(
        weights: impl Iterator<Item = &'w prune::Weight<'w>>,
    ) -> Result<Option<Self>, String> {
        let mut values = Vec::new();
        let mut bytes = 0;
        for weight in weights {
            let value = weight_value(weight).map_err(|e| format!("{}: {e}", weight.name))?;
            bytes += weight.bytes.len();
            values.push((weight.name.to_owned(), Arc::new(value)));
        }
        if values.is_empty() {
            return Ok(None);
        }
        // `ort` panics when ONNX Runtime cannot make the container (out of memory): refused
        // here, the sessions read their own weights.
        let prepacked = std::panic::catch_unwind(PrepackedWeights::new)
            .map_err(|_| "ONNX Runtime could not create a prepacked-weights container")?;
        Ok(Some(Self {
            values,
            prepacked,
            bytes,
        }))
    }
}

/// A tensor owning a copy of `weight`'s values.
fn weight_value(weight: &prune::Weight<'_>) -> ort::Result<DynValue> {
    let dims = weight.dims.clone();
    Ok(match weight.data_type {
        prune::WeightType::F32 => {
            let values: Vec<f32> = weight
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Tensor::from_array((dims, values))?.into_dyn()
        }
        prune::WeightType::U8 => Tensor::from_array((dims, weight.bytes.to_vec()))?.into_dyn(),
        prune::WeightType::I8 => {
            let values: Vec<i8> = weight.bytes.iter().map(|&b| b as i8).collect();
            Tensor::from_array((dims, values))?.into_dyn()
        }
    })
}

/// The whole file in an anonymous mapping rather than on the heap: a ViT-B/32 tower is 350 MB,
/// and freed heap memory stays with the allocator (mimalloc) while ONNX Runtime, which allocates
/// from another heap, loads the model: the process's peak was 300 MB higher for it.
fn read_unheaped(path: &Path) -> std::io::Result<memmap2::MmapMut> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is empty",
        ));
    }
    let mut buffer = memmap2::MmapOptions::new().len(len).map_anon()?;
    file.read_exact(&mut buffer)?;
    Ok(buffer)
}

/// The vision graph sessions load: the model file, or its rewrite that computes the last layer
/// for the class token only ([`prune`]), in a temporary folder removed when this is dropped; and
/// the weights its sessions share, if they share them. Made once for every session of a process.
pub struct VisionGraph {
    path: PathBuf,
    narrowed: Option<Narrowed>,
    shared: Option<SharedWeights>,
}

/// A rewritten graph in a temporary folder, with the weights its sessions are handed in a file
/// beside it ([`prune::Rewrite::externalize`]).
struct Narrowed {
    model: PathBuf,
    _dir: tempfile::TempDir,
}

/// The rewritten graph's name in its temporary folder, and its shared weights' file.
const NARROWED_MODEL: &str = "vision_model.onnx";
const NARROWED_WEIGHTS: &str = "vision_model.weights";

impl VisionGraph {
    /// The file as it is unless `class_token_only`; then its rewrite when there is something to
    /// narrow. A malformed file is an error; a rewrite that cannot be written out (a full
    /// temporary folder) is logged and the file is served as it is.
    pub fn prepare(path: &Path, class_token_only: bool) -> Result<Self, OnnxError> {
        Self::prepare_sharing(path, class_token_only, None)
    }

    /// As [`Self::prepare`]; with `share` (the smallest weight worth sharing; the service uses
    /// [`SHARED_WEIGHT_MIN_BYTES`]), the graph's weights of that size are read once, here, for
    /// every session loaded from it ([`SharedWeights`]). The file is read once for both: the
    /// rewrite then keeps those weights out of the graph ONNX Runtime parses (a file beside it
    /// holds them, read only by a session that is not handed them), so a session no longer reads
    /// and copies the whole tower while it loads (ViT-B/32 shapes: 351 of 351.4 MB). Weights
    /// that cannot be listed are logged, and each session then reads its own (ONNX Runtime
    /// judges the file).
    pub fn prepare_sharing(
        path: &Path,
        class_token_only: bool,
        share: Option<usize>,
    ) -> Result<Self, OnnxError> {
        let mut graph = Self {
            path: path.to_owned(),
            narrowed: None,
            shared: None,
        };
        if !class_token_only && share.is_none() {
            return Ok(graph);
        }
        let err = |message: String| OnnxError::Model {
            path: path.to_owned(),
            message,
        };
        let bytes = read_unheaped(path).map_err(|e| err(e.to_string()))?;
        let rewrite = match class_token_only {
            true => prune::Rewrite::plan(&bytes, "image_embeds").map_err(|e| err(e.to_string()))?,
            false => None,
        };
        let narrowed = match rewrite {
            Some(mut rewrite) => write_narrowed(path, &mut rewrite, share),
            None => None,
        };
        let shared = match narrowed {
            Some((narrowed, moved)) => {
                graph.narrowed = Some(narrowed);
                SharedWeights::of(moved.iter().map(|(_, weight)| weight))
            }
            // The file as it is.
            None => share.map_or(Ok(None), |min| SharedWeights::read(&bytes, min)),
        };
        match shared {
            Ok(shared) => {
                if let Some(shared) = &shared {
                    tracing::info!(
                        model = %path.display(),
                        weights = shared.values.len(),
                        bytes = shared.bytes,
                        "vision sessions share their weights"
                    );
                }
                graph.shared = shared;
            }
            Err(e) => tracing::warn!(
                model = %path.display(),
                error = %e,
                "cannot list the vision graph's weights; each session reads its own"
            ),
        }
        Ok(graph)
    }

    /// Sessions loaded after this read their own weights (a rewrite's moved weights from the
    /// file beside it).
    pub fn stop_sharing(&mut self) {
        self.shared = None;
    }

    /// How many weights the sessions loaded from this graph share.
    pub fn shared_weights(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.values.len())
    }

    /// The model file it was prepared from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file ONNX Runtime reads.
    fn load_path(&self) -> &Path {
        self.narrowed.as_ref().map_or(&self.path, |n| &n.model)
    }
}

/// Writes `rewrite` to a temporary folder; with `share` (the smallest weight the sessions
/// share), the weights of that size moved out of it ([`prune::Rewrite::externalize`]) into a
/// file beside it: a hard link to the model file itself when the folder is on its file system
/// (nothing to write), else a copy of them. Returns the folder and the moved weights; `None`,
/// logged, when the folder cannot be written (a full temporary folder): the file is then served
/// as it is.
fn write_narrowed<'a>(
    path: &Path,
    rewrite: &mut prune::Rewrite<'a>,
    share: Option<usize>,
) -> Option<(Narrowed, Vec<(u64, prune::Weight<'a>)>)> {
    let written = |dir: tempfile::TempDir| -> std::io::Result<_> {
        let beside = dir.path().join(NARROWED_WEIGHTS);
        let moved = match share {
            Some(min_bytes) => {
                let place = match std::fs::hard_link(path, &beside) {
                    Ok(()) => prune::Placement::InModel,
                    Err(_) => prune::Placement::Packed,
                };
                let moved = rewrite
                    .externalize(min_bytes, NARROWED_WEIGHTS, place)
                    .map_err(std::io::Error::other)?;
                if place == prune::Placement::Packed && !moved.is_empty() {
                    let mut out =
                        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&beside)?);
                    prune::write_external(&moved, &mut out)?;
                    std::io::Write::flush(&mut out)?;
                }
                (moved, place)
            }
            None => (Vec::new(), prune::Placement::Packed),
        };
        let model = dir.path().join(NARROWED_MODEL);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&model)?);
        rewrite.write_to(&mut out)?;
        std::io::Write::flush(&mut out)?;
        drop(out);
        Ok((Narrowed { model, _dir: dir }, moved))
    };
    let dir = tempfile::Builder::new()
        .prefix("model-serving-vision-")
        .tempdir();
    match dir.and_then(written) {
        Ok((narrowed, (moved, place))) => {
            tracing::info!(
                model = %path.display(),
                narrowed = rewrite.narrowed,
                slices = rewrite.slices,
                removed = rewrite.removed,
                weights_beside = moved.len(),
                weights_linked = place == prune::Placement::InModel && !moved.is_empty(),
                "vision graph computes its last layer for the class token only"
            );
            Some((narrowed, moved))
        }
        Err(e) => {
            tracing::warn!(
                model = %path.display(),
                error = %e,
                "cannot write the narrowed vision graph to the temporary folder; serving the file as it is"
            );
            None
        }
    }
}

/// Picks the named output, else the one rank-2 output: public exports name it `image_embeds` /
/// `text_embeds`, some call it otherwise or add `last_hidden_state` (rank 3) beside it.
fn output_name(session: &Session, preferred: &str, path: &Path) -> Result<String, OnnxError> {
    let outputs = session.outputs();
    if outputs.iter().any(|o| o.name() == preferred) {
        return Ok(preferred.to_owned());
    }
    let rank2: Vec<&str> = outputs
        .iter()
        .filter(|o| o.dtype().tensor_shape().is_some_and(|s| s.len() == 2))
        .map(|o| o.name())
        .collect();
    match rank2.as_slice() {
        [only] => Ok((*only).to_owned()),
        _ => Err(OnnxError::Signature {
            path: path.to_owned(),
            message: format!(
                "no output named {preferred:?} and no single [batch, dim] output among {:?}",
                outputs.iter().map(|o| o.name()).collect::<Vec<_>>()
            ),
        }),
    }
}

/// Row-major `[rows, dim]` embeddings, L2-normalised per row.
fn normalised_rows(data: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, OnnxError> {
    if rows == 0 || !data.len().is_multiple_of(rows) {
        return Err(OnnxError::Run(format!(
            "output of {} values does not split into {rows} rows",
            data.len()
        )));
    }
    let dim = data.len() / rows;
    Ok(data
        .chunks_exact(dim)
        .map(|row| {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter().map(|x| x / norm).collect()
        })
        .collect())
}

pub struct VisionModel {
    session: Session,
    input: String,
    output: String,
    pub image_size: u32,
}

impl VisionModel {
    /// Loads the vision tower; with `class_token_only`, its graph computes the last layer for
    /// the pooled class token alone when it pools one ([`crate::prune`]; same embeddings).
    pub fn load(
        env: &Environment,
        path: &Path,
        image_size: u32,
        threading: Threading,
        class_token_only: bool,
    ) -> Result<Self, OnnxError> {
        Self::load_graph(
            env,
            &VisionGraph::prepare(path, class_token_only)?,
            image_size,
            threading,
        )
    }

    /// Loads the vision tower from a prepared graph (one rewrite for several sessions).
    pub fn load_graph(
        env: &Environment,
        graph: &VisionGraph,
        image_size: u32,
        threading: Threading,
    ) -> Result<Self, OnnxError> {
        let path = graph.path.as_path();
        // ONNX Runtime reads a rewritten copy from a file, as it reads the original: the model is
        // never in memory twice beside ONNX Runtime's own copy.
        let loaded = session(env, graph.load_path(), threading, graph.shared.as_ref());
        let session = loaded.map_err(|e| match e {
            OnnxError::Model { message, .. } => OnnxError::Model {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let input = match inputs.as_slice() {
            names if names.contains(&"pixel_values") => "pixel_values".to_owned(),
            [only] => (*only).to_owned(),
            names => {
                return Err(OnnxError::Signature {
                    path: path.to_owned(),
                    message: format!("expected one input pixel_values, found {names:?}"),
                });
            }
        };
        let output = output_name(&session, "image_embeds", path)?;
        Ok(Self {
            session,
            input,
            output,
            image_size,
        })
    }

    /// `pixels`: `rows` images, each 3×size×size, CHW.
    pub fn run(&mut self, pixels: Vec<f32>, rows: usize) -> Result<Vec<Vec<f32>>, OnnxError> {
        let s = self.image_size as usize;
        let tensor = Tensor::from_array(([rows, 3, s, s], pixels))
            .map_err(|e| OnnxError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| OnnxError::Run(e.to_string()))?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| OnnxError::Run(format!("missing output {}", self.output)))?;
        let (_, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| OnnxError::Run(e.to_string()))?;
        normalised_rows(data, rows)
    }
}

pub struct TextModel {
    session: Session,
    ids_input: String,
    mask_input: Option<String>,
    output: String,
}

impl TextModel {
    pub fn load(env: &Environment, path: &Path, threading: Threading) -> Result<Self, OnnxError> {
        let session = session(env, path, threading, None)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if !inputs.contains(&"input_ids") {
            return Err(OnnxError::Signature {
                path: path.to_owned(),
                message: format!("expected input input_ids, found {inputs:?}"),
            });
        }
        if let Some(other) = inputs
            .iter()
            .find(|n| !matches!(**n, "input_ids" | "attention_mask"))
        {
            return Err(OnnxError::Signature {
                path: path.to_owned(),
                message: format!("unexpected input {other:?}"),
            });
        }
        let mask_input = inputs
            .contains(&"attention_mask")
            .then(|| "attention_mask".to_owned());
        let output = output_name(&session, "text_embeds", path)?;
        Ok(Self {
            session,
            ids_input: "input_ids".to_owned(),
            mask_input,
            output,
        })
    }

    pub fn run(
        &mut self,
        ids: Vec<i64>,
        mask: Vec<i64>,
        rows: usize,
        len: usize,
    ) -> Result<Vec<Vec<f32>>, OnnxError> {
        let run_err = |e: ort::Error| OnnxError::Run(e.to_string());
        let ids = Tensor::from_array(([rows, len], ids)).map_err(run_err)?;
        let outputs = match &self.mask_input {
            Some(mask_name) => {
                let mask = Tensor::from_array(([rows, len], mask)).map_err(run_err)?;
                self.session.run(ort::inputs![
                    self.ids_input.as_str() => ids,
                    mask_name.as_str() => mask,
                ])
            }
            None => self
                .session
                .run(ort::inputs![self.ids_input.as_str() => ids]),
        }
        .map_err(run_err)?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| OnnxError::Run(format!("missing output {}", self.output)))?;
        let (_, data) = value.try_extract_tensor::<f32>().map_err(run_err)?;
        normalised_rows(data, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_runtime_library_is_named() {
        let err = environment(Path::new("/nonexistent/libonnxruntime.so")).err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("/nonexistent/libonnxruntime.so"),
            "{message}"
        );
        assert!(message.contains("ORT_DYLIB_PATH"), "{message}");
    }

    #[test]
    fn rows_are_unit_length() {
        let rows = normalised_rows(&[3.0, 4.0, 0.0, 0.0, 0.0, 2.0], 2).expect("rows");
        assert_eq!(rows, vec![vec![0.6, 0.8, 0.0], vec![0.0, 0.0, 1.0]]);
        assert!(normalised_rows(&[1.0, 2.0, 3.0], 2).is_err());
    }
}
