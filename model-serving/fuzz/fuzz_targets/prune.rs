//! The class-token rewrite, the listing of the weights sessions share, and the rewrite with those
//! weights moved out of it (both placements), on arbitrary bytes, as model-serving does on every
//! vision model file it loads (a folder may come from a hub).
//!
//! Each input must end as `Ok(None)`, `Err(Malformed)` or a rewritten model that the rewrite's
//! own reader takes back; moved weights lie where their offsets say. A panic (including an arithmetic overflow: `make fuzz` builds with
//! debug assertions), a timeout or memory over the limit is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_serving::prune::{Placement, Rewrite, class_token_only, weights, write_external};

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
    for place in [Placement::Packed, Placement::InModel] {
        let Ok(Some(mut rewrite)) = Rewrite::plan(data, "image_embeds") else {
            return;
        };
        let Ok(moved) = rewrite.externalize(0, "weights", place) else {
            continue;
        };
        let mut model = Vec::new();
        rewrite.write_to(&mut model).expect("writes to memory");
        assert!(model.len() <= rewrite.encoded_len(), "longer than announced");
        assert!(
            class_token_only(&model, "image_embeds").is_ok(),
            "the rewrite wrote what it cannot read back"
        );
        let mut beside = Vec::new();
        let beside = match place {
            Placement::InModel => data,
            Placement::Packed => {
                write_external(&moved, &mut beside).expect("writes to memory");
                &beside
            }
        };
        for (offset, weight) in &moved {
            let at = usize::try_from(*offset).expect("offset");
            assert_eq!(&beside[at..at + weight.bytes.len()], weight.bytes, "misplaced");
        }
    }
});
