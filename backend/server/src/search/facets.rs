//! The facet snapshot: values and counts of every filter field, scanned from the index at most
//! once per [`SNAPSHOT_TTL`] (and after writes), by one caller while the others wait for it
//! (moka's `try_get_with` is single-flight). Filters are checked against the snapshot in memory
//! before the embedding (a refused value costs no model call); a cold snapshot is scanned
//! alongside the embedding, never before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backend_api::{FacetValue, FacetsResponse, Filters};

use super::{SearchEngine, SearchError};
use crate::index::{IndexError, VectorIndex};

/// How long a snapshot answers before the next request rescans.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(30);
/// Values kept per field.
const VALUES_PER_FIELD: usize = 1000;

pub type Facets = BTreeMap<String, Vec<FacetValue>>;

pub struct FacetSnapshot {
    cache: moka::future::Cache<(), Arc<Facets>>,
}

impl FacetSnapshot {
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The snapshot, scanning the index when there is none (one scan for all waiting callers).
    pub async fn get(&self, index: &dyn VectorIndex) -> Result<Arc<Facets>, IndexError> {
        self.cache
            .try_get_with((), async { scan(index).await.map(Arc::new) })
            .await
            .map_err(|e| (*e).clone())
    }

    /// The snapshot if one is in memory: no scan.
    pub async fn cached(&self) -> Option<Arc<Facets>> {
        self.cache.get(&()).await
    }

    /// Writes change counts and may add values: the next reader rescans.
    pub async fn invalidate(&self) {
        self.cache.invalidate(&()).await;
    }
}

async fn scan(index: &dyn VectorIndex) -> Result<Facets, IndexError> {
    let mut facets = BTreeMap::new();
    for field in Filters::FIELDS {
        let values = index.facet(field, VALUES_PER_FIELD).await?;
        facets.insert(
            (*field).to_owned(),
            values
                .into_iter()
                .map(|(value, count)| FacetValue { value, count })
                .collect(),
        );
    }
    tracing::debug!("facet snapshot scanned");
    Ok(facets)
}

/// The first filter whose value no indexed image has (it would match nothing).
pub fn unknown_value<'a>(facets: &Facets, filters: &'a Filters) -> Option<(&'static str, &'a str)> {
    filters.iter().find(|(field, value)| {
        !facets
            .get(*field)
            .is_some_and(|values| values.iter().any(|v| v.value == *value))
    })
}

fn refuse_unknown(facets: &Facets, filters: &Filters) -> Result<(), SearchError> {
    match unknown_value(facets, filters) {
        Some((field, value)) => Err(SearchError::Invalid(format!(
            "unknown {field} {value:?}: no indexed image has it"
        ))),
        None => Ok(()),
    }
}

impl SearchEngine {
    /// Finds a query's vector with `find` while `filters` are checked: against the snapshot in
    /// memory first (a refused value then costs no model call), else by a scan that runs
    /// alongside `find`. No filters: no snapshot needed.
    pub(super) async fn with_checked_filters<T>(
        &self,
        filters: &Filters,
        find: impl Future<Output = Result<T, SearchError>>,
    ) -> Result<T, SearchError> {
        if filters.is_empty() {
            return find.await;
        }
        if let Some(facets) = self.facets.cached().await {
            refuse_unknown(&facets, filters)?;
            return find.await;
        }
        let scan = async {
            let facets = self.facets.get(self.index.as_ref()).await?;
            refuse_unknown(&facets, filters)
        };
        let (found, ()) = tokio::try_join!(find, scan)?;
        Ok(found)
    }

    pub async fn facets(&self) -> Result<FacetsResponse, SearchError> {
        Ok(FacetsResponse {
            facets: self.facets.get(self.index.as_ref()).await?.as_ref().clone(),
        })
    }
}
