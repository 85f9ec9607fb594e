//! The class-token rewrite, and the listing of the weights sessions share, on arbitrary bytes, as
//! model-serving does on every vision model file it loads (a folder may come from a hub).
//!
//! Each input must end as `Ok(None)`, `Err(Malformed)` or a rewritten model that the rewrite's
//! own reader takes back. A panic (including an arithmetic overflow: `make fuzz` builds with
//! debug assertions), a timeout or memory over the limit is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_serving::prune::{class_token_only, weights};

fuzz_target!(|data: &[u8]| {
    if let Ok(found) = weights(data, 0) {
        for weight in found {
            assert!(!weight.name.is_empty() && weight.bytes.len() <= data.len());
        }
    }
    if let Ok(Some(pruned)) = class_token_only(data, "image_embeds") {
        assert!(pruned.narrowed > 0, "a rewrite that narrows nothing");
        assert!(
            class_token_only(&pruned.bytes, "image_embeds").is_ok(),
            "the rewrite wrote what it cannot read back"
        );
    }
});
