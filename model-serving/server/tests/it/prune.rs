//! Class-token pruning (`model_serving::prune`): the vision graph served computes its last layer
//! for the pooled class token only, and gives the embeddings the whole graph gives — on the
//! generated fp32 model, on a static int8 (QDQ) copy of it, and on a graph that also returns
//! every token; a graph with no class token, and a broken file, are left alone or refused. And
//! sessions that share one graph's weights encode what a session of its own does, alone and in
//! the service's encoder.

use std::path::{Path, PathBuf};
use std::process::Command;

use model_serving::model::{ModelSpec, VISION_MODEL};
use model_serving::onnx::{Threading, VisionGraph, VisionModel, environment};
use model_serving::preprocess::{ImageLimits, Preprocessor};
use model_serving::prune::{self, class_token_only};

use crate::helpers::*;

/// The last transformer block of a CLIP vision tower (`gen_models.py`'s `block`), counted by
/// hand: what computes the class token alone once only it leaves the block. The query path
/// (MatMul, Add, Reshape, Transpose), the attention of that one query (MatMul, Mul, Softmax,
/// MatMul, Transpose, Reshape), the output projection (MatMul, Add), the residual Add, the MLP
/// (LayerNormalization, MatMul, Add, Mul, Sigmoid, Mul, MatMul, Add) and the last residual Add.
/// Keys and values still see every token.
const LAST_BLOCK_NARROWED: usize = 4 + 6 + 2 + 1 + 8 + 1;
/// One token of the block's input for the residual, one of its normalised input for the query.
const LAST_BLOCK_SLICES: usize = 2;

/// The model's spec and `photos` preprocessed for it.
fn pixels(dir: &Path, photos: &[PathBuf]) -> (ModelSpec, Vec<f32>) {
    let spec = ModelSpec::load(dir).expect("model.json");
    let pre = Preprocessor {
        image_size: spec.image_size,
        mean: spec.image_mean,
        std: spec.image_std,
        limits: ImageLimits::default(),
    };
    let mut pixels = Vec::new();
    for photo in photos {
        pre.preprocess(&read(photo), &mut pixels)
            .expect("preprocess");
    }
    (spec, pixels)
}

/// The largest difference between the embeddings of `photos` through the graph as served and
/// through the file's graph as it is.
fn largest_difference(dir: &Path, photos: &[PathBuf]) -> f32 {
    let (spec, pixels) = pixels(dir, photos);
    let env = environment(&ort_library()).expect("ONNX Runtime");
    let threading = Threading {
        intra: 1,
        ..Threading::default()
    };
    let run = |class_token_only: bool| {
        let path = dir.join(VISION_MODEL);
        let mut model =
            VisionModel::load(&env, &path, spec.image_size, threading, class_token_only)
                .expect("load");
        model.run(pixels.clone(), photos.len()).expect("run")
    };
    let (narrowed, whole) = (run(true), run(false));
    assert_eq!(narrowed.len(), photos.len());
    max_rows_diff(&narrowed, &whole)
}

fn python_onnx(script: &str, args: &[&Path]) {
    let run = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        run.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// A copy of the model folder whose vision graph is written by `script` (argv: source, target).
fn variant(script: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for file in ["model.json", "text_model.onnx", "tokenizer.json"] {
        std::fs::copy(model_dir().join(file), tmp.path().join(file)).expect("copy");
    }
    python_onnx(
        script,
        &[
            &model_dir().join(VISION_MODEL),
            &tmp.path().join(VISION_MODEL),
        ],
    );
    tmp
}

#[test]
fn the_class_token_graph_encodes_what_the_whole_graph_does() {
    let bytes = read(&model_dir().join(VISION_MODEL));
    let pruned = class_token_only(&bytes, "image_embeds")
        .expect("a well-formed model")
        .expect("the generated tower pools its class token");
    assert_eq!(pruned.narrowed, LAST_BLOCK_NARROWED);
    assert_eq!(pruned.slices, LAST_BLOCK_SLICES);
    assert_eq!(pruned.removed, 0);

    let worst = largest_difference(&model_dir(), &sample_photos(5));
    assert!(worst < 1e-5, "embeddings differ by {worst}");
}

#[test]
fn a_graph_that_also_returns_every_token_is_narrowed_once_that_output_is_dropped() {
    // The public CLIP exports return `last_hidden_state` beside `image_embeds`.
    let tmp = variant(
        "import sys, onnx\n\
         from onnx import helper, TensorProto\n\
         m = onnx.load(sys.argv[1])\n\
         pool = [n for n in m.graph.node if n.op_type == 'Gather'][-1]\n\
         m.graph.node.append(helper.make_node('Identity', [pool.input[0]], ['last_hidden_state']))\n\
         m.graph.output.append(helper.make_tensor_value_info('last_hidden_state', TensorProto.FLOAT, None))\n\
         onnx.save(m, sys.argv[2])\n",
    );
    let bytes = read(&tmp.path().join(VISION_MODEL));
    let pruned = class_token_only(&bytes, "image_embeds")
        .expect("well-formed")
        .expect("narrowed once last_hidden_state is dropped");
    assert_eq!(pruned.narrowed, LAST_BLOCK_NARROWED);
    assert_eq!(pruned.removed, 1, "the Identity feeding the dropped output");
    // Asked to keep every output, every token is needed: nothing to narrow.
    assert_eq!(class_token_only(&bytes, "no_such_output"), Ok(None));

    let worst = largest_difference(tmp.path(), &sample_photos(3));
    assert!(worst < 1e-5, "embeddings differ by {worst}");
}

#[tokio::test]
async fn a_static_int8_copy_is_narrowed_and_encodes_the_same() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("tiny-int8");
    let run = Command::new(python())
        .arg(workspace().join("model-serving/tools/quantize.py"))
        .arg("--src")
        .arg(model_dir())
        .arg("--out")
        .arg(&out)
        .arg("--dataset-dir")
        .arg(dataset_dir())
        .args(["--calibration-images", "16", "--calibration-texts", "16"])
        .output()
        .expect("run quantize.py");
    assert!(
        run.status.success(),
        "quantize.py failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = read(&out.join(VISION_MODEL));
    let pruned = class_token_only(&bytes, "image_embeds")
        .expect("well-formed")
        .expect("QDQ nodes with one scale are element-wise");
    // The fp32 block's nodes, and the QuantizeLinear / DequantizeLinear pairs before the
    // narrowed MatMuls: at least as many as in fp32.
    assert!(
        pruned.narrowed > LAST_BLOCK_NARROWED,
        "{} nodes narrowed",
        pruned.narrowed
    );
    let worst = largest_difference(&out, &sample_photos(5));
    assert!(worst < 1e-5, "embeddings differ by {worst}");

    // Its sessions share their int8 weights in the service's encoder too.
    let (shared, worst) = shared_against_own(&out).await;
    assert!(shared > 10, "only {shared} weights shared");
    assert!(worst < 1e-5, "embeddings differ by {worst}");
}

#[test]
fn a_graph_without_a_class_token_is_left_as_it_is() {
    // The trained model's image tower is a CNN that averages its feature map.
    let cnn = trained_model_dir().join(VISION_MODEL);
    assert_eq!(class_token_only(&read(&cnn), "image_embeds"), Ok(None));
    // The text tower pools the end-of-text token, which differs row by row.
    let text = read(&model_dir().join("text_model.onnx"));
    assert_eq!(class_token_only(&text, "text_embeds"), Ok(None));
    // A pooled token other than the first is not narrowed.
    let tmp = variant(
        "import sys, onnx\n\
         from onnx import numpy_helper\n\
         import numpy as np\n\
         m = onnx.load(sys.argv[1])\n\
         pool = [n for n in m.graph.node if n.op_type == 'Gather'][-1]\n\
         index = [i for i in m.graph.initializer if i.name == pool.input[1]][0]\n\
         index.CopyFrom(numpy_helper.from_array(np.int64(3), index.name))\n\
         onnx.save(m, sys.argv[2])\n",
    );
    let bytes = read(&tmp.path().join(VISION_MODEL));
    assert_eq!(class_token_only(&bytes, "image_embeds"), Ok(None));
}

#[test]
fn a_graph_that_makes_a_tensor_twice_is_left_as_it_is() {
    // Against ONNX's rule (each tensor made once), so a name no longer says which shape it has:
    // `make fuzz FUZZ_TARGET=prune` found a rank mismatch that way.
    let tmp = variant(
        "import sys, onnx\n\
         m = onnx.load(sys.argv[1])\n\
         pool = [n for n in m.graph.node if n.op_type == 'Gather'][-1]\n\
         last = [n for n in m.graph.node if pool.input[0] in n.output][0]\n\
         twin = onnx.NodeProto(); twin.CopyFrom(last)\n\
         m.graph.node.insert(list(m.graph.node).index(pool), twin)\n\
         onnx.save(m, sys.argv[2])\n",
    );
    let bytes = read(&tmp.path().join(VISION_MODEL));
    assert_eq!(class_token_only(&bytes, "image_embeds"), Ok(None));
}

#[test]
fn a_broken_model_file_is_refused_without_a_panic() {
    let bytes = read(&model_dir().join(VISION_MODEL));
    let step = (bytes.len() / 500).max(1);
    let mut refused = 0;
    for cut in (0..bytes.len()).step_by(step) {
        if class_token_only(&bytes[..cut], "image_embeds").is_err() {
            refused += 1;
        }
        let mut flipped = bytes.clone();
        flipped[cut] ^= 0xa5;
        let _ = class_token_only(&flipped, "image_embeds"); // any answer but a panic
    }
    assert!(refused > 0, "no truncation was found malformed");

    // Loading a truncated file fails with its path named, whether the rewrite or ONNX Runtime
    // finds it broken.
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(VISION_MODEL);
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
    let env = environment(&ort_library()).expect("ONNX Runtime");
    for class_token_only in [true, false] {
        let error = VisionModel::load(&env, &path, 32, Threading::default(), class_token_only)
            .err()
            .expect("a truncated model is refused");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }
}

/// Sessions loaded from one graph with its weights shared (every float initializer here: the
/// tiny model has none of the size the service shares) encode what a session with its own
/// weights does, whatever their threads.
#[test]
fn sessions_sharing_their_weights_encode_what_a_session_of_its_own_does() {
    let photos = sample_photos(3);
    let (spec, pixels) = pixels(&model_dir(), &photos);
    let env = environment(&ort_library()).expect("ONNX Runtime");
    let path = model_dir().join(VISION_MODEL);
    let one = Threading {
        intra: 1,
        ..Threading::default()
    };
    let mut own = VisionModel::load(&env, &path, spec.image_size, one, true).expect("load");
    let expected = own.run(pixels.clone(), photos.len()).expect("run");

    let graph = VisionGraph::prepare(&path, true).expect("prepare");
    assert_eq!(graph.shared_weights(), 0);
    let mut graph = VisionGraph::prepare_sharing(&path, true, Some(0)).expect("prepare");
    assert!(
        graph.shared_weights() > 10,
        "only {} weights shared",
        graph.shared_weights()
    );
    let two = Threading {
        intra: 2,
        ..Threading::default()
    };
    // The last session as one that cannot share (the int8 CNN's fallback): it reads the weights
    // the rewrite moved out of its graph from the file beside it.
    for (i, threading) in [one, one, two, one].into_iter().enumerate() {
        if i == 3 {
            graph.stop_sharing();
        }
        let mut model =
            VisionModel::load_graph(&env, &graph, spec.image_size, threading).expect("load");
        // Twice: a second run reads the same shared (and packed) weights.
        for _ in 0..2 {
            let got = model.run(pixels.clone(), photos.len()).expect("run");
            let worst = max_rows_diff(&got, &expected);
            assert!(worst < 1e-5, "embeddings differ by {worst}");
        }
    }
}

/// The rewrite with its weights moved out ([`prune::Rewrite::externalize`]): the graph written
/// keeps none of their bytes, and the file beside it holds each at its page-aligned offset.
#[test]
fn weights_moved_out_of_the_rewrite_leave_its_graph_for_the_file_beside_it() {
    let bytes = std::fs::read(model_dir().join(VISION_MODEL)).expect("model");
    let listed = prune::weights(&bytes, 64).expect("weights");
    assert!(listed.len() > 10, "only {} weights listed", listed.len());
    let plan = || {
        prune::Rewrite::plan(&bytes, "image_embeds")
            .expect("plan")
            .expect("a graph to narrow")
    };
    let mut rewrite = plan();
    let mut inline = Vec::new();
    rewrite.write_to(&mut inline).expect("write");
    let moved = rewrite
        .externalize(64, "weights.bin", prune::Placement::Packed)
        .expect("externalize");
    assert_eq!(
        moved.iter().map(|(_, w)| w).collect::<Vec<_>>(),
        listed.iter().collect::<Vec<_>>()
    );
    let mut model = Vec::new();
    rewrite.write_to(&mut model).expect("write");
    assert!(model.len() <= rewrite.encoded_len());
    let moved_bytes: usize = listed.iter().map(|w| w.bytes.len()).sum();
    assert!(
        model.len() + moved_bytes < inline.len() + 4096,
        "{} bytes of graph with {} moved out of {}",
        model.len(),
        moved_bytes,
        inline.len()
    );
    assert_eq!(prune::weights(&model, 64).expect("weights"), Vec::new());
    // What is left in the graph is what was under the threshold.
    assert_eq!(
        prune::weights(&model, 0).expect("weights").len(),
        prune::weights(&inline, 0).expect("weights").len() - moved.len()
    );
    let mut data = Vec::new();
    prune::write_external(&moved, &mut data).expect("write");
    // Every moved weight lies in `file` at its offset.
    let lie_at_their_offsets = |file: &[u8], moved: &[(u64, prune::Weight<'_>)]| {
        for (offset, weight) in moved {
            let at = usize::try_from(*offset).expect("offset");
            let here = file.get(at..at + weight.bytes.len());
            assert_eq!(here, Some(weight.bytes), "{} at {offset}", weight.name);
        }
    };
    lie_at_their_offsets(&data, &moved);
    assert!(
        moved
            .iter()
            .all(|(offset, _)| offset % prune::EXTERNAL_ALIGN == 0),
        "a packed weight off its page"
    );
    // Placed where they are in the model: the model file itself is the file beside.
    let mut rewrite = plan();
    let in_model = rewrite
        .externalize(64, "model.onnx", prune::Placement::InModel)
        .expect("externalize");
    assert_eq!(in_model.len(), moved.len());
    lie_at_their_offsets(&bytes, &in_model);
    let mut linked = Vec::new();
    rewrite.write_to(&mut linked).expect("write");
    assert_eq!(prune::weights(&linked, 64).expect("weights"), Vec::new());

    // ONNX Runtime reads both layouts (the service hands the moved weights to its sessions;
    // one that is not handed them reads them from the file beside): the same embeddings as the
    // file's graph.
    let photos = sample_photos(2);
    let (spec, pixels) = pixels(&model_dir(), &photos);
    let env = environment(&ort_library()).expect("ONNX Runtime");
    let one = Threading {
        intra: 1,
        ..Threading::default()
    };
    let path = model_dir().join(VISION_MODEL);
    let mut own = VisionModel::load(&env, &path, spec.image_size, one, false).expect("load");
    let expected = own.run(pixels.clone(), photos.len()).expect("run");
    for (graph, beside, name) in [
        (&model, &data, "weights.bin"),
        (&linked, &bytes, "model.onnx"),
    ] {
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::write(dir.path().join("narrowed.onnx"), graph).expect("write");
        std::fs::write(dir.path().join(name), beside).expect("write");
        let mut model = VisionModel::load(
            &env,
            &dir.path().join("narrowed.onnx"),
            spec.image_size,
            one,
            false,
        )
        .expect("load");
        let got = model.run(pixels.clone(), photos.len()).expect("run");
        let worst = max_rows_diff(&got, &expected);
        assert!(worst < 1e-5, "{name}: embeddings differ by {worst}");
    }
}

/// The service's load path: an encoder whose vision sessions share their weights (the first
/// loaded alone, the others side by side) encodes what one whose sessions hold their own does.
#[tokio::test]
async fn an_encoder_whose_sessions_share_weights_encodes_what_one_without_does() {
    let (shared, worst) = shared_against_own(&model_dir()).await;
    assert!(shared > 10, "only {shared} weights shared");
    assert!(worst < 1e-5, "embeddings differ by {worst}");
}
