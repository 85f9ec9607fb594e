//! The model folder: `model.json`, `vision_model.onnx`, `text_model.onnx`, `tokenizer.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const MODEL_JSON: &str = "model.json";
pub const VISION_MODEL: &str = "vision_model.onnx";
pub const TEXT_MODEL: &str = "text_model.onnx";
pub const TOKENIZER: &str = "tokenizer.json";
pub const MODEL_FILES: [&str; 4] = [MODEL_JSON, VISION_MODEL, TEXT_MODEL, TOKENIZER];

/// `model.json`: what the server needs to know about a model that the ONNX files do not say.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub embedding_dim: usize,
    pub image_size: u32,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Only CLIP's rule is implemented: shortest edge to `image_size` (bicubic), center crop.
    #[serde(default = "default_resize")]
    pub resize: String,
    pub context_length: usize,
    #[serde(default)]
    pub pad_token_id: u32,
    /// How the search app turns a shopper's query into a caption; `{}` is the query.
    #[serde(default = "default_prompt")]
    pub prompt_template: String,
    /// The cosine similarity below which a text query's nearest images are not matches for
    /// this model (measured by `make eval-search` on the development split); absent: no floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relevance_floor: Option<f32>,
    /// The same for searches by meaning alone (no words to rescue a query), calibrated apart
    /// (`make eval-search`); absent: vector searches are not gated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relevance_floor_vector: Option<f32>,
}

pub const RESIZE_SHORTEST_EDGE_BICUBIC: &str = "shortest_edge_bicubic";

fn default_resize() -> String {
    RESIZE_SHORTEST_EDGE_BICUBIC.to_owned()
}

fn default_prompt() -> String {
    "a photo of {}".to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ModelFolderError {
    #[error("model folder {0} does not exist (set MODEL_DIR, or run `make models`)")]
    MissingFolder(PathBuf),
    #[error("model folder {folder} has no {file}")]
    MissingFile { folder: PathBuf, file: &'static str },
    #[error("cannot read {path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("invalid {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ModelSpec {
    /// Reads and validates `model.json`, after checking that every model file is present.
    pub fn load(folder: &Path) -> Result<Self, ModelFolderError> {
        if !folder.is_dir() {
            return Err(ModelFolderError::MissingFolder(folder.to_owned()));
        }
        for file in MODEL_FILES {
            if !folder.join(file).is_file() {
                return Err(ModelFolderError::MissingFile {
                    folder: folder.to_owned(),
                    file,
                });
            }
        }
        let path = folder.join(MODEL_JSON);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelFolderError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let spec: ModelSpec =
            serde_json::from_str(&text).map_err(|e| ModelFolderError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
        spec.validate()
            .map_err(|message| ModelFolderError::Invalid { path, message })?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        if !(1..=8192).contains(&self.embedding_dim) {
            return Err(format!("embedding_dim {} out of range", self.embedding_dim));
        }
        if !(8..=2048).contains(&self.image_size) {
            return Err(format!("image_size {} out of range", self.image_size));
        }
        if self.image_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err("image_std must be positive".into());
        }
        if !(2..=1024).contains(&self.context_length) {
            return Err(format!(
                "context_length {} out of range",
                self.context_length
            ));
        }
        if self.resize != RESIZE_SHORTEST_EDGE_BICUBIC {
            return Err(format!(
                "resize rule {:?} is not supported (only {RESIZE_SHORTEST_EDGE_BICUBIC:?})",
                self.resize
            ));
        }
        if !self.prompt_template.contains("{}") {
            return Err("prompt_template must contain {}".into());
        }
        if [self.relevance_floor, self.relevance_floor_vector]
            .into_iter()
            .flatten()
            .any(|floor| !(-1.0..=1.0).contains(&floor))
        {
            return Err("relevance_floor must be a cosine similarity, between -1 and 1".into());
        }
        Ok(())
    }
}

/// The identity of the vectors a model folder makes: SHA-256 over the two ONNX files, the
/// tokenizer and the fields of `model.json` that change a vector (size, preprocessing, context),
/// as `sha256:` and 16 hex digits. The name, the prompt template and the relevance floor are left
/// out: changing them changes no stored vector, so it needs no re-index. An index records the
/// fingerprint of the model that made its vectors, and the backend refuses to mix another's.
///
/// Reads every byte of the folder's models (about 0.4 s for ViT-B/32's 600 MB here); model-serving
/// computes it beside the session loads.
pub fn fingerprint(folder: &Path, spec: &ModelSpec) -> Result<String, ModelFolderError> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;

    let mut hash = Sha256::new();
    let vectors = serde_json::json!({
        "embedding_dim": spec.embedding_dim,
        "image_size": spec.image_size,
        "image_mean": spec.image_mean,
        "image_std": spec.image_std,
        "resize": spec.resize,
        "context_length": spec.context_length,
        "pad_token_id": spec.pad_token_id,
    });
    hash.update(vectors.to_string().as_bytes());
    for file in [VISION_MODEL, TEXT_MODEL, TOKENIZER] {
        let path = folder.join(file);
        let unreadable = |e: std::io::Error| ModelFolderError::Unreadable {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut reader = std::fs::File::open(&path).map_err(unreadable)?;
        hash.update(file.as_bytes());
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buffer).map_err(unreadable)?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
        }
    }
    let digest = hash.finalize();
    Ok(format!("sha256:{}", hex::encode(&digest[..8])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_follows_the_vectors_not_the_name_or_prompt() {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in [VISION_MODEL, TEXT_MODEL, TOKENIZER] {
            std::fs::write(dir.path().join(file), file.as_bytes()).expect("write");
        }
        let base = spec();
        let first = fingerprint(dir.path(), &base).expect("fingerprint");
        assert!(first.starts_with("sha256:") && first.len() == 23, "{first}");

        let mut renamed = base.clone();
        renamed.name = "other name".into();
        renamed.prompt_template = "an image of {}".into();
        renamed.relevance_floor = Some(0.2);
        assert_eq!(
            fingerprint(dir.path(), &renamed).expect("fingerprint"),
            first
        );

        let mut resized = base.clone();
        resized.image_size = 336;
        assert_ne!(
            fingerprint(dir.path(), &resized).expect("fingerprint"),
            first
        );

        std::fs::write(dir.path().join(VISION_MODEL), b"other weights").expect("write");
        assert_ne!(fingerprint(dir.path(), &base).expect("fingerprint"), first);

        std::fs::remove_file(dir.path().join(TOKENIZER)).expect("remove");
        assert!(matches!(
            fingerprint(dir.path(), &base),
            Err(ModelFolderError::Unreadable { .. })
        ));
    }

    fn spec() -> ModelSpec {
        serde_json::from_str(
            r#"{"name":"m","embedding_dim":512,"image_size":224,
                "image_mean":[0.5,0.5,0.5],"image_std":[0.5,0.5,0.5],"context_length":77}"#,
        )
        .expect("parse")
    }

    #[test]
    fn defaults_and_validation() {
        let s = spec();
        assert_eq!(s.resize, RESIZE_SHORTEST_EDGE_BICUBIC);
        assert_eq!(s.prompt_template, "a photo of {}");
        assert!(s.validate().is_ok());
        let mut bad = s.clone();
        bad.image_std[1] = 0.0;
        assert!(bad.validate().is_err());
        assert_eq!(s.relevance_floor, None, "no floor unless measured");
        let mut floor = s.clone();
        floor.relevance_floor = Some(1.5);
        assert!(floor.validate().is_err());
        let mut bad = s;
        bad.resize = "squash".into();
        assert!(bad.validate().unwrap_err().contains("squash"));
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(MODEL_JSON), "{}").expect("write");
        let err = ModelSpec::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("vision_model.onnx"), "{err}");
        let err = ModelSpec::load(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
