//! CLIP text tokenization: the BPE `tokenizer.json`, truncation at the context length (keeping the
//! end-of-text token, as CLIP does), padding to the longest text of a batch, attention mask.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: String, message: String },
    #[error("cannot tokenize text: {0}")]
    Encode(String),
}

pub struct TextTokenizer {
    inner: Tokenizer,
    context_length: usize,
    pad_id: u32,
}

/// A padded batch, row-major `[rows, len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
}

impl TextTokenizer {
    pub fn load(path: &Path, context_length: usize, pad_id: u32) -> Result<Self, TokenizerError> {
        let load_err = |message: String| TokenizerError::Load {
            path: path.display().to_string(),
            message,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| load_err(e.to_string()))?;
        inner.with_padding(None);
        Ok(Self {
            inner,
            context_length,
            pad_id,
        })
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Token ids of one text, with start and end tokens, at most `context_length` long.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        // OpenAI CLIP unescapes HTML entities twice before BPE (catalogue titles carry them);
        // tokenizer.json's normaliser does the rest (NFC, whitespace, lowercase).
        let once = html_escape::decode_html_entities(text);
        let text = html_escape::decode_html_entities(&once);
        let encoding = self
            .inner
            .encode(text.as_ref(), true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        ids.truncate(self.context_length);
        Ok(ids)
    }

    /// Pads token rows to the longest one.
    pub fn pad(&self, rows: &[&[u32]]) -> TokenBatch {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for row in rows {
            ids.extend(row.iter().map(|&t| i64::from(t)));
            mask.extend(std::iter::repeat_n(1, row.len()));
            ids.extend(std::iter::repeat_n(i64::from(self.pad_id), len - row.len()));
            mask.extend(std::iter::repeat_n(0, len - row.len()));
        }
        TokenBatch {
            rows: rows.len(),
            len,
            ids,
            mask,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TextTokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/clip-tokenizer/tokenizer.json");
        TextTokenizer::load(&path, 77, 0).expect("tokenizer")
    }

    #[test]
    fn clip_ids_for_a_caption() {
        let t = tokenizer();
        // The example from OpenAI CLIP's tokenizer.
        assert_eq!(
            t.encode("a photo of a dress").expect("encode"),
            [49406, 320, 1125, 539, 320, 2595, 49407]
        );
    }

    #[test]
    fn html_entities_are_unescaped_like_clip() {
        let t = tokenizer();
        assert_eq!(
            t.encode("shirt &amp;amp; tie").expect("a"),
            t.encode("shirt & tie").expect("b")
        );
    }

    #[test]
    fn truncation_keeps_the_end_token() {
        let t = tokenizer();
        let long = "red ".repeat(200);
        let ids = t.encode(&long).expect("encode");
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[76], 49407);
    }

    #[test]
    fn batch_padding_and_mask() {
        let t = tokenizer();
        let a = t.encode("red dress").expect("a");
        let b = t.encode("a pair of blue running shoes").expect("b");
        let batch = t.pad(&[&a, &b]);
        assert_eq!(batch.rows, 2);
        assert_eq!(batch.len, b.len());
        assert_eq!(
            &batch.ids[..a.len()],
            a.iter().map(|&x| i64::from(x)).collect::<Vec<_>>()
        );
        assert_eq!(batch.ids[a.len()..batch.len], vec![0; b.len() - a.len()]);
        assert_eq!(batch.mask[..batch.len].iter().sum::<i64>(), a.len() as i64);
        assert_eq!(batch.mask[batch.len..].iter().sum::<i64>(), b.len() as i64);
    }
}
