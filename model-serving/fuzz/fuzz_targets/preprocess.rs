//! Decode + preprocess on arbitrary bytes, as model-serving does for every uploaded image.
//!
//! Each input must end as a tensor of the model's shape or as an `ImageError`. A panic (including
//! an arithmetic overflow: `make fuzz` builds with debug assertions), a timeout (`-timeout`) or
//! memory over the limit (`-rss_limit_mb`) is a crash. The limits are the service's defaults.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_serving::preprocess::{ImageLimits, Preprocessor};

fuzz_target!(|data: &[u8]| {
    // OpenAI CLIP's image size and normalisation; the values do not change what is exercised.
    let preprocessor = Preprocessor {
        image_size: 224,
        mean: [0.481_454_7, 0.457_827_5, 0.408_210_7],
        std: [0.268_629_5, 0.261_302_6, 0.275_777_1],
        limits: ImageLimits::default(),
    };
    let mut out = Vec::new();
    if preprocessor.preprocess(data, &mut out).is_ok() {
        assert_eq!(
            out.len(),
            preprocessor.tensor_len(),
            "tensor of the wrong size"
        );
        assert!(
            out.iter().all(|v| v.is_finite()),
            "non-finite value in the tensor"
        );
    }
});
