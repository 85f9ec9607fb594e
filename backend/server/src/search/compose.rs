//! Composed queries: words left out (`-floral`, or `not`), a photo refined by words ("this
//! photo, but red"), like / dislike lists of items, and two images compared.
//!
//! - Words left out do two things: no product whose caption has one is shown (a full-text
//!   `must_not` on the caption, in both engines), and the query's vector is moved away from the
//!   words' embedding (`q - 0.5·n`, normalised), as rclip does with negative queries.
//! - A refined photo is the photo's embedding plus the words' (`p + t`, normalised): rclip's
//!   composition of image and text queries.
//! - Like / dislike is Qdrant's `average_vector` recommendation rule, computed here so both
//!   engines run the same search: `avg(liked) + (avg(liked) - avg(disliked))`, the items
//!   themselves left out.

use std::time::Instant;

use backend_api::{CompareResponse, SearchMode, SearchParams, SearchResponse};
use uuid::Uuid;

use super::models::Serving;
use super::query::{Query, SearchPlan};
use super::{SearchEngine, SearchError};
use crate::index::{IndexQuery, MAX_EXCLUDED};
use crate::metrics;

/// How much the words' embedding weighs beside a photo's.
pub const REFINE_WEIGHT: f32 = 1.0;
/// How far a query is moved away from the meaning of the words it leaves out.
pub const NEGATIVE_WEIGHT: f32 = 0.5;
/// Most words one query leaves out, and their longest.
pub const MAX_WITHOUT: usize = 8;
const MAX_WORD_CHARS: usize = 40;
/// The longest `not` parameter (the words to leave out, with their commas).
pub const MAX_NOT_CHARS: usize = 400;
/// Most items in a like or a dislike list.
pub const MAX_LIKES: usize = 16;

/// A query split into what to find and the words to leave out.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Negated {
    pub positive: String,
    pub without: Vec<String>,
}

/// A word to leave out as the index matches it: lower case, without the punctuation around it.
fn clean(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase()
}

/// Splits `q` into its words to find and the words after `-` (a `-` inside a word, as in
/// "t-shirt", is part of it), adding the words of `not`. Bounded: at most [`MAX_WITHOUT`] words
/// left out, each at most 40 characters.
pub fn negated(q: &str, not: &[String]) -> Result<Negated, SearchError> {
    if not.iter().map(|w| w.chars().count()).sum::<usize>() > MAX_NOT_CHARS {
        return Err(SearchError::Invalid(format!(
            "not is longer than {MAX_NOT_CHARS} characters"
        )));
    }
    let mut positive = Vec::new();
    let mut without: Vec<String> = Vec::new();
    for token in q.split_whitespace() {
        match token.strip_prefix('-').map(clean) {
            Some(word) if !word.is_empty() => without.push(word),
            _ => positive.push(token),
        }
    }
    for word in not.iter().flat_map(|w| w.split([',', ' '])) {
        let word = clean(word);
        if !word.is_empty() {
            without.push(word);
        }
    }
    without.sort_unstable();
    without.dedup();
    if without.len() > MAX_WITHOUT {
        return Err(SearchError::Invalid(format!(
            "at most {MAX_WITHOUT} words may be left out"
        )));
    }
    if let Some(long) = without.iter().find(|w| w.chars().count() > MAX_WORD_CHARS) {
        let shown: String = long.chars().take(MAX_WORD_CHARS).collect();
        return Err(SearchError::Invalid(format!(
            "a word left out is longer than {MAX_WORD_CHARS} characters: {shown}..."
        )));
    }
    Ok(Negated {
        positive: positive.join(" "),
        without,
    })
}

/// `Σ weight·vector`, normalised to unit length (cosine search).
pub fn combine(parts: &[(&[f32], f32)]) -> Result<Vec<f32>, SearchError> {
    let dim = parts.first().map_or(0, |(v, _)| v.len());
    if parts.iter().any(|(v, _)| v.len() != dim) {
        return Err(SearchError::Invalid(
            "the vectors to combine differ in size".into(),
        ));
    }
    let mut sum = vec![0.0f32; dim];
    for (vector, weight) in parts {
        for (s, x) in sum.iter_mut().zip(vector.iter()) {
            *s += weight * x;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm < 1e-6 {
        return Err(SearchError::Invalid(
            "what to find and what to leave out cancel each other out".into(),
        ));
    }
    Ok(sum.into_iter().map(|x| x / norm).collect())
}

fn mean(vectors: &[Vec<f32>]) -> Vec<f32> {
    let dim = vectors.first().map_or(0, Vec::len);
    let mut sum = vec![0.0f32; dim];
    for vector in vectors {
        for (s, x) in sum.iter_mut().zip(vector) {
            *s += x;
        }
    }
    let n = vectors.len().max(1) as f32;
    sum.into_iter().map(|x| x / n).collect()
}

/// One side of a comparison: an indexed item, or an uploaded photo.
#[derive(Debug, Clone)]
pub enum Side {
    Item(Uuid),
    Photo(Vec<u8>),
}

impl SearchEngine {
    /// `vector` moved away from the meaning of `without` (one embedding of the words together).
    pub(super) async fn moved_away(
        &self,
        serving: &Serving,
        vector: Vec<f32>,
        without: &[String],
    ) -> Result<Vec<f32>, SearchError> {
        if without.is_empty() {
            return Ok(vector);
        }
        let words = serving.encoder.embed_query(&without.join(" ")).await?;
        serving.check_model(&words.model)?;
        let (_, away) = words.value;
        combine(&[(&vector, 1.0), (&away, -NEGATIVE_WEIGHT)])
    }

    /// Stored vectors of `ids`, in order; the first id not indexed is a not-found.
    async fn stored(&self, serving: &Serving, ids: &[Uuid]) -> Result<Vec<Vec<f32>>, SearchError> {
        let records = serving.index.retrieve(ids, true).await?;
        ids.iter()
            .map(|id| {
                records
                    .iter()
                    .find(|r| r.id == *id)
                    .and_then(|r| r.vector.clone())
                    .ok_or(SearchError::NotFound(*id))
            })
            .collect()
    }

    /// More like the `like` items and less like the `dislike` ones (Qdrant's average-vector
    /// rule), the items themselves left out. No model is called.
    #[tracing::instrument(skip(self, params))]
    pub async fn recommend(
        &self,
        like: &[Uuid],
        dislike: &[Uuid],
        params: &SearchParams,
    ) -> Result<SearchResponse, SearchError> {
        let started = Instant::now();
        if like.is_empty() {
            return Err(SearchError::Invalid(
                "like names no item: say which items to find more like".into(),
            ));
        }
        if like.len() > MAX_LIKES || dislike.len() > MAX_LIKES {
            return Err(SearchError::Invalid(format!(
                "at most {MAX_LIKES} items to like and {MAX_LIKES} to dislike"
            )));
        }
        let mut exclude: Vec<Uuid> = like.iter().chain(dislike).copied().collect();
        exclude.sort_unstable();
        exclude.dedup();
        debug_assert!(exclude.len() <= MAX_EXCLUDED);
        let plan = SearchPlan::new(params)?.excluding(exclude);
        let serving = self.serving(params.model.as_deref(), false).await?;
        let vectors = async {
            let liked = mean(&self.stored(&serving, like).await?);
            let query = if dislike.is_empty() {
                combine(&[(&liked, 1.0)])?
            } else {
                let disliked = mean(&self.stored(&serving, dislike).await?);
                combine(&[(&liked, 2.0), (&disliked, -1.0)])?
            };
            Ok::<_, SearchError>(query)
        };
        let vector = self
            .with_checked_filters(&plan.filter.attributes, vectors)
            .await?;
        let query = Query {
            kind: "recommend",
            mode: SearchMode::Vector,
            query: IndexQuery::Vector(vector),
            embedded_text: None,
        };
        let response = self.run(&serving, query, &plan, started).await?;
        metrics::search_outcome("recommend", response.hits.len(), false, serving.staged);
        Ok(response)
    }

    /// How alike two images are: the cosine similarity of their embeddings (an indexed item's
    /// stored vector, or an uploaded photo embedded now).
    #[tracing::instrument(skip_all)]
    pub async fn compare(&self, a: Side, b: Side) -> Result<CompareResponse, SearchError> {
        let (a, b) = tokio::try_join!(self.vector_of(a), self.vector_of(b))?;
        if a.len() != b.len() {
            return Err(SearchError::Invalid(
                "the two images' vectors differ in size".into(),
            ));
        }
        let similarity: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let model = self.index.model().or_else(|| self.encoder().model());
        Ok(CompareResponse {
            similarity: similarity.clamp(-1.0, 1.0),
            model: model.map_or_else(|| "unknown".to_owned(), |m| m.name),
        })
    }

    async fn vector_of(&self, side: Side) -> Result<Vec<f32>, SearchError> {
        let live = self.live();
        match side {
            Side::Item(id) => Ok(self.stored(&live, &[id]).await?.remove(0)),
            Side::Photo(bytes) => {
                if bytes.is_empty() {
                    return Err(SearchError::NotAnImage(
                        "an uploaded file is empty: not an image".into(),
                    ));
                }
                let embedded = live.encoder.embed_images(vec![bytes]).await?;
                live.check_model(&embedded.model)?;
                let vector = embedded
                    .value
                    .into_iter()
                    .next()
                    .ok_or_else(|| SearchError::Invalid("no embedding for the image".into()))?;
                combine(&[(&vector, 1.0)])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_after_a_dash_are_left_out_and_hyphenated_words_kept() {
        let n = negated("red t-shirt -Floral -stripes, -", &["print,  Logo".into()]).expect("ok");
        assert_eq!(n.positive, "red t-shirt -");
        assert_eq!(n.without, ["floral", "logo", "print", "stripes"]);
        assert_eq!(
            negated("dress", &[]).expect("ok").without,
            Vec::<String>::new()
        );
        let many: Vec<String> = (0..9).map(|i| format!("w{i}")).collect();
        assert!(negated("dress", &many).is_err());
        assert!(negated(&format!("dress -{}", "x".repeat(41)), &[]).is_err());
        assert!(
            negated("dress", &["!".repeat(401)]).is_err(),
            "over 400 characters"
        );
    }

    #[test]
    fn combinations_are_unit_vectors_and_opposites_are_refused() {
        let v = combine(&[(&[1.0, 0.0], 1.0), (&[0.0, 1.0], 1.0)]).expect("ok");
        assert!(
            (v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (v[0] - v[1]).abs() < 1e-6
        );
        let away = combine(&[(&[1.0, 0.0], 1.0), (&[0.6, 0.8], -0.5)]).expect("ok");
        assert!(away[1] < 0.0, "moved away from the second: {away:?}");
        assert!(combine(&[(&[1.0, 0.0], 1.0), (&[1.0, 0.0], -1.0)]).is_err());
        assert!(combine(&[(&[1.0, 0.0], 1.0), (&[1.0], 1.0)]).is_err());
    }
}
